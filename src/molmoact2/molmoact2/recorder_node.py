"""Records the graph's topics to one MCAP file (``record:=true``); flushed on shutdown.

Topics are subscribed as soon as they appear in the graph (their type is taken from the
graph, so any message type records), as raw CDR bytes: nothing is deserialized on the way
to disk. The QoS follows the publishers: reliable when every publisher is reliable (chunks,
status), best effort otherwise (cameras, joint states), so no publisher is left unmatched.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from molmoact2.mcap_io import McapRecorder
from molmoact2.topic_tap import TopicTap
from molmoact2_common.ros_params import field_problems

# How often the chunk in progress goes to disk: a recorder killed without the chance to close
# its file (SIGKILL, the OOM killer, a power cut) loses at most this much of slow topics.
FLUSH_PERIOD = 1.0


@dataclass(frozen=True)
class RecorderParams:
    """Parameters of the recorder node (config: the `recorder` section)."""

    output_dir: str = field(
        default="out/recordings",
        metadata={"description": "directory for the MCAP file (~ is the home directory)"},
    )
    file_name: str = field(
        default="",
        metadata={
            "description": "MCAP file name; empty: molmoact2_<time>.mcap; an existing file is "
            "kept (the recording gets _1, _2, ... before .mcap)"
        },
    )
    topics: tuple[str, ...] = field(
        default=(), metadata={"description": "topics to record, relative to the namespace"}
    )
    discovery_period: float = field(
        default=0.5, metadata={"description": "how often to look for recorded topics [s]"}
    )

    def validate(self) -> list[str]:
        problems = field_problems(self)  # NaN passes `x <= 0` checks; topic names
        if not self.topics:
            problems.append("topics is empty: nothing to record")
        if self.discovery_period <= 0:
            problems.append("discovery_period must be positive")
        if self.file_name in (".", "..") or "/" in self.file_name or "\0" in self.file_name:
            # "../x.mcap" or "/tmp/x.mcap" wrote outside output_dir (where recordings are
            # looked for and cleaned up); a directory belongs in output_dir.
            problems.append(
                f"file_name {self.file_name!r} must be a plain file name (the directory is "
                "output_dir)"
            )
        return problems

    def output_path(self) -> Path:
        name = self.file_name or time.strftime("molmoact2_%Y%m%d_%H%M%S.mcap")
        # "~/recordings" in a params file reaches us unexpanded (no shell in between): it
        # means the home directory, not a directory named "~" under the working directory.
        return Path(self.output_dir).expanduser() / name


def exit_report(recorder: McapRecorder, wanted: set[str]) -> str:
    """The recorder's last line: what the file holds, and what it does not."""
    counts = ", ".join(f"{t}: {n}" for t, n in sorted(recorder.counts.items()))
    if recorder.deleted:
        text = f"{recorder.path} was deleted while recording ({counts} messages lost)"
    elif recorder.failed:
        text = (
            f"{recorder.failed}; {recorder.path} holds what came before ({counts}); "
            f"{recorder.dropped} messages were not recorded"
        )
    else:
        text = f"wrote {recorder.path} ({counts})"
    never = sorted(wanted - set(recorder.counts))
    if never:
        text += f"; nothing recorded on {', '.join(never)} (no publisher, or its type not loaded)"
    return text


def main(args: list[str] | None = None) -> int:
    from rclpy.clock import Clock, ClockType
    from rclpy.node import Node

    from molmoact2_common.ros_params import declare_dataclass_params, refuse_param_changes
    from molmoact2_common.ros_runtime import run_node

    class RecorderNode(Node):
        def __init__(self) -> None:
            super().__init__("recorder")
            self.params = declare_dataclass_params(self, RecorderParams)
            refuse_param_changes(self, RecorderParams)
            problems = self.params.validate()
            if problems:
                raise ValueError("; ".join(problems))
            try:
                self.recorder = McapRecorder(self.params.output_path())
            except OSError as err:  # a clear line, as for any other bad parameter
                raise ValueError(f"cannot write the recording: {err}") from err
            self.tap = TopicTap(self, self.params.topics, self._on_topic, self._on_message)
            # Wall-time timers: the graph changes and the disk fills in wall time. On the
            # node's clock, with use_sim_time and no /clock yet (or a paused simulator),
            # no topic was ever subscribed and nothing was recorded.
            steady = Clock(clock_type=ClockType.STEADY_TIME)
            self.create_timer(self.params.discovery_period, self.tap.discover, clock=steady)
            self.create_timer(FLUSH_PERIOD, self.recorder.flush, clock=steady)
            self.get_logger().info(
                f"recording {len(self.params.topics)} topics to {self.recorder.path}"
            )

        def _on_topic(self, topic: str, type_name: str, definition: str) -> None:
            self.recorder.add_topic(topic, type_name, definition)
            self.get_logger().info(f"recording {topic} ({type_name})")

        def _on_message(self, topic: str, data: bytes, receive_ns: int) -> None:
            self.recorder.write(topic, data, receive_ns, receive_ns)

    def flush(node: RecorderNode) -> None:
        node.recorder.close()
        # rclpy's logger may already be shut down here; this is the last word of the node.
        sys.stderr.write(f"[recorder] {exit_report(node.recorder, node.tap.wanted)}\n")

    return run_node(RecorderNode, args, on_exit=flush)


if __name__ == "__main__":
    sys.exit(main())
