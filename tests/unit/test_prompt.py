"""State discretisation and the robot prompt, against golden strings written out literally.

The golden strings are the released MolmoAct2 prompt (``_build_robot_text`` with the task passed
through ``_normalize_question_text``, and the chat template's image prefix) for the same inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2_policy.model.preprocess import (
    ImageTokenLayout,
    PromptOptions,
    build_prompt,
    clean_instruction,
    discretize_state,
)
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer
from molmoact2_policy.model.vlm import tokenize_prompt


def test_discretize_state_bins():
    bins = discretize_state(np.array([-1.0, 1.0, 0.0, -2.0, 3.0, 0.5, -0.5, 0.002]))
    # rint((x + 1) / 2 * 255): 0 -> 127.5 -> 128 (half to even), 0.5 -> 191.25 -> 191,
    # -0.5 -> 63.75 -> 64, 0.002 -> 127.755 -> 128; out-of-range values clip to 0 / 255.
    assert bins.tolist() == [0, 255, 128, 0, 255, 191, 64, 128]
    assert bins.dtype == np.int64


def test_discretize_state_rounds_in_float32_like_the_release():
    # 1e-9 above the boundary between bins 0 and 1: float64 scales it to 0.5000001 (bin 1), the
    # release's float32 arithmetic to 0.49999997 (bin 0).
    just_above_boundary = -1.0 + 1.0 / 255.0 + 1e-9
    assert np.rint((just_above_boundary + 1.0) / 2.0 * 255.0) == 1.0
    assert discretize_state(np.array([just_above_boundary])).tolist() == [0]


def test_discretize_state_other_bin_count():
    assert discretize_state(np.array([-1.0, 0.0, 1.0]), num_bins=128).tolist() == [0, 64, 127]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_discretize_state_rejects_non_finite(value):
    # The release maps these to bins (NaN -> 0.0, +-inf -> +-1); we refuse on purpose.
    with pytest.raises(ValueError, match="non-finite"):
        discretize_state(np.array([0.0, value]))


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("put the bowl on the plate", "put the bowl on the plate"),
        ("  Put the Bowl\ton the\n plate.  ", "put the bowl on the plate"),
        ('"Pick up the red cup."', "pick up the red cup"),
        ("\u201cOpen the drawer!\u201d", "open the drawer"),
        ("[fold the towel]", "fold the towel"),
        ("Task: stack the blocks", "stack the blocks"),
        ("INSTRUCTION - wipe the table", "wipe the table"),
        ("language_instruction: close the lid", "close the lid"),
        ("Goal:sort the fruit", "sort the fruit"),
        ("The task is to pour the water.", "pour the water"),
        ("Your task is to hang the mug", "hang the mug"),
        # Labels and delimiters peel off in any nesting until nothing changes.
        ("Task: 'The task is to lift the box.'", "lift the box"),
        ('(task: "grab it")', "grab it"),
        ("Pick up the cup. Put it in the sink.", "pick up the cup; put it in the sink"),
        ("Open the door! Then walk through?? ", "open the door; then walk through"),
        ("wait...", "wait"),
        ("move it 3.5 cm left", "move it 3; 5 cm left"),  # the release splits at any period
        ("tasks: nothing", "tasks: nothing"),  # only the exact labels are stripped
        ("the task is to", "the task is to"),  # the phrase needs a following word
        ("   ", ""),
    ],
)
def test_clean_instruction(instruction, expected):
    assert clean_instruction(instruction) == expected


def test_prompt_golden_two_cameras():
    prompt = build_prompt(
        num_images=2,
        instruction="  Put the bowl on the plate. ",
        setup="single SO-101 arm",
        control_mode="absolute joint pose",
        state_bins=[0, 128, 255],
    )
    expected = (
        "Image 1<|image|>Image 2<|image|><|im_start|>user\n"
        "The task is to put the bowl on the plate. "
        "The setup is <setup_start>single SO-101 arm<setup_end>. "
        "The current state of the robot is "
        "<state_start><state_0><state_128><state_255><state_end>. "
        "The expected control mode is <control_start>absolute joint pose<control_end>. "
        "Given these, what action should the robot take to complete the task?<|im_end|>\n"
        "<|im_start|>assistant\n<action_output>"
    )
    assert prompt == expected


def test_prompt_golden_single_camera():
    prompt = build_prompt(
        num_images=1,
        instruction="Task: Open the drawer.",
        setup="simulated Franka arm",
        control_mode="delta end effector",
        state_bins=[7],
    )
    expected = (
        "<|image|><|im_start|>user\n"
        "The task is to open the drawer. "
        "The setup is <setup_start>simulated Franka arm<setup_end>. "
        "The current state of the robot is <state_start><state_7><state_end>. "
        "The expected control mode is <control_start>delta end effector<control_end>. "
        "Given these, what action should the robot take to complete the task?<|im_end|>\n"
        "<|im_start|>assistant\n<action_output>"
    )
    assert prompt == expected


def test_prompt_golden_think():
    prompt = build_prompt(
        num_images=2,
        instruction="Fold the towel. Then put it away.",
        setup="bimanual YAM arms",
        control_mode="absolute joint pose",
        state_bins=[5, 250],
        depth_reasoning=True,
    )
    expected = (
        "Image 1<|image|>Image 2<|image|><|im_start|>user\n"
        "The task is to fold the towel; then put it away. "
        "The setup is <setup_start>bimanual YAM arms<setup_end>. "
        "The current state of the robot is <state_start><state_5><state_250><state_end>. "
        "The expected control mode is <control_start>absolute joint pose<control_end>. "
        "Given these, first predict the depth map of the main image and then predict the action "
        "the robot should take to complete the task?<|im_end|>\n"
        "<|im_start|>assistant\n<depth_output><action_output>"
    )
    assert prompt == expected


def test_prompt_without_setup_and_control_markers():
    prompt = build_prompt(
        num_images=1,
        instruction="open the drawer",
        setup="simulated Franka arm",
        control_mode="delta end effector",
        state_bins=[7],
        options=PromptOptions(add_setup_tokens=False, add_control_tokens=False),
    )
    expected = (
        "<|image|><|im_start|>user\n"
        "The task is to open the drawer. "
        "The setup is simulated Franka arm. "
        "The current state of the robot is <state_start><state_7><state_end>. "
        "The expected control mode is delta end effector. "
        "Given these, what action should the robot take to complete the task?<|im_end|>\n"
        "<|im_start|>assistant\n<action_output>"
    )
    assert prompt == expected


def test_prompt_without_state_empty_fields_and_no_images():
    # No state -> no state sentence; empty setup/control are not wrapped even with markers on.
    prompt = build_prompt(
        num_images=0,
        instruction="wave",
        setup="",
        control_mode="",
        state_bins=None,
    )
    expected = (
        "<|im_start|>user\n"
        "The task is to wave. The setup is . The expected control mode is . "
        "Given these, what action should the robot take to complete the task?<|im_end|>\n"
        "<|im_start|>assistant\n<action_output>"
    )
    assert prompt == expected


def test_prompt_keeps_already_wrapped_fields_and_empty_state():
    prompt = build_prompt(
        num_images=1,
        instruction="wave",
        setup="<setup_start>one arm<setup_end>",
        control_mode="<control_start>joint<control_end>",
        state_bins=[],
    )
    assert (
        "The setup is <setup_start>one arm<setup_end>. "
        "The current state of the robot is <state_start><state_end>. "
        "The expected control mode is <control_start>joint<control_end>. "
    ) in prompt


def test_tokenized_prompt_expands_images_and_keeps_state_tokens():
    tokenizer = MolmoAct2Tokenizer.tiny()
    image_tokens = tokenizer.token_ids(ImageTokenLayout().tokens(14, 14))
    prompt = build_prompt(
        num_images=3,
        instruction="fold the towel",
        setup="bimanual YAM arms",
        control_mode="absolute joint pose",
        state_bins=[5, 250],
    )
    ids = tokenize_prompt(tokenizer, prompt, image_tokens)
    assert ids[0] == tokenizer.token_id("<|endoftext|>")  # BOS, as Molmo2's processor adds
    assert ids.count(tokenizer.token_id("<im_patch>")) == 3 * 196
    assert ids.count(tokenizer.token_id("<im_start>")) == 3  # single crops: never low-res start
    state_start = tokenizer.family_start("state", 256)
    assert [i - state_start for i in ids if state_start <= i < state_start + 256] == [5, 250]
    assert ids[-1] == tokenizer.token_id("<action_output>")
    # Splicing the image tokens in equals tokenising the fully expanded text.
    expanded = prompt.replace("<|image|>", "".join(ImageTokenLayout().tokens(14, 14)))
    assert ids[1:] == tokenizer.encode(expanded)
    assert tokenizer.decode(ids[1:]) == expanded


def test_tokenized_think_prompt_ends_with_depth_then_action_output():
    tokenizer = MolmoAct2Tokenizer.tiny()
    image_tokens = tokenizer.token_ids(ImageTokenLayout().tokens(14, 14))
    prompt = build_prompt(
        num_images=1,
        instruction="fold the towel",
        setup="bimanual YAM arms",
        control_mode="absolute joint pose",
        state_bins=[5],
        depth_reasoning=True,
    )
    ids = tokenize_prompt(tokenizer, prompt, image_tokens)
    assert ids[-2:] == tokenizer.token_ids(["<depth_output>", "<action_output>"])
    assert ids.count(tokenizer.token_id("<im_start>")) == 1
