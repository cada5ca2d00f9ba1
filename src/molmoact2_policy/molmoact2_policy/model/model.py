"""MolmoAct2Model: the Molmo2 VLM, the flow-matching action expert and the optional depth gate.

Module attributes: ``vlm`` (transformers' Molmo2ForConditionalGeneration), ``action_expert`` and
``action_expert_depth_gate``. The released checkpoint's tensor names are mapped onto these by
``keymap.py`` (which imports this module, never the other way round).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from molmoact2_policy.model.action_expert import (
    ActionExpert,
    DepthGate,
    ExpertContext,
    init_weights_randomly_for_tests,
)
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.vlm import PrefixInputs, PrefixOutput, build_vlm, prefix_forward


class MolmoAct2Model(nn.Module):
    def __init__(self, config: MolmoAct2Config, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.vlm = build_vlm(
            config.vlm,
            attn_implementation,
            pooling_attention_mask=config.pooling_attention_mask,
            vit_float32_attention=config.vit_float32_attention,
            adapter_float32_attention=config.adapter_float32_attention,
        )
        self.action_expert = (
            ActionExpert(config.action_expert) if config.add_action_expert else None
        )
        # Like the released model: no expert, no gate (its config flag is then ignored).
        self.action_expert_depth_gate = (
            DepthGate(
                config.num_vlm_layers,
                config.llm_kv_dim,
                per_layer=config.action_expert_depth_gate_per_layer,
                init_bias=config.action_expert_depth_gate_init_bias,
            )
            if config.add_action_expert and config.action_expert_depth_gate
            else None
        )
        self.eval()

    @classmethod
    def random(cls, config: MolmoAct2Config, seed: int = 0) -> MolmoAct2Model:
        """Deterministic random weights from ``seed`` (tiny checkpoints, tests, benchmarks).

        The expert gets small random values everywhere (its released init zeroes the output
        layers, which would make every chunk exactly the noise-free mean).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(config)
        if model.action_expert is not None:
            generator = torch.Generator().manual_seed(seed + 1)
            init_weights_randomly_for_tests(model.action_expert, generator)
        return model

    def to_inference(self, device: str | torch.device, dtype: torch.dtype) -> MolmoAct2Model:
        """Move to ``device`` with weights in ``dtype``; tables computed from the config stay fp32.

        ``nn.Module.to(dtype)`` would also round the non-persistent buffers (the VLM's RoPE
        inverse frequencies) to bf16: at prompt position 950 that shifts rotation angles by up
        to 1.1 rad (head dim 128), so every bf16 run on a GPU would attend with wrong
        positions. The buffers are kept at their own (fp32) precision instead.
        """
        computed = {
            (module, name): buffer
            for module in self.modules()
            for name, buffer in module.named_buffers(recurse=False)
            if name in module._non_persistent_buffers_set
        }
        self.to(device=device, dtype=dtype)
        for (module, name), buffer in computed.items():
            module.register_buffer(name, buffer.to(device=device), persistent=False)
        return self.eval()

    # ------------------------------------------------------------------ forward pieces
    def prefix(self, inputs: PrefixInputs) -> PrefixOutput:
        """VLM prefix forward; K/V per layer as chosen by ``config.expert_kv_source``."""
        return prefix_forward(self.vlm, inputs, self.config.expert_kv_source)

    def expert_context(
        self, prefix: PrefixOutput, depth_token_mask: Tensor | None = None
    ) -> ExpertContext:
        """Project the (detached) prefix K/V once per observation for the flow loop.

        ``depth_token_mask`` (B, S) bool marks the positions the optional depth gate scales (the
        depth codes and the <depth_output>/<depth_start>/<depth_end> tokens); the gate pools V
        over the other valid positions of ``prefix.mask``. Without a mask the gate is skipped.
        """
        if self.action_expert is None:
            raise RuntimeError("this checkpoint has no action expert (add_action_expert=false)")
        keys = [k.detach() for k in prefix.keys]
        values = [v.detach() for v in prefix.values]
        if self.action_expert_depth_gate is not None and depth_token_mask is not None:
            keys, values = self.action_expert_depth_gate(
                keys, values, depth_token_mask, prefix.mask
            )
        return self.action_expert.prepare_context(keys, values, prefix.mask)
