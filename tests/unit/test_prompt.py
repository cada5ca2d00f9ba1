"""State discretisation and the robot prompt, against golden strings written out literally."""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2_policy.model.preprocess import (
    ImageTokenLayout,
    PromptOptions,
    build_prompt,
    discretize_state,
)
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer
from molmoact2_policy.model.vlm import tokenize_prompt


def test_discretize_state_bins():
    bins = discretize_state(np.array([-1.0, 1.0, 0.0, -2.0, 3.0, 0.5, -0.5, 0.002]))
    # round((x + 1) / 2 * 255): 0 -> 127.5 -> 128 (half to even), 0.5 -> 191.25 -> 191,
    # -0.5 -> 63.75 -> 64, 0.002 -> 127.755 -> 128; out-of-range values clip to 0 / 255.
    assert bins.tolist() == [0, 255, 128, 0, 255, 191, 64, 128]
    assert bins.dtype == np.int64


def test_discretize_state_rejects_nan():
    with pytest.raises(ValueError, match="non-finite"):
        discretize_state(np.array([0.0, np.nan]))


def test_prompt_golden_two_cameras():
    prompt = build_prompt(
        num_images=2,
        instruction="  put the bowl on the plate. ",
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
        "Image 1<|image|><|im_start|>user\n"
        "The task is to open the drawer. "
        "The setup is simulated Franka arm. "
        "The current state of the robot is <state_start><state_7><state_end>. "
        "The expected control mode is delta end effector. "
        "Given these, what action should the robot take to complete the task?<|im_end|>\n"
        "<|im_start|>assistant\n<action_output>"
    )
    assert prompt == expected


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
    assert ids.count(tokenizer.token_id("<low_res_im_start>")) == 3
    state_start = tokenizer.family_start("state", 256)
    assert [i - state_start for i in ids if state_start <= i < state_start + 256] == [5, 250]
    assert ids[-1] == tokenizer.token_id("<action_output>")
    # Splicing the image tokens in equals tokenising the fully expanded text.
    expanded = prompt.replace("<|image|>", "".join(ImageTokenLayout().tokens(14, 14)))
    assert ids[1:] == tokenizer.encode(expanded)
    assert tokenizer.decode(ids[1:]) == expanded
