"""``ActionChunk.velocities`` is optional (empty: unknown) but, when present, must have the
layout of ``positions`` (horizon x joints, row-major) and be finite; a chunk carrying broken
ones is refused whole, with the reason, in the one validation every chunk passes
(``hw_drivers.safety.validate_chunk``). Before, the driver dropped the field unread and
executed such chunks."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.conversions import chunk_to_msg
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from tests.unit.test_executor_properties import (
    CI,
    LOWER,
    NAMES,
    STEP,
    T0,
    UPPER,
    limits,
    safety,
)

J = len(NAMES)
ODD = st.sampled_from([math.nan, math.inf, -math.inf])
VALUE = st.one_of(st.floats(-5.0, 5.0), ODD)


def started_loop() -> ControlLoop:
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: T0)
    loop = ControlLoop(sim, ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig()))
    loop.start()
    return loop


def message(loop: ControlLoop, horizon: int, order: list[int], velocities: list[float]):
    """A chunk the driver accepts but for its velocities: at the measured pose, slow, with
    its columns in ``order``."""
    pose = loop.last_reading.positions
    positions = np.tile(pose, (horizon, 1)) + 0.001 * np.arange(horizon)[:, None]
    names = tuple(NAMES[j] for j in order)
    msg = chunk_to_msg(Chunk(T0, 0.0, STEP, names, positions[:, order]))
    msg.velocities = velocities
    return msg


@st.composite
def cases(draw):
    horizon = draw(st.integers(1, 12))
    order = draw(st.permutations(range(J)))
    size = draw(st.one_of(st.just(0), st.just(horizon * J), st.integers(0, 2 * horizon * J + 3)))
    values = draw(st.lists(VALUE, min_size=size, max_size=size))
    return horizon, list(order), values


@CI
@given(cases())
def test_a_chunk_is_accepted_exactly_when_its_velocities_are_empty_or_well_formed(case):
    horizon, order, velocities = case
    loop = started_loop()
    result = loop.submit_msg(message(loop, horizon, order, velocities), T0)
    well_formed = not velocities or (
        len(velocities) == horizon * J and all(math.isfinite(v) for v in velocities)
    )
    assert result.accepted == well_formed, result.reason
    if not well_formed:
        assert "velocities" in result.reason
        code = "shape" if len(velocities) != horizon * J else "non_finite"
        assert result.reason.startswith(code + ":"), result.reason
        assert loop.executor.stats.rejected[code] == 1


def test_the_reason_names_the_joint_of_the_first_bad_velocity_in_the_drivers_order():
    loop = started_loop()
    velocities = [0.0] * (2 * J)
    velocities[J + 0] = math.nan  # step 1, the message's first column: NAMES[2] below
    result = loop.submit_msg(message(loop, 2, [2, 0, 1], velocities), T0)
    assert not result.accepted
    assert result.reason.startswith("non_finite: 1 NaN/inf velocities, first at step 1")
    assert f"joint {NAMES[2]}" in result.reason


def test_velocities_travel_with_their_columns_when_a_chunk_is_reordered():
    velocities = np.arange(2 * J, dtype=float).reshape(2, J)
    chunk = Chunk(T0, 0.0, STEP, NAMES[::-1], np.zeros((2, J)), velocities=velocities)
    ordered = chunk.reordered(NAMES)
    assert np.array_equal(ordered.velocities, velocities[:, ::-1])
    assert Chunk(T0, 0.0, STEP, NAMES, np.zeros((2, J))).velocities.size == 0
