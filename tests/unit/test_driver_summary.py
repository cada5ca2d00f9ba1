"""The driver's own diagnostic line names what is wrong now, and only that."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from hw_drivers.health import ERROR, OK, WARN, driver_summary

BASE = dict(
    backend_fault=None,
    command_fault="",
    tick_rate=250.0,
    target_rate=250.0,
    rejected_recently=0,
    rejection_window=5.0,
    last_reject_reason="",
)


def test_slow_ticks_alone_do_not_read_as_rejections():
    # Seen under load: "following; tick rate 210/250 Hz; 0 chunks rejected ..." sent a monitor
    # (and a test waiting for the rejections to clear) after chunks that were never rejected.
    level, message = driver_summary("following", **{**BASE, "tick_rate": 210.0})
    assert level == WARN
    assert "tick rate 210/250 Hz" in message
    assert "reject" not in message


def test_rejections_alone_name_the_reason_not_the_rate():
    level, message = driver_summary(
        "idle", **{**BASE, "rejected_recently": 2, "last_reject_reason": "non-finite action"}
    )
    assert level == WARN
    assert "2 chunks rejected in the last 5 s; last: non-finite action" in message
    assert "tick rate" not in message


def test_faults_outrank_warnings():
    slow_and_rejecting = {**BASE, "tick_rate": 10.0, "rejected_recently": 3}
    assert driver_summary("following", **{**slow_and_rejecting, "backend_fault": "bus off"}) == (
        ERROR,
        "backend fault: bus off",
    )
    assert driver_summary("estop", **slow_and_rejecting) == (ERROR, "e-stop latched")
    assert driver_summary(
        "following", **{**slow_and_rejecting, "backend_fault": "bus off"},
        control_stopped="RuntimeError: boom",
    ) == (ERROR, "control loop stopped: RuntimeError: boom")
    assert driver_summary("fault", **{**slow_and_rejecting, "command_fault": "jump"}) == (
        ERROR,
        "command fault: jump",
    )


def test_unknown_rate_is_not_healthy():
    level, message = driver_summary("idle", **{**BASE, "tick_rate": math.nan})
    assert level == WARN and "tick rate" in message


@given(
    state=st.sampled_from(["idle", "following", "holding", "hold"]),
    rate=st.floats(0, 400, allow_nan=False),
    rejected=st.integers(0, 50),
)
def test_the_message_says_rejected_exactly_when_chunks_were(state, rate, rejected):
    level, message = driver_summary(
        state, **{**BASE, "tick_rate": rate, "rejected_recently": rejected}
    )
    slow = rate < 0.9 * 250.0
    assert ("rejected" in message) == (rejected > 0)
    assert ("tick rate" in message) == slow
    assert level == (WARN if slow or rejected else OK)
    assert message.startswith(state)
