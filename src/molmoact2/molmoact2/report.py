"""Turns a recording into PNG plots and a short text summary: ``molmoact2 report REC.mcap``.

Plots: commanded vs measured joints with chunk arrivals marked, the chunks spliced into the
command stream for the most active joint, the inference-latency histogram, and the depth-token
grids of Think mode. The summary gives message counts and rates per topic, chunk latency
percentiles and the tracking error. Times are message stamps (capture/measurement time).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from molmoact2.mcap_io import ReadInfo, RecordingError, read_messages


def _stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


@dataclass
class JointSeries:
    times: list[float] = field(default_factory=list)
    positions: list[list[float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, msg) -> str:
        """Take a sample of the series' joints; why not ('' when taken) for one that is not
        (no joints, other joints, a position per joint missing)."""
        if not msg.name:
            return "no joint names"
        if not self.names:
            self.names = list(msg.name)
        if list(msg.name) != self.names:
            return f"joints {list(msg.name)}, not the first message's {self.names}"
        if len(msg.position) != len(self.names):
            return f"{len(msg.position)} positions for {len(msg.name)} joints"
        self.times.append(_stamp(msg))
        self.positions.append(list(msg.position))
        return ""

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Times and positions in time order (np.interp needs increasing times; stamps of a
        topic need not arrive in order)."""
        times = np.asarray(self.times, dtype=np.float64)
        positions = np.asarray(self.positions, dtype=np.float64).reshape(len(times), -1)
        order = np.argsort(times, kind="stable")
        return times[order], positions[order]

    def column(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None


@dataclass
class Recording:
    """What the report needs from an MCAP file."""

    counts: dict[str, int]
    first_log: dict[str, float]
    last_log: dict[str, float]
    measured: JointSeries
    commanded: JointSeries
    chunks: list[dict]
    status: list[dict]
    depth: list[dict]
    # Why the file was read only in part (no summary: the recorder was killed); "" if whole.
    incomplete: str = ""
    # Messages left out of the plots and numbers, per topic, with the first reason.
    skipped: dict[str, list] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        if not self.first_log:
            return 0.0
        return max(self.last_log.values()) - min(self.first_log.values())


def load_recording(path: str | Path) -> Recording:
    counts: dict[str, int] = defaultdict(int)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    measured, commanded = JointSeries(), JointSeries()
    chunks, status, depth = [], [], []
    skipped: dict[str, list] = {}
    info = ReadInfo()
    for topic, log_ns, msg in read_messages(path, info=info):
        counts[topic] += 1
        first.setdefault(topic, log_ns * 1e-9)
        last[topic] = log_ns * 1e-9
        problem = ""
        # Topics are told apart by name and type: a user's own topic that ends the same way
        # (a gripper's "/status" of another type) is counted, not read as ours.
        kind = type(msg).__name__
        if kind == "JointState" and topic.endswith("/commanded_joint_states"):
            problem = commanded.add(msg)
        elif kind == "JointState" and topic.endswith("joint_states"):
            problem = measured.add(msg)
        elif kind == "ActionChunk" and topic.endswith("/action_chunk"):
            chunk = _chunk(msg, log_ns)
            if isinstance(chunk, str):
                problem = chunk
            else:
                chunks.append(chunk)
        elif kind == "PolicyStatus" and topic.endswith("/status"):
            status.append({"state": msg.state, "error": msg.last_error,
                           "latency": float(msg.last_latency)})
        elif kind == "DepthTokens" and topic.endswith("/depth_tokens"):
            grid = _depth(msg)
            if isinstance(grid, str):
                problem = grid
            else:
                depth.append(grid)
        if problem:
            entry = skipped.setdefault(topic, [0, problem])
            entry[0] += 1
    return Recording(
        dict(counts), first, last, measured, commanded, chunks, status, depth, info.problem,
        skipped,
    )


def _chunk(msg, log_ns: int) -> dict | str:
    """A chunk's numbers, or why it cannot be read (a publisher's malformed message)."""
    horizon, names = int(msg.horizon), list(msg.joint_names)
    if horizon * len(names) != len(msg.positions):
        return f"{len(msg.positions)} positions for horizon {horizon} x {len(names)} joints"
    return {
        "stamp": _stamp(msg),
        "start": _stamp(msg) + msg.start_offset.sec + msg.start_offset.nanosec * 1e-9,
        "step_dt": float(msg.step_dt),
        "names": names,
        "positions": np.asarray(msg.positions, dtype=np.float64).reshape(horizon, len(names)),
        "latency": float(msg.inference_latency),
        "arrival": log_ns * 1e-9,
        "mode": msg.mode,
    }


def _depth(msg) -> dict | str:
    cells = int(msg.rows) * int(msg.cols)
    if len(msg.codes) != cells or len(msg.changed) not in (0, cells) or cells == 0:
        return (f"{len(msg.codes)} codes and {len(msg.changed)} changed flags for a "
                f"{msg.rows} x {msg.cols} grid")
    changed = np.asarray(msg.changed, dtype=bool) if len(msg.changed) else np.zeros(cells, bool)
    return {
        "codes": np.asarray(msg.codes).reshape(msg.rows, msg.cols),
        "changed": changed.reshape(msg.rows, msg.cols),
        "fraction": float(msg.changed_fraction),
        "num_codes": int(msg.num_codes),
    }


def summarize(rec: Recording) -> dict:
    """Counts, rates, latencies and tracking error, as plain numbers (JSON-ready)."""
    duration = rec.duration
    topics = {
        topic: {"count": n, "rate_hz": n / duration if duration > 0 else 0.0}
        for topic, n in sorted(rec.counts.items())
    }
    latencies = _finite([c["latency"] for c in rec.chunks])
    summary: dict = {
        "duration_s": duration,
        "topics": topics,
        "chunks": len(rec.chunks),
        "chunk_rate_hz": len(rec.chunks) / duration if duration > 0 else 0.0,
        "commands": len(rec.commanded.times),
        "measurements": len(rec.measured.times),
        "depth_updates": len(rec.depth),
    }
    if latencies.size:
        summary["latency_s"] = {
            "mean": float(latencies.mean()),
            "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)),
            "max": float(latencies.max()),
        }
    if rec.commanded.times and rec.measured.times:
        t_cmd, q_cmd = rec.commanded.arrays()
        t_meas, q_meas = rec.measured.arrays()
        if q_cmd.shape[1] == q_meas.shape[1]:
            interp = np.stack(
                [np.interp(t_meas, t_cmd, q_cmd[:, j]) for j in range(q_cmd.shape[1])], axis=1
            )
            inside = (t_meas >= t_cmd[0]) & (t_meas <= t_cmd[-1])
            err = interp[inside] - q_meas[inside]
            err = err[np.isfinite(err)]  # a NaN sample (a bad read) is no tracking error
            if err.size:
                summary["tracking_rms_rad"] = float(np.sqrt(np.mean(err**2)))
        span = _span(q_cmd)
        summary["commanded_range_rad"] = {
            name: float(v) for name, v in zip(rec.commanded.names, span, strict=False)
        }
    fractions = _finite([d["fraction"] for d in rec.depth])
    if fractions.size:
        summary["depth_changed_fraction_mean"] = float(fractions.mean())
    errors = sorted({s["error"] for s in rec.status if s["error"]})
    summary["status_errors"] = errors[:10]
    if rec.incomplete:
        summary["incomplete"] = rec.incomplete
    if rec.skipped:
        summary["skipped"] = {t: {"count": n, "reason": why} for t, (n, why) in rec.skipped.items()}
    return _json_ready(summary)


def _span(positions: np.ndarray) -> np.ndarray:
    """Max - min of each column over its finite samples (NaN for a column with none)."""
    finite = np.isfinite(positions)
    high = np.where(finite, positions, -np.inf).max(axis=0, initial=-np.inf)
    low = np.where(finite, positions, np.inf).min(axis=0, initial=np.inf)
    return np.where(finite.any(axis=0), high - low, np.nan)


def _finite(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def _json_ready(value):
    """NaN and inf become None: json.dumps would write NaN, which is not JSON."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def plot_report(rec: Recording, out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    t0 = min(rec.first_log.values()) if rec.first_log else 0.0
    if rec.measured.times:
        t0 = min(t0, rec.measured.times[0]) if rec.first_log else rec.measured.times[0]

    if rec.commanded.times or rec.measured.times:
        names = rec.commanded.names or rec.measured.names
        cols = 2 if len(names) > 7 else 1
        rows = int(np.ceil(len(names) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 1.6 * rows + 1), sharex=True,
                                 squeeze=False)
        # Each series sorted once, not once per joint plotted.
        plotted = [(series, series.arrays(), style, label)
                   for series, style, label in ((rec.measured, "-", "measured"),
                                                (rec.commanded, "--", "commanded"))
                   if series.times]
        for j, name in enumerate(names):
            ax = axes[j % rows][j // rows]
            # By name: the measured and commanded messages may name other joint sets.
            for series, (t, q), style, label in plotted:
                k = series.column(name)
                if k is not None:
                    ax.plot(t - t0, q[:, k], lw=1.0, ls=style, label=label)
            for chunk in rec.chunks:
                ax.axvline(chunk["arrival"] - t0, color="0.85", lw=0.5, zorder=0)
            ax.set_ylabel(name, fontsize=7)
            ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=7, loc="upper right")
        for ax in axes[-1]:
            ax.set_xlabel("time [s] (grey: chunk arrivals)")
        fig.suptitle("Commanded vs measured joint positions [rad; grippers 0..1]")
        fig.tight_layout()
        written.append(_save(fig, out / "joints.png"))

    if rec.chunks and rec.commanded.times:
        t, q = rec.commanded.arrays()
        j = int(np.argmax(np.nan_to_num(_span(q), nan=-1.0)))
        name = rec.commanded.names[j]
        fig, ax = plt.subplots(figsize=(9, 3.5))
        for chunk in rec.chunks:
            if name not in chunk["names"]:
                continue
            k = chunk["names"].index(name)
            times = chunk["start"] + chunk["step_dt"] * np.arange(len(chunk["positions"]))
            ax.plot(times - t0, chunk["positions"][:, k], color="tab:orange", lw=0.6, alpha=0.5)
        ax.plot(t - t0, q[:, j], color="k", lw=1.2, label="executed command")
        k = rec.measured.column(name)
        if rec.measured.times and k is not None:
            tm, qm = rec.measured.arrays()
            ax.plot(tm - t0, qm[:, k], color="tab:blue", lw=0.8, label="measured")
        ax.plot([], [], color="tab:orange", label="predicted chunks")
        ax.set_xlabel("time [s]")
        ax.set_ylabel(f"{name} [{_unit(name)}]")
        ax.set_title("Chunk splices: predicted chunks and the executed command")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / "splices.png"))

    latencies = _finite([c["latency"] for c in rec.chunks])
    if latencies.size:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(1e3 * latencies, bins=30, color="tab:green")
        ax.set_xlabel("chunk latency: capture -> publish [ms]")
        ax.set_ylabel("chunks")
        ax.set_title(f"Inference latency ({len(rec.chunks)} chunks)")
        fig.tight_layout()
        written.append(_save(fig, out / "latency.png"))

    if rec.depth:
        shown = rec.depth[-min(6, len(rec.depth)):]
        fig, axes = plt.subplots(1, len(shown), figsize=(2.4 * len(shown), 2.8), squeeze=False)
        for ax, d in zip(axes[0], shown, strict=True):
            ax.imshow(d["codes"], cmap="viridis", vmin=0, vmax=max(1, d["num_codes"] - 1))
            rr, cc = np.nonzero(d["changed"])
            ax.scatter(cc, rr, s=12, facecolors="none", edgecolors="red", linewidths=0.8)
            ax.set_title(f"{100 * d['fraction']:.0f}% changed", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("Depth tokens (red: re-predicted cells)")
        fig.tight_layout()
        written.append(_save(fig, out / "depth_tokens.png"))
    return written


def _unit(joint: str) -> str:
    return "opening 0..1" if "gripper" in joint else "rad"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_summary(summary: dict) -> str:
    lines = [f"INCOMPLETE RECORDING: {summary['incomplete']}"] if "incomplete" in summary else []
    lines.append(f"duration: {summary['duration_s']:.1f} s")
    lines.append(
        f"chunks: {summary['chunks']} ({summary['chunk_rate_hz']:.2f} Hz), "
        f"commands: {summary['commands']}, measurements: {summary['measurements']}, "
        f"depth updates: {summary['depth_updates']}"
    )
    if "latency_s" in summary:
        lat = summary["latency_s"]
        lines.append(
            f"chunk latency: mean {1e3 * lat['mean']:.0f} ms, p50 {1e3 * lat['p50']:.0f} ms, "
            f"p95 {1e3 * lat['p95']:.0f} ms, max {1e3 * lat['max']:.0f} ms"
        )
    if "tracking_rms_rad" in summary:
        lines.append(f"tracking error (commanded - measured): {summary['tracking_rms_rad']:.4f}"
                     " rad RMS")
    for topic, info in summary["topics"].items():
        lines.append(f"  {topic}: {info['count']} messages, {info['rate_hz']:.1f} Hz")
    if summary["status_errors"]:
        lines.append("status errors seen: " + "; ".join(summary["status_errors"]))
    for topic, info in summary.get("skipped", {}).items():
        lines.append(f"skipped {info['count']} malformed messages on {topic}: {info['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="molmoact2 report", description=__doc__)
    parser.add_argument("recording", help="MCAP file written by record:=true")
    parser.add_argument("--out", default="", help="output directory (default: <recording>_report)")
    args = parser.parse_args(argv)
    path = Path(args.recording)
    out = Path(args.out) if args.out else path.with_name(path.stem + "_report")
    try:
        rec = load_recording(path)
        summary = summarize(rec)
        plots = plot_report(rec, out)
        text = format_summary(summary)
        (out / "summary.txt").write_text(text + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except (RecordingError, OSError) as exc:  # a bad file or output path: one line, no trace
        print(f"molmoact2 report: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"plots: {', '.join(str(p) for p in plots)}")
    print(f"summary: {out / 'summary.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
