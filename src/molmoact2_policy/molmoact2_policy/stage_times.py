"""Where a chunk's latency went, stage by stage, for ~/status and /diagnostics (no ROS).

One ``StageTimes`` per published chunk, all for the same observation: the node measures the
first two stages on its executor thread when it hands the observation over, the worker adds
the queue wait and the model time, and the publish stage closes it. A user watching
``~/status`` sees at once whether the time goes into image decoding, the model or the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

NAN = math.nan


@dataclass(frozen=True)
class StageTimes:
    """Seconds spent per stage on the last published chunk (NaN: not measured yet)."""

    convert: float = NAN  # image messages -> RGB arrays, summed over the observation's cameras
    assemble: float = NAN  # building and checking the observation from the latest inputs
    queue_wait: float = NAN  # handed to the inference thread -> Policy.act called
    model: float = NAN  # Policy.act
    publish: float = NAN  # the ActionChunk built and published (visualisation comes after)

    @property
    def preprocess(self) -> float:
        """convert + assemble: PolicyStatus.preprocess_time."""
        return self.convert + self.assemble

    def diagnostic_values(self) -> dict[str, str]:
        """``<stage>_time_s`` key-values for a DiagnosticStatus."""
        return {f"{f.name}_time_s": f"{getattr(self, f.name):.4f}" for f in fields(self)}

    def fill_status(self, msg: Any) -> None:
        """Set the stage fields of a molmoact2_msgs/PolicyStatus."""
        msg.preprocess_time = self.preprocess
        msg.model_time = self.model
        msg.convert_time = self.convert
        msg.assemble_time = self.assemble
        msg.queue_wait_time = self.queue_wait
        msg.publish_time = self.publish
