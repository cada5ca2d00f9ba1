"""A control tick that keeps raising latches the e-stop (``hw_drivers.tick_errors``).

Before, a bug raising on every tick faulted the loop, which reconnected after
``reconnect_period`` and faulted again on the next tick, forever, told only by throttled log
lines. The node's tick is replayed here on a fake clock: ``step``, then ``tick_succeeded`` when
it ran the executor, and ``tick_error`` when it raised (what ``DriverNode`` does).
"""

from __future__ import annotations

import pytest

from hw_drivers.backends.sim import SimBackend
from hw_drivers.control_loop import ControlLoop
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.health import ERROR, driver_summary
from hw_drivers.tick_errors import TickErrorEscalation
from tests.unit.test_executor_properties import LOWER, NAMES, T0, UPPER, limits, safety

TICK = 0.01
RECONNECT = 0.05


def make_loop(
    max_tick_errors: int = 3, fault_window: float = 60.0
) -> tuple[ControlLoop, list[float]]:
    clock = [T0]
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: clock[0])
    executor = ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig())
    loop = ControlLoop(
        sim,
        executor,
        reconnect_period=RECONNECT,
        max_tick_errors=max_tick_errors,
        fault_window=fault_window,
    )
    loop.start()
    return loop, clock


def run_ticks(loop: ControlLoop, clock: list[float], ticks: int, broken) -> list[str]:
    """The node's tick, ``ticks`` times; ``broken(now)`` says whether this tick raises.
    Returns the e-stop reasons ``tick_error`` gave (the node logs each one)."""
    latched = []
    for _ in range(ticks):
        clock[0] += TICK
        now = clock[0]
        try:
            result = loop.step(now)
            if result.command is not None and broken(now):
                raise ZeroDivisionError("a bug after the executor")
            if result.command is not None:
                loop.tick_succeeded()
        except ZeroDivisionError as exc:
            reason = loop.tick_error(now, f"tick error: ZeroDivisionError: {exc}")
            if reason is not None:
                latched.append(reason)
    return latched


def test_a_tick_raising_every_time_latches_the_estop_after_the_limit_once():
    loop, clock = make_loop(max_tick_errors=3)
    # Each error faults; the reconnect comes RECONNECT later and the next tick raises again.
    latched = run_ticks(loop, clock, 200, broken=lambda now: True)
    assert loop.stats.reconnects >= 3  # the fault path still runs (the arm holds)
    assert loop.executor.estopped
    assert len(latched) == 1  # one clear line, not one per error
    assert "3 control tick errors" in latched[0]
    assert "ZeroDivisionError: a bug after the executor" in latched[0]
    assert loop.estop_reason == latched[0]


def test_the_estop_latches_on_exactly_the_limit_th_error():
    loop, clock = make_loop(max_tick_errors=4)
    errors = []

    def broken(now: float) -> bool:
        errors.append(now)
        return True

    while len(errors) < 3:
        run_ticks(loop, clock, 1, broken)
    assert not loop.executor.estopped
    while len(errors) < 4:
        run_ticks(loop, clock, 1, broken)
    assert loop.executor.estopped


def test_a_successful_tick_between_errors_resets_the_count_in_a_row():
    escalation = TickErrorEscalation(3)  # no window: only the errors in a row
    for k in range(20):  # two errors, then one good tick, repeated
        assert escalation.failed(3.0 * k, "boom") is None
        assert escalation.failed(3.0 * k + 1, "boom") is None
        escalation.succeeded()
    assert escalation.count == 0 and not escalation.escalated


def test_the_estop_holds_through_reconnects_until_reset_clears_it_and_the_count():
    loop, clock = make_loop(max_tick_errors=2)
    (reason,) = run_ticks(loop, clock, 100, broken=lambda now: True)
    assert loop.executor.estopped
    # The bug is gone: the loop reconnects, ticks succeed, and the e-stop stays latched.
    run_ticks(loop, clock, 20, broken=lambda now: False)
    assert not loop.faulted and loop.executor.estopped
    assert loop.estop_reason == reason  # still named until the operator resets
    ok, _ = loop.reset()
    assert ok and not loop.executor.estopped
    assert loop.tick_errors.count == 0 and not loop.estop_reason
    # A new run of errors latches again (and is reported again).
    assert len(run_ticks(loop, clock, 100, broken=lambda now: True)) == 1


def test_the_reason_counts_the_errors_and_the_time_they_took():
    escalation = TickErrorEscalation(3)
    assert escalation.failed(10.0, "boom") is None
    escalation.succeeded()
    assert escalation.failed(20.0, "boom") is None
    assert escalation.failed(21.0, "boom") is None
    reason = escalation.failed(22.5, "ZeroDivisionError: x")
    assert reason is not None and "over 2.5 s" in reason and "ZeroDivisionError: x" in reason
    assert escalation.failed(23.0, "boom") is None  # latched already: said once


def test_diagnostics_name_the_tick_errors_not_the_backend_fault_they_cause():
    level, message = driver_summary(
        "estop",
        estop_reason="3 control tick errors ... (last: tick error: KeyError: 'x')",
        backend_fault="tick error: KeyError: 'x'",
        command_fault="",
        tick_rate=250.0,
        target_rate=250.0,
        rejected_recently=0,
        rejection_window=10.0,
        last_reject_reason="",
    )
    assert level == ERROR
    assert message.startswith("e-stop latched: 3 control tick errors")


def test_max_tick_errors_is_a_validated_driver_parameter():
    assert DriverParams().max_tick_errors == 3
    problems = DriverParams(max_tick_errors=0).validate()
    assert any("max_tick_errors" in p for p in problems)
    with pytest.raises(ValueError):
        TickErrorEscalation(0)
