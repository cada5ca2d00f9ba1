"""A remote server's depth codes, changed flags and timings of the wrong type are refused as a
protocol error, not converted into plausible values for ~/depth_tokens.

Before, ``np.asarray(v).astype(int64 / bool)`` published codes 1.7 as 1, NaN and 1e30 as
-2**63, flags 0.5 / -1 / "no" as true, and a string code or timing raised ValueError or
TypeError from inside the parser instead of the ProtocolError the client reports.
"""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import ActionChunkResult
from molmoact2_policy.remote import protocol as p

SPEC = get_embodiment("yam_bimanual")


def response(**changes):
    result = ActionChunkResult(
        positions=np.zeros((SPEC.horizon, SPEC.action_dim)),
        step_dt=SPEC.step_dt,
        joint_names=tuple(f"j{i}" for i in range(SPEC.action_dim)),
        mode="think",
        timings={"total": 0.02},
        depth_codes=np.arange(100),
        depth_changed=np.arange(100) % 2 == 0,
    )
    payload = p.build_act_response(result, SPEC.name, {"total": 0.03})
    payload.update(changes)
    return payload


def wires(payload):
    yield p.decode_json(p.encode_json(payload))
    yield p.decode_msgpack(p.encode_msgpack(payload))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"depth_codes": [1.7] * 100}, "'depth_codes' must be an array of 64-bit integers"),
        ({"depth_codes": [float("nan")] * 100}, "'depth_codes' must be an array of 64-bit"),
        ({"depth_codes": [1e30] * 100}, "'depth_codes' must be an array of 64-bit"),
        ({"depth_codes": ["a"] * 100}, "'depth_codes' must be an array of 64-bit"),
        ({"depth_codes": [[1, 2], [3]]}, "'depth_codes' is not an array"),
        ({"depth_changed": [0.5] * 100}, "'depth_changed' must be an array of booleans"),
        ({"depth_changed": [-1] * 100}, "'depth_changed' must be an array of booleans"),
        ({"depth_changed": ["no"] * 100}, "'depth_changed' must be an array of booleans"),
        ({"timings": {"total": "abc"}}, "'timings' entry 'total' must be a number"),
        ({"server_timing": {"total": None}}, "'server_timing' entry 'total' must be a number"),
    ],
)
def test_wrong_types_are_a_protocol_error(changes, words):
    for wire in wires(response(**changes)):
        with pytest.raises(p.ProtocolError, match=words.replace("(", r"\(")):
            p.parse_act_response(wire, SPEC, SPEC.action_dim)


def test_what_our_server_sends_still_parses():
    payload = response(depth_changed=[1, 0] * 50, timings={"total": np.float32(0.5), "vlm": 1})
    for wire in wires(payload):
        parsed = p.parse_act_response(wire, SPEC, SPEC.action_dim)
        assert parsed.depth_codes.dtype == np.int64 and parsed.depth_codes.tolist() == list(
            range(100)
        )
        assert (
            parsed.depth_changed.dtype == np.bool_
            and parsed.depth_changed.tolist()
            == [
                True,
                False,
            ]
            * 50
        )
        assert parsed.model_timings == {"total": 0.5, "vlm": 1.0}
