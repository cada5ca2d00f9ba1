"""An instruction's text is refused where no operator typed words: bytes that were not UTF-8
(U+FFFD after rclpy decoded them) and control characters other than whitespace."""

from __future__ import annotations

import pytest

from molmoact2_policy.policy_node_params import (
    MAX_INSTRUCTION_CHARS,
    PolicyNodeParams,
    instruction_text_problem,
    live_param_problem,
)
from molmoact2_policy.task_control import TaskGoal


@pytest.mark.parametrize(
    ("instruction", "problem"),
    [
        ("pick up the caf\ufffd cup", "U+FFFD (a byte that was not UTF-8) at character 15"),
        ("\x01\x02", "control character U+0001 at character 0"),
        ("wipe\x1b[2J the table", "control character U+001B at character 4"),
        ("stop\x7f", "control character U+007F at character 4"),
        ("x" * (MAX_INSTRUCTION_CHARS + 1), f"at most {MAX_INSTRUCTION_CHARS}"),
    ],
)
def test_text_that_is_not_words_is_refused_where_an_instruction_enters(instruction, problem):
    assert problem in instruction_text_problem(instruction)
    assert problem in live_param_problem("instruction", instruction)
    assert problem in " ".join(PolicyNodeParams(instruction=instruction).validate())
    assert problem in TaskGoal(instruction).problem()


@pytest.mark.parametrize(
    "instruction",
    [
        "",
        "pick up the café cup",
        "fold\tthe\ntowel\r\n",
        "把杯子放在盘子上",
        "x" * MAX_INSTRUCTION_CHARS,
    ],
)
def test_words_in_any_language_and_whitespace_are_accepted(instruction):
    assert instruction_text_problem(instruction) == ""
    assert live_param_problem("instruction", instruction) == ""
