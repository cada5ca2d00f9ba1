"""Per-stage latency of the last chunk, as ~/status and /diagnostics show it (issue 21)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from molmoact2_policy.stage_times import StageTimes


def test_status_fields_and_diagnostics_carry_every_stage():
    stages = StageTimes(
        convert=0.003, assemble=0.0002, queue_wait=0.0004, model=0.018, publish=0.0007
    )
    msg = SimpleNamespace()
    stages.fill_status(msg)
    assert msg.preprocess_time == pytest.approx(0.0032)
    assert (msg.convert_time, msg.assemble_time, msg.queue_wait_time) == (0.003, 0.0002, 0.0004)
    assert (msg.model_time, msg.publish_time) == (0.018, 0.0007)
    assert stages.diagnostic_values() == {
        "convert_time_s": "0.0030",
        "assemble_time_s": "0.0002",
        "queue_wait_time_s": "0.0004",
        "model_time_s": "0.0180",
        "publish_time_s": "0.0007",
    }


def test_before_the_first_chunk_every_stage_is_nan():
    msg = SimpleNamespace()
    StageTimes().fill_status(msg)
    assert all(math.isnan(v) for v in vars(msg).values())
    assert set(StageTimes().diagnostic_values().values()) == {"nan"}
