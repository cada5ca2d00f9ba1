"""MolmoAct2Policy: the local model behind ``molmoact2_policy.policy_api.Policy``.

One ``act`` = validate -> preprocess (images, state bins, prompt, token ids) -> VLM prefix
(once per observation; the expert's projected context is prepared here too) -> cached Euler
flow loop (a CUDA graph with ``cuda_graph=True`` on a GPU) -> un-normalise. Each step is a
method so the Think policy (``model/think.py``) can subclass and replace single steps.
``model/loader.py`` loads a checkpoint as the policy class of its mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from molmoact2_common.embodiments import EmbodimentSpec
from molmoact2_policy.model.action_expert import ExpertContext
from molmoact2_policy.model.compat import check_embodiment
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.flow import GraphFlowRunner, make_noise
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.normalize import NormStats
from molmoact2_policy.model.preprocess import (
    ImageGeometry,
    ImageTokenLayout,
    PromptOptions,
    build_prompt,
    check_instruction,
    discretize_state,
    preprocess_images,
    refused_instruction_tokens,
)
from molmoact2_policy.model.rtc import DEFAULT_MAX_GUIDANCE_WEIGHT, RtcGuide
from molmoact2_policy.model.tokenizer import EOS_TOKEN, MolmoAct2Tokenizer
from molmoact2_policy.model.vlm import (
    PrefixInputs,
    PrefixOutput,
    collate_prefix_inputs,
    expert_context_mask,
    image_token_ids,
    tokenize_prompt,
)
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    PolicyUnavailableError,
    RtcRequest,
    validate_observation,
    validate_rtc,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY = "tiny"
# Most Euler steps one request may ask for: each step is a full expert forward.
MAX_FLOW_STEPS = 100


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}") from None


class MolmoAct2Policy:
    """Flow-matching MolmoAct2 for one embodiment (implements ``policy_api.Policy``)."""

    mode_name = "flow"
    # config.json token ids this mode cannot run without; load_policy refuses a checkpoint
    # whose file leaves one null (the released default) before building the policy.
    required_token_ids: tuple[str, ...] = ()
    depth_reasoning = False  # Think asks for the depth map before the action

    def __init__(
        self,
        model: MolmoAct2Model,
        config: MolmoAct2Config,
        norm_stats: NormStats,
        tokenizer: MolmoAct2Tokenizer,
        embodiment: EmbodimentSpec,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        cuda_graph: bool = False,
        seed: int = 0,
        joint_names: Sequence[str] | None = None,
        checkpoint: str = TINY,
    ) -> None:
        self.config = config
        self.norm_stats = norm_stats
        self.tokenizer = tokenizer
        self.embodiment = embodiment
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        self.cuda_graph = cuda_graph
        self.seed = seed
        self.checkpoint = checkpoint
        self.joint_names = self._check_joint_names(joint_names)
        self._check_compatible()
        self.model = model.to_inference(self.device, self.dtype)
        self.geometry = ImageGeometry(
            image_size=config.vlm.vision_config.image_size[0],
            patch_size=config.vlm.vision_config.patch_size,
        )
        layout = ImageTokenLayout(
            use_col_tokens=config.image_use_col_tokens,
            use_low_res_start_token=config.use_single_crop_start_token,
            use_single_crop_col_tokens=config.use_single_crop_col_tokens,
        )
        self._image_tokens = tokenizer.token_ids(
            layout.tokens(self.geometry.pooled_rows, self.geometry.pooled_cols)
        )
        self._image_type_ids = image_token_ids(tokenizer)
        self._pad_id = tokenizer.token_id(EOS_TOKEN)
        self._prompt_options = PromptOptions(config.add_setup_tokens, config.add_control_tokens)
        mask = torch.zeros(config.max_action_dim, dtype=torch.bool)
        mask[: embodiment.action_dim] = True
        self.action_dim_mask = mask.to(self.device)
        self.flow_runner = (
            GraphFlowRunner(
                self.model.action_expert,
                num_steps=config.flow_matching_num_steps,
                use_cuda_graph=cuda_graph,
            )
            if self.model.action_expert is not None
            else None
        )
        self._extra_runners: dict[int, GraphFlowRunner] = {}  # other step counts (flow_runner_for)
        self._generator = torch.Generator().manual_seed(seed)
        # Real-time chunking's clip on the guidance weight (the paper's beta).
        self.rtc_max_guidance_weight = DEFAULT_MAX_GUIDANCE_WEIGHT
        # The node may call act from a worker thread while a service calls reset.
        self._lock = threading.Lock()
        self._reset_pending = False  # a reset asked for while an inference held the lock

    def _check_joint_names(self, joint_names: Sequence[str] | None) -> tuple[str, ...]:
        spec = self.embodiment
        if joint_names is None:
            return tuple(f"joint_{index}" for index in range(spec.action_dim))
        names = tuple(joint_names)
        if len(names) != spec.action_dim:
            raise ValueError(
                f"{spec.name} predicts {spec.action_dim} action dims, "
                f"got {len(names)} joint names"
            )
        return names

    def _check_compatible(self) -> None:
        config = self.config
        self.first_step, self.returned_steps = check_embodiment(
            self.embodiment,
            self.norm_stats,
            max_action_dim=config.max_action_dim,
            max_action_horizon=config.action_expert.max_action_horizon,
            n_obs_steps=config.n_obs_steps,
            checkpoint=self.checkpoint,
        )

    # ------------------------------------------------------------------ steps (overridable)
    def normalized_state_bins(self, state: np.ndarray) -> np.ndarray:
        spec = self.embodiment
        normalized = self.norm_stats.normalize_state(
            spec.norm_tag, np.asarray(state, dtype=np.float64)
        )
        return discretize_state(normalized, self.config.num_state_tokens)

    def build_prompt(self, state: np.ndarray, instruction: str) -> str:
        spec = self.embodiment
        # The checkpoint's own wording, when its stats carry it, is what the model was trained
        # on; the embodiment table's text is the fallback for checkpoints without it.
        tag = self.norm_stats.metadata(spec.norm_tag)
        return build_prompt(
            num_images=len(spec.camera_names),
            instruction=instruction,
            setup=str(tag["setup_type"] or "") if "setup_type" in tag else spec.setup,
            control_mode=(
                str(tag["control_mode"] or "") if "control_mode" in tag else spec.control_mode
            ),
            state_bins=self.normalized_state_bins(state).tolist(),
            options=self._prompt_options,
            depth_reasoning=self.depth_reasoning,
        )

    def check_instruction(self, instruction: str) -> None:
        """``PolicyInputError`` when the instruction spells one of the model's control tokens
        (``preprocess.check_instruction``, with this checkpoint's tokenizer)."""
        check_instruction(instruction, self.tokenizer)

    def control_tokens(self) -> list[str]:
        """What ``check_instruction`` refuses, for a server to state to its remote clients."""
        return refused_instruction_tokens(self.tokenizer)

    def prepare_inputs(
        self, images: Mapping[str, np.ndarray], state: np.ndarray, instruction: str
    ) -> PrefixInputs:
        """Images in the embodiment's camera order, prompt ids, on the policy's device."""
        self.check_instruction(instruction)  # the node checks at entry; callers of act here
        ordered = [images[name] for name in self.embodiment.camera_names]
        image_inputs = preprocess_images(ordered, self.geometry)
        prompt = self.build_prompt(state, instruction)
        ids = tokenize_prompt(self.tokenizer, prompt, self._image_tokens)
        batch = collate_prefix_inputs([ids], image_inputs, self._image_type_ids, self._pad_id)
        return batch.to(self.device, self.dtype)

    def run_prefix(self, inputs: PrefixInputs) -> PrefixOutput:
        return self.model.prefix(inputs)

    def expert_context(
        self, prefix: PrefixOutput, gated: Tensor | None = None
    ) -> ExpertContext:
        """The flow expert's context; ``gated`` (B, S) marks what the depth gate scales."""
        if prefix.input_ids is not None:
            config = self.config
            mask = expert_context_mask(
                prefix.input_ids,
                prefix.mask,
                action_mode=config.action_mode,
                # Released configs carry it at the top level (kept in ``extra`` here).
                eos_token_ids=config.eos_token_ids,
                action_start_token_id=config.action_start_token_id,
                action_end_token_id=config.action_end_token_id,
            )
            prefix = dataclasses.replace(prefix, mask=mask)
            if gated is not None:
                gated = gated & mask
        return self.model.expert_context(prefix, gated)

    def make_noise(self, seed: int | None) -> Tensor:
        generator = self._generator if seed is None else torch.Generator().manual_seed(seed)
        shape = (1, self.embodiment.horizon, self.config.max_action_dim)
        # float32 whatever the weights: the Euler loop integrates in the noise's dtype, and
        # ten bf16 accumulations of the velocity lose about 3 bits of the chunk.
        return make_noise(shape, generator, self.device, torch.float32, self.action_dim_mask)

    def flow_runner_for(self, num_steps: int | None) -> GraphFlowRunner:
        """The flow loop with ``num_steps`` Euler steps (None: the checkpoint's own count).

        A request may ask for another step count, as the released inference allows; each count
        has its own runner (its time tables and graphs), made on first use.
        """
        if self.flow_runner is None:
            raise RuntimeError("this checkpoint has no action expert; use mode 'fast'")
        if num_steps is None or num_steps == self.flow_runner.sampler.num_steps:
            return self.flow_runner
        if isinstance(num_steps, bool) or not isinstance(num_steps, int):
            raise ValueError(f"num_steps must be an integer, got {num_steps!r}")
        if not 1 <= num_steps <= MAX_FLOW_STEPS:
            raise ValueError(f"num_steps must be in 1..{MAX_FLOW_STEPS}, got {num_steps}")
        runner = self._extra_runners.get(num_steps)
        if runner is None:
            runner = GraphFlowRunner(
                self.model.action_expert, num_steps=num_steps, use_cuda_graph=self.cuda_graph
            )
            self._extra_runners[num_steps] = runner
        return runner

    def sample_chunk(
        self,
        ctx: ExpertContext,
        noise: Tensor,
        num_steps: int | None = None,
        guide: RtcGuide | None = None,
    ) -> Tensor:
        """Normalised actions (1, horizon, max_action_dim) from the flow loop (RTC-guided)."""
        return self.flow_runner_for(num_steps).sample(ctx, noise, self.action_dim_mask, guide)

    def rtc_guide(self, rtc: RtcRequest | None) -> RtcGuide | None:
        """The previous chunk in model units, padded to the expert's action dims.

        ``rtc.previous`` row i applies when the *returned* row i does, which is model row
        ``first_step + i`` (released checkpoints with ``n_obs_steps > 1`` return from there):
        the target, frozen rows and guidance end are shifted by that much.
        """
        if rtc is None:
            return None
        spec = self.embodiment
        validate_rtc(spec, rtc)
        offset = self.first_step
        rows = np.asarray(rtc.previous, dtype=np.float64)[: spec.horizon - offset]
        normalized = self.norm_stats.normalize_action(spec.norm_tag, rows)
        previous = torch.zeros(1, offset + normalized.shape[0], self.config.max_action_dim)
        previous[0, offset:, : spec.action_dim] = torch.from_numpy(normalized)
        guide = RtcGuide.build(
            previous.to(self.device, self.dtype),
            offset + int(rtc.delay_steps),
            None if rtc.execution_horizon is None else offset + int(rtc.execution_horizon),
            spec.horizon,
            max_guidance_weight=self.rtc_max_guidance_weight,
        )
        if offset:
            # Model rows before the returned ones are not the previous chunk's: left free.
            guide.weights[:, :offset] = 0.0
            guide.frozen[:, :offset] = False
        return guide

    def freeze_prefix(self, positions: np.ndarray, rtc: RtcRequest | None) -> np.ndarray:
        """The frozen rows, in robot units, exactly as the previous chunk has them.

        ``positions`` are the model's rows (before ``chunk_result`` cuts the returned ones).
        The model's copy went through normalise/unnormalise (and maybe bf16); the rows that
        are already executing must match the robot's plan bit for bit.
        """
        if rtc is not None:
            previous = np.asarray(rtc.previous, dtype=np.float64)
            offset = self.first_step
            delay = min(int(rtc.delay_steps), previous.shape[0], positions.shape[0] - offset)
            positions[offset : offset + delay] = previous[:delay]
        return positions

    def postprocess(self, normalized: Tensor) -> np.ndarray:
        """(1, horizon, max_action_dim) normalised -> (horizon, action_dim) float64 robot units."""
        spec = self.embodiment
        chunk = normalized[0, :, : spec.action_dim].float().cpu().numpy().astype(np.float64)
        return self.norm_stats.unnormalize_action(spec.norm_tag, chunk)

    # ------------------------------------------------------------------ Policy API
    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
        num_steps: int | None = None,
        rtc: RtcRequest | None = None,
    ) -> ActionChunkResult:
        """One chunk; ``num_steps`` overrides the checkpoint's Euler step count for this call."""
        validate_observation(self.embodiment, images, state, instruction)
        runner = self.flow_runner_for(num_steps)  # a bad count fails before any work
        with self._inference(), torch.inference_mode():
            start = time.perf_counter()
            inputs = self.prepare_inputs(images, np.asarray(state), instruction)
            noise = self.make_noise(seed)
            guide = self.rtc_guide(rtc)
            after_preprocess = self._clock()
            ctx = self.expert_context(self.run_prefix(inputs))
            after_prefix = self._clock()
            normalized = runner.sample(ctx, noise, self.action_dim_mask, guide)
            after_flow = self._clock()
            positions = self.freeze_prefix(self.postprocess(normalized), rtc)
            end = time.perf_counter()
        timings = {
            "preprocess": after_preprocess - start,
            "prefix": after_prefix - after_preprocess,
            "flow": after_flow - after_prefix,
            "total": end - start,
        }
        return self.chunk_result(positions, timings)

    def chunk_result(
        self, positions: np.ndarray, timings: dict[str, float], **depth: np.ndarray
    ) -> ActionChunkResult:
        """The finished chunk of any mode; non-finite actions are an inference failure."""
        if not np.all(np.isfinite(positions)):
            raise PolicyUnavailableError("the model produced non-finite actions; check the weights")
        return ActionChunkResult(
            # The tag's n_action_steps, as the released inference returns (all when unset).
            positions=positions[self.first_step : self.first_step + self.returned_steps],
            step_dt=self.embodiment.step_dt,
            joint_names=self.joint_names,
            mode=self.mode_name,
            timings=timings,
            **depth,
        )

    def _clock(self) -> float:
        # Stage times are only meaningful once queued GPU work has finished.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def warm_up(self, instruction: str) -> dict[str, float]:
        """One inference on a blank observation whose prompt has ``instruction``'s shape.

        The prompt length (instruction tokens; images and state tokens are fixed per
        embodiment) picks the flow loop's CUDA-graph bucket, so warming up with the instruction
        the robot will be given records the graph the first real request replays, instead of
        recording it inside that request. Ends with ``reset()``: the noise sequence restarts
        and no depth cache is left behind. Returns the warm-up's stage timings.
        """
        spec = self.embodiment
        images = {name: np.zeros((360, 640, 3), dtype=np.uint8) for name in spec.camera_names}
        result = self.act(images, np.zeros(spec.state_dim), instruction, seed=0)
        self.reset()
        return dict(result.timings)

    def weights_changed(self) -> None:
        """Call after editing the expert's weights: the flow loop caches per-weight tensors."""
        if self.flow_runner is not None:
            self.flow_runner.refresh()
        self._extra_runners.clear()

    def reset(self) -> None:
        """Restart the noise sequence, so an episode replays identically from its start.

        Never waits for a running inference: the ROS services that call this run on the node's
        executor thread, which a wait would block for a whole inference (seconds on a CPU), with
        every camera and status callback behind it. A reset asked for during an inference is
        applied as that inference ends, before the next one begins.
        """
        if self._lock.acquire(blocking=False):
            try:
                self._reset_pending = False
                self._reset_state()
            finally:
                self._lock.release()
        else:
            self._reset_pending = True

    def _reset_state(self) -> None:
        """What ``reset`` forgets (the lock is held)."""
        self._generator.manual_seed(self.seed)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        """The lock one inference holds; applies a reset that came while it was taken, at both
        ends (one that arrived just after the end is then applied when the next begins)."""
        with self._lock:
            self._apply_pending_reset()
            try:
                yield
            finally:
                self._apply_pending_reset()

    def _apply_pending_reset(self) -> None:
        if self._reset_pending:
            self._reset_pending = False
            self._reset_state()

    def metadata(self) -> dict[str, Any]:
        spec = self.embodiment
        return {
            "checkpoint": self.checkpoint,
            "embodiment": spec.name,
            "mode": self.mode_name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "cuda_graph": self.cuda_graph,
            "horizon": spec.horizon,
            "action_dim": spec.action_dim,
            "step_dt": spec.step_dt,
            "camera_names": list(spec.camera_names),
            "joint_names": list(self.joint_names),
            "flow_steps": self.config.flow_matching_num_steps,
            "rtc_max_guidance_weight": self.rtc_max_guidance_weight,
            "norm_mode": self.norm_stats.norm_mode,
            "expert_kv_source": self.config.expert_kv_source,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
