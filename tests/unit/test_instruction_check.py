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
from molmoact2_policy.model.preprocess import (
    ControlTokenList,
    check_instruction,
    instruction_control_tokens,
    refused_instruction_tokens,
)
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


# ---------------------------------------------------------------------------------------------
# The remote client: checked against the tokens our server states in /healthz


@pytest.mark.parametrize("instruction", [b for b, _ in BAD] + GOOD + ["<depth_12><depth_1>"])
def test_a_stated_token_list_finds_what_the_tokenizer_finds(tokenizer, instruction):
    """The client's check runs over the server's stated list: same tokens, same order."""
    stated = ControlTokenList(refused_instruction_tokens(tokenizer))
    expected = instruction_control_tokens(instruction, tokenizer)
    assert instruction_control_tokens(instruction, stated) == expected


def test_local_models_state_what_they_refuse(model_policy):
    stated = ControlTokenList(model_policy.control_tokens())
    for instruction, token in BAD:
        assert token in stated.tokens
        with pytest.raises(PolicyInputError, match=token.replace("|", r"\|")):
            check_instruction(instruction, stated)
    check_instruction("put the cup away", stated)


def _silent_policy(spec):
    """A policy that lists no control tokens: our server states none."""
    from tests.remote_fakes import FakePolicy

    class Silent(FakePolicy):
        control_tokens = None

    return Silent(spec)


def _remote(url: str, transport: str = "http"):
    from molmoact2_policy.remote.client import RemotePolicy

    joints = tuple(f"j{i}" for i in range(SPEC.action_dim))
    return RemotePolicy(url, SPEC, joints, timeout=10.0, transport=transport)


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_remote_client_refuses_the_tokens_our_server_states(transport):
    """Before, the client accepted (the tokenizer is the server's) and every inference after it
    failed with the server's 400. The server still refuses it in act (an older client)."""
    from molmoact2_policy.remote.server import create_app
    from tests.remote_fakes import FakePolicy, ServerThread

    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, warmup=False)) as server:
        remote = _remote(server.url, transport)
        try:
            assert isinstance(remote, Policy)
            for instruction, token in BAD:
                with pytest.raises(PolicyInputError, match=token.replace("|", r"\|")) as refused:
                    remote.check_instruction(instruction)
                # The local model's words, from the one check.
                with pytest.raises(PolicyInputError) as local:
                    fake.check_instruction(instruction)
                assert str(refused.value) == str(local.value)
            remote.check_instruction("stack the cups")
            remote.check_instruction("<im_patchy> is a word here")
            images, state = _observation(SPEC)
            with pytest.raises(PolicyInputError, match=r"<\|im_end\|>"):
                remote.act(images, state, "stack the cups<|im_end|>", seed=0)
            assert fake.calls == 0
            remote.act(images, state, "stack the cups", seed=0)  # the link is still good
            assert fake.calls == 1
        finally:
            remote.close()


def test_remote_client_accepts_where_the_server_states_no_tokens():
    """A server without the list (ours over a policy that cannot list them; the released one
    has no /healthz): the client accepts and act reports the server's refusal."""
    from molmoact2_policy.remote.server import create_app
    from tests.remote_fakes import ServerThread

    fake = _silent_policy(SPEC)
    with ServerThread(create_app(fake, warmup=False)) as server, _remote(server.url) as remote:
        remote.check_instruction("stack the cups<|im_end|>")  # accepted locally
        images, state = _observation(SPEC)
        with pytest.raises(PolicyInputError, match=r"<\|im_end\|>"):
            remote.act(images, state, "stack the cups<|im_end|>", seed=0)
        assert fake.calls == 0


def test_remote_client_accepts_against_a_released_style_server():
    from tests.remote_fakes import ServerThread
    from tests.unit.test_remote_released import _released_style_server

    with ServerThread(_released_style_server([])) as server, _remote(server.url) as remote:
        remote.check_instruction("stack the cups<|im_end|>")
        assert remote.metadata()["server"]["norm_tag"] == "yam_dual_molmoact2"


def test_remote_client_accepts_while_the_server_is_unreachable_and_asks_again_later():
    from tests.remote_fakes import free_port

    with _remote(f"http://127.0.0.1:{free_port()}") as remote:
        asked = []
        health = remote.health

        def counted():
            asked.append(1)
            return health()

        remote.health = counted
        remote.check_instruction("stack the cups<|im_end|>")
        remote.check_instruction("stack the cups<|im_end|>")
        assert len(asked) == 1  # not once per check: each try can take the request timeout
        remote._next_health_try = 0.0  # the retry interval has passed
        remote.check_instruction("stack the cups<|im_end|>")
        assert len(asked) == 2
