"""The README demo: YAM bimanual sim with three cameras, recording on, then the report.

``make demo`` runs this after setup: it uses the demo checkpoint (a tiny model fine-tuned to a
smooth motion, made on first use and cached; real weights do not fit a laptop demo and no hub
is reachable), runs the graph of ``molmoact2 launch yam
--record`` for about 20 s, turns the MCAP file into plots and a summary, and prints where
everything is. It fails when no chunk or no command was recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from molmoact2 import graph
from molmoact2.mcap_io import RecordingError
from molmoact2.report import format_summary, load_recording, plot_report, summarize
from molmoact2.supervisor import Supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="molmoact2 demo", description=__doc__)
    parser.add_argument("--robot", default="yam", help="robot config (default yam)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds to run")
    parser.add_argument("--out", default="out/demo", help="output directory")
    parser.add_argument("--think", action="store_true", help="run MolmoAct2-Think")
    parser.add_argument("--checkpoint", default="",
                        help="use this checkpoint instead of the demo one")
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint
    if not checkpoint:
        # The same cached checkpoint `ros2 launch` and `molmoact2 launch` use by default.
        from molmoact2.demo_checkpoint import ensure_demo_checkpoint

        checkpoint = str(ensure_demo_checkpoint(args.robot, log=lambda t: print(f"[demo] {t}")))

    config = graph.load_robot_config(args.robot)
    options = graph.LaunchOptions(sim=True, checkpoint=checkpoint, record=True, think=args.think)
    # Named by the config's name, also when --robot is a config file path.
    recording = out / f"{Path(args.robot).stem}_demo.mcap"
    nodes = [
        dataclasses.replace(
            n,
            overrides={**n.overrides, "output_dir": str(out), "file_name": recording.name},
        )
        if n.name == graph.RECORDER_NODE
        else n
        for n in graph.build_graph(config, options)
    ]
    problems = graph.validate_graph_params(config, nodes)
    if problems:
        print("[demo] config problems:\n" + "\n".join(problems), file=sys.stderr)
        return 2
    if recording.exists():
        recording.unlink()

    print(f"[demo] running {args.robot} in sim for {args.duration:g} s: "
          + ", ".join(n.name for n in nodes))
    # The clock starts when the policy is active (model loaded), so the demo shows
    # ``duration`` seconds of motion however long torch takes to import.
    supervisor = Supervisor(nodes, ready=(graph.POLICY_NODE, "active"))
    run = supervisor.run(duration=args.duration)
    if not recording.is_file():
        print("[demo] no recording was written", file=sys.stderr)
        return 1
    try:
        rec = load_recording(recording)
    except RecordingError as exc:
        print(f"[demo] {exc}", file=sys.stderr)
        return 1
    summary = summarize(rec)
    plots = plot_report(rec, out / "report")
    text = format_summary(summary)
    (out / "report" / "summary.txt").write_text(text + "\n")
    print("\n[demo] summary\n" + text)
    print(f"\n[demo] recording: {recording}")
    print(f"[demo] plots:     {', '.join(str(p) for p in plots)}")
    print(f"[demo] summary:   {out / 'report' / 'summary.txt'}")
    if run.exit_code != 0:
        print(f"[demo] a node failed: {run.failed_node or run.node_exit_codes}", file=sys.stderr)
        return run.exit_code
    if summary["chunks"] == 0 or summary["commands"] == 0:
        print("[demo] no chunks or no commands were recorded", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
