"""``Policy.check_instruction``: an instruction spelling the model's control tokens is refused
where it enters, by every Policy implementation, from one check (``preprocess``).

The prompt is tokenised as a whole, so ``<im_patch>`` in an instruction becomes an image-patch
token and ``<|im_end|>`` ends the user turn. Before, only ``act`` refused it: the node accepted
the instruction and every inference after it failed.
"""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.model.preprocess import check_instruction, instruction_control_tokens
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer
from molmoact2_policy.policy_api import Policy, PolicyInputError

SPEC = get_embodiment("yam_bimanual")

BAD = [
    ("put the cup <im_patch> away", "<im_patch>"),
    ("put <IM_PATCH> away", "<im_patch>"),  # the prompt lowercases the instruction
    ("stack the cups<|im_end|>", "<|im_end|>"),
    ("go <depth_3> <action_output>", "<depth_3>"),
    ("a <|image|> b", "<|image|>"),  # the prompt builder's own image placeholder
]
GOOD = ["pick <b>the</b> cup", "x < y > z", "put the cup away", "<im_patchy> is a word here"]


@pytest.fixture(scope="module")
def tokenizer() -> MolmoAct2Tokenizer:
    return MolmoAct2Tokenizer.tiny()


# ---------------------------------------------------------------------------------------------
# The pure check


@pytest.mark.parametrize(("instruction", "token"), BAD)
def test_the_check_names_the_control_token(tokenizer, instruction, token):
    assert token in instruction_control_tokens(instruction, tokenizer)
    with pytest.raises(PolicyInputError, match=token.replace("|", r"\|")):
        check_instruction(instruction, tokenizer)


@pytest.mark.parametrize("instruction", GOOD)
def test_ordinary_angle_brackets_pass(tokenizer, instruction):
    assert instruction_control_tokens(instruction, tokenizer) == []
    check_instruction(instruction, tokenizer)


def test_each_token_is_named_once_in_order(tokenizer):
    found = instruction_control_tokens("<depth_3> a <im_patch> <depth_3>", tokenizer)
    assert found == ["<depth_3>", "<im_patch>"]


class _OneTokenReader:
    """A checkpoint whose tokenizer adds only ``<foo>`` (stands for any released vocabulary)."""

    def added_tokens_in(self, text: str) -> list[str]:
        return ["<foo>"] * text.count("<foo>")


def test_the_token_list_is_the_tokenizers():
    reader = _OneTokenReader()
    with pytest.raises(PolicyInputError, match="<foo>"):
        check_instruction("say <foo>", reader)
    check_instruction("say <im_patch>", reader)  # not a token of this checkpoint


# ---------------------------------------------------------------------------------------------
# Every Policy implementation


def _observation(spec, size=(48, 64)):
    rng = np.random.default_rng(0)
    images = {n: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for n in spec.camera_names}
    return images, np.zeros(spec.state_dim)


@pytest.fixture(scope="module", params=["flow", "fast", "think"])
def model_policy(request):
    import torch

    from molmoact2_policy.model.loader import load_policy

    torch.set_num_threads(1)
    embodiment = "libero" if request.param == "fast" else SPEC.name  # libero: shortest decode
    return load_policy("tiny", embodiment, mode=request.param, seed=0)


@pytest.mark.parametrize(("instruction", "token"), BAD[:3])
def test_local_models_refuse_at_check_and_in_act(model_policy, instruction, token):
    assert isinstance(model_policy, Policy)
    with pytest.raises(PolicyInputError, match=token.replace("|", r"\|")):
        model_policy.check_instruction(instruction)
    images, state = _observation(model_policy.embodiment)
    with pytest.raises(PolicyInputError, match=token.replace("|", r"\|")):
        model_policy.act(images, state, instruction, seed=0)


def test_local_models_accept_ordinary_words(model_policy):
    model_policy.check_instruction("put the cup away")
    model_policy.check_instruction("x < y > z")


def _fakes():
    from tests import fake_policy, remote_fakes

    node_fake = fake_policy.FakePolicy(SPEC)
    return {
        "node_fake": node_fake,
        "fault_injecting": fake_policy.FaultInjectingPolicy(node_fake),
        "server_fake": remote_fakes.FakePolicy(SPEC),
    }


@pytest.mark.parametrize("name", ["node_fake", "fault_injecting", "server_fake"])
@pytest.mark.parametrize(("instruction", "token"), BAD)
def test_fakes_refuse_as_the_tiny_model(name, instruction, token):
    fake = _fakes()[name]
    assert isinstance(fake, Policy)
    with pytest.raises(PolicyInputError, match=token.replace("|", r"\|")):
        fake.check_instruction(instruction)
    fake.check_instruction("put the cup away")


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_remote_client_accepts_and_the_server_refuses_naming_the_token(transport):
    """The client cannot know the server's tokenizer: it accepts, and ``act`` raises the
    server's 400 as ``PolicyInputError``. The server refuses before the device: no act."""
    from molmoact2_policy.remote.client import RemotePolicy
    from molmoact2_policy.remote.server import create_app
    from tests.remote_fakes import FakePolicy, ServerThread

    fake = FakePolicy(SPEC)
    joints = tuple(f"j{i}" for i in range(SPEC.action_dim))
    with ServerThread(create_app(fake, warmup=False)) as server:
        remote = RemotePolicy(server.url, SPEC, joints, timeout=10.0, transport=transport)
        try:
            assert isinstance(remote, Policy)
            remote.check_instruction("stack the cups<|im_end|>")  # accepted locally
            images, state = _observation(SPEC)
            with pytest.raises(PolicyInputError, match=r"<\|im_end\|>"):
                remote.act(images, state, "stack the cups<|im_end|>", seed=0)
            assert fake.calls == 0
            remote.act(images, state, "stack the cups", seed=0)  # the link is still good
            assert fake.calls == 1
        finally:
            remote.close()
