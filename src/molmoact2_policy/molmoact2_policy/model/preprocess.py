"""Observation -> model inputs: image patches, pooling indices, state bins and the prompt text.

Numpy and OpenCV, torch only when installed (no ROS), so the server, the node, the robot side
of remote inference and the tests share it.

Images follow the released robot checkpoints, whose processor runs crop mode "resize" (the
``--crop_mode`` default of the released LeRobot training script, written into each exported
``preprocessor_config.json``): one global crop per camera, whatever its aspect ratio, stretched
to 378x378 (no padding), every camera alike. The steps are those of the released
``MolmoAct2ImageProcessor`` and the vision backbone that consumes its output:

* resize: torchvision's tensor ``Resize(..., BILINEAR, antialias=False)`` of the uint8 image,
  i.e. torch's ``upsample_bilinear2d`` (half-pixel centres) in float32, rounded half to even
  back to uint8 (see ``resize_image``);
* normalise: ``x / 255 * 2 - 1`` in float32 (mean = std = 0.5; the backbone re-derives exactly
  this from the uint8 grid, so it is what the ViT sees);
* 14x14 patches in row-major order, pixels (y, x, channel) inside a patch;
* 2x2 pooling windows over the 27x27 patch grid, padded with -1 to 28x28 (floor of the padding
  at the top/left, ceil at the bottom/right), window entries (dy, dx) row-major; grid row
  (14, 14, 0, 0);
* tokens: ``<im_start>`` + 14 rows of 14 ``<im_patch>`` + ``<im_end>`` (198), see
  ``ImageTokenLayout``.

Per-image pooling indices are offset by the image's position in the flat crop list (the released
processor leaves them per image and its model adds the same offsets; transformers' Molmo2 takes
them flat).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from molmoact2_policy.policy_api import PolicyInputError

IMAGE_SIZE = 378
PATCH_SIZE = 14
POOL_SIZE = (2, 2)
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5

IMAGE_PLACEHOLDER = "<|image|>"
NUM_STATE_BINS = 256


@dataclass(frozen=True)
class ImageGeometry:
    """Sizes of the single-crop path; the released model uses the defaults."""

    image_size: int = IMAGE_SIZE
    patch_size: int = PATCH_SIZE
    pool_h: int = POOL_SIZE[0]
    pool_w: int = POOL_SIZE[1]

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.patches_per_side**2

    @property
    def pixels_per_patch(self) -> int:
        return self.patch_size * self.patch_size * 3

    @property
    def pooled_rows(self) -> int:
        return -(-self.patches_per_side // self.pool_h)

    @property
    def pooled_cols(self) -> int:
        return -(-self.patches_per_side // self.pool_w)

    @property
    def tokens_per_image(self) -> int:
        return self.pooled_rows * self.pooled_cols


@dataclass(frozen=True)
class ImageInputs:
    """Model inputs for N images (all cameras of one observation, or of a batch, in order)."""

    pixel_values: np.ndarray  # (N, num_patches, pixels_per_patch) float32 in [-1, 1]
    pooling_indices: np.ndarray  # (N * tokens_per_image, pool_h * pool_w) int64, -1 = padding
    grids: np.ndarray  # (N, 4) int64: pooled rows, pooled cols, 0, 0 (no high-res crops)


def _check_image(image: np.ndarray) -> None:
    # The released processor sees uint8 RGB (PIL or the servers' uint8 coercion); anything else
    # would be resized on a different scale, so it is refused rather than guessed at.
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"images must be uint8 numpy arrays, got {kind}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"images must be HxWx3 RGB, got shape {image.shape}")


def resize_image(
    image: np.ndarray, size: int = IMAGE_SIZE, *, exact: bool = True
) -> np.ndarray:
    """HxWx3 uint8 -> size x size uint8, stretched (aspect ratio not kept, no padding).

    The released processor runs torchvision's ``Resize([size, size], BILINEAR,
    antialias=False)`` on the uint8 tensor: torch's ``upsample_bilinear2d`` (half-pixel
    centres) in float32, rounded half to even. With ``exact`` and torch installed (the policy's
    process) that very kernel runs here. Otherwise OpenCV's float bilinear resize, within one
    grey level of it on about 0.2 % of values, stands in: the robot side of remote inference,
    which may lack torch and JPEG-compresses the result anyway, uses ``exact=False`` for speed.
    No antialiasing: shrinking a large frame aliases exactly as the release does.
    """
    _check_image(image)
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    torch = None
    if exact:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is None:
        resized = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    chw = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]  # a writable copy
    resized = torch.nn.functional.interpolate(
        chw, size=[size, size], mode="bilinear", align_corners=False, antialias=False
    )
    out = torch.round(resized).clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())


def normalize_pixels(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 ``x / 255 * 2 - 1`` (mean = std = 0.5): 0 -> -1, 255 -> 1.

    The released processor divides by 255 and applies ``x * 2 - 1`` in float32, and its vision
    backbone snaps float inputs back to the uint8 grid and recomputes the same expression.
    """
    return image.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)


def image_to_patches(image: np.ndarray, patch_size: int = PATCH_SIZE) -> np.ndarray:
    """(H, W, C) -> (H/p * W/p, p*p*C): patches in row-major order, pixels (y, x, c) inside."""
    height, width, channels = image.shape
    rows, cols = height // patch_size, width // patch_size
    patches = image.reshape(rows, patch_size, cols, patch_size, channels).transpose(0, 2, 1, 3, 4)
    return patches.reshape(rows * cols, patch_size * patch_size * channels)


def pooling_indices(patches_per_side: int, pool_h: int = 2, pool_w: int = 2) -> np.ndarray:
    """Indices of the patches each pooled token attends to, (rows*cols, pool_h*pool_w).

    The patch grid is padded with -1 to a multiple of the window, the extra row/column split as
    floor on the top/left and ceil on the bottom/right (27 -> 28: one column at the right).
    """
    grid = np.arange(patches_per_side * patches_per_side, dtype=np.int64).reshape(
        patches_per_side, patches_per_side
    )
    pad_h = pool_h * -(-patches_per_side // pool_h) - patches_per_side
    pad_w = pool_w * -(-patches_per_side // pool_w) - patches_per_side
    grid = np.pad(
        grid,
        ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)),
        constant_values=-1,
    )
    rows, cols = grid.shape[0] // pool_h, grid.shape[1] // pool_w
    return (
        grid.reshape(rows, pool_h, cols, pool_w).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
    )


def preprocess_images(
    images: Sequence[np.ndarray], geometry: ImageGeometry | None = None
) -> ImageInputs:
    """Resize, normalise and patchify each image; pooling indices index the flat patch list."""
    geometry = geometry or ImageGeometry()
    if not images:
        raise ValueError("at least one image is required")
    pixel_values = np.empty(
        (len(images), geometry.num_patches, geometry.pixels_per_patch), dtype=np.float32
    )
    for index, image in enumerate(images):
        resized = resize_image(image, geometry.image_size)
        pixel_values[index] = image_to_patches(normalize_pixels(resized), geometry.patch_size)
    base = pooling_indices(geometry.patches_per_side, geometry.pool_h, geometry.pool_w)
    offsets = [index * geometry.num_patches for index in range(len(images))]
    pooled = np.concatenate([np.where(base >= 0, base + offset, -1) for offset in offsets])
    grids = np.tile(
        np.array([[geometry.pooled_rows, geometry.pooled_cols, 0, 0]], dtype=np.int64),
        (len(images), 1),
    )
    return ImageInputs(pixel_values=pixel_values, pooling_indices=pooled, grids=grids)


@dataclass(frozen=True)
class ImageTokenLayout:
    """The tokens one image placeholder expands to, as the released processor builds them.

    The fields are the released processor options (``processor_config.json``):

    * ``use_col_tokens`` (``image_use_col_tokens``): ``<im_col>`` after each row of the
      high-res grid of a multi-crop image;
    * ``use_low_res_start_token`` (``use_single_crop_start_token``): the global (low-res) view
      of a multi-crop image starts with ``<low_res_im_start>`` instead of ``<im_start>``;
    * ``use_single_crop_col_tokens``: ``<im_col>`` after each row of the single/global crop;
      ``None`` falls back to ``use_col_tokens``.

    The defaults are the released values (True, True, False). An image with no high-res grid
    (crop mode "resize", grid row (rows, cols, 0, 0)) is ``<im_start>``, its rows and
    ``<im_end>``: the start-token option applies only to multi-crop images. No text precedes
    the tokens: the "Image k" labels of several cameras are part of the prompt.
    """

    use_col_tokens: bool = True
    use_low_res_start_token: bool = True
    use_single_crop_col_tokens: bool | None = False

    def tokens(self, rows: int, cols: int, high_rows: int = 0, high_cols: int = 0) -> list[str]:
        """Tokens for an image grid row (rows, cols, high_rows, high_cols)."""
        single_crop_cols = (
            self.use_col_tokens
            if self.use_single_crop_col_tokens is None
            else self.use_single_crop_col_tokens
        )
        row = ["<im_patch>"] * cols + (["<im_col>"] if single_crop_cols else [])
        if high_rows == 0 or high_cols == 0:
            return ["<im_start>", *(row * rows), "<im_end>"]
        start = "<low_res_im_start>" if self.use_low_res_start_token else "<im_start>"
        high_row = ["<im_patch>"] * high_cols + (["<im_col>"] if self.use_col_tokens else [])
        return [
            start,
            *(row * rows),
            "<im_end>",
            "<im_start>",
            *(high_row * high_rows),
            "<im_end>",
        ]


def discretize_state(normalized_state: np.ndarray, num_bins: int = NUM_STATE_BINS) -> np.ndarray:
    """Normalised state -> bin index per dimension: clip to [-1, 1], rint((x + 1) / 2 * (N - 1)).

    The arithmetic is float32 because the released model bins in float32, and near a bin
    boundary the two precisions disagree: -1 + 1/255 + 1e-9 scales to 0.49999997 (bin 0) in
    float32 but 0.5000001 (bin 1) in float64. Non-finite values raise instead of being
    mapped (NaN -> 0, +-inf -> +-1) as the release does: a broken state must not drive the robot.
    """
    state = np.asarray(normalized_state, dtype=np.float32)
    if not np.all(np.isfinite(state)):
        raise ValueError("state contains non-finite values")
    clipped = np.clip(state, np.float32(-1.0), np.float32(1.0))
    scaled = (clipped + np.float32(1.0)) / np.float32(2.0) * np.float32(num_bins - 1)
    return np.rint(scaled).astype(np.int64)


def state_token_text(bins: Sequence[int]) -> str:
    return "".join(f"<state_{int(k)}>" for k in bins)


@dataclass(frozen=True)
class PromptOptions:
    """Prompt switches from the checkpoint config."""

    add_setup_tokens: bool = True
    add_control_tokens: bool = True


# The released inference normalises every instruction this way before prompting, so the model
# has only ever been run on instructions in this form.
_TRAILING_PUNCTUATION = ".,!?;:\u2026"
_TRAILING_CLOSERS = "\"'\u201d\u2019)]}"
_SURROUNDING_DELIMITERS = "\"'`\u201c\u201d\u2018\u2019[](){}"
_INSTRUCTION_PREFIXES = (
    re.compile(r"^(?:task|instruction|language[_ ]instruction|goal)\s*[:\-]\s*", re.IGNORECASE),
    re.compile(r"^(?:the\s+task\s+is\s+to|your\s+task\s+is\s+to)\s+", re.IGNORECASE),
)
_SENTENCE_END = re.compile(r"[.!?]+")


def _strip_instruction_once(text: str) -> str:
    text = text.strip().strip(_SURROUNDING_DELIMITERS).strip()
    for prefix in _INSTRUCTION_PREFIXES:
        text = prefix.sub("", text, count=1).strip()
    text = text.rstrip(_TRAILING_PUNCTUATION).rstrip()
    text = text.rstrip(_TRAILING_CLOSERS).rstrip()
    return text.rstrip(_TRAILING_PUNCTUATION).rstrip()


def clean_instruction(instruction: str) -> str:
    """The instruction as the released inference puts it into the prompt.

    Whitespace runs become one space; surrounding quotes/brackets, a leading "task:"-style label
    or "the task is to", and trailing punctuation and closing quotes/brackets are stripped until
    nothing changes (so they nest); several sentences are joined with "; "; all is lowercased.
    """
    text = re.sub(r"\s+", " ", instruction).strip()
    previous = None
    while text and text != previous:
        previous = text
        text = _strip_instruction_once(text)
    sentences = [chunk.strip() for chunk in _SENTENCE_END.split(text) if chunk.strip()]
    if len(sentences) > 1:
        text = "; ".join(sentences)
    return text.lower()


class AddedTokenReader(Protocol):
    """What ``check_instruction`` needs of a tokenizer (``MolmoAct2Tokenizer`` has it)."""

    def added_tokens_in(self, text: str) -> list[str]: ...


class AddedTokenLister(Protocol):
    """A tokenizer that lists its added tokens (``MolmoAct2Tokenizer`` does)."""

    def added_tokens(self) -> list[str]: ...


def refused_instruction_tokens(tokenizer: AddedTokenLister) -> list[str]:
    """Every token ``check_instruction`` refuses with ``tokenizer``: its added tokens and the
    prompt builder's image placeholder. A policy server states them (``/healthz``) so that a
    remote client checks instructions with ``ControlTokenList`` as the server would."""
    return list(dict.fromkeys([IMAGE_PLACEHOLDER, *tokenizer.added_tokens()]))


class ControlTokenList:
    """``AddedTokenReader`` over a stated list of tokens (a policy server's, see above).

    Found as the tokenizer's added-token pass finds them before any BPE: anywhere in the text,
    leftmost first, the longest one at a position.
    """

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = tuple(dict.fromkeys(t for t in tokens if t))
        longest_first = sorted(self.tokens, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, longest_first))) if self.tokens else None

    def added_tokens_in(self, text: str) -> list[str]:
        return self._pattern.findall(text) if self._pattern is not None else []


def instruction_control_tokens(instruction: str, tokenizer: AddedTokenReader) -> list[str]:
    """The model's control tokens that ``instruction`` spells, once each, in order.

    The prompt is tokenised as a whole and added tokens are matched in the text before any BPE,
    so ``<im_patch>`` in an instruction became an image-patch token (the forward failed: "image
    features and image tokens do not match") and ``<|im_end|>``, ``<action_output>`` or
    ``<depth_3>`` would silently rewrite the prompt's structure. The released processor
    tokenises the same way. The list of added tokens is the checkpoint's own (its tokenizer).
    """
    text = clean_instruction(instruction)  # what goes into the prompt (lowercased)
    found = ([IMAGE_PLACEHOLDER] if IMAGE_PLACEHOLDER in text else []) + (
        tokenizer.added_tokens_in(text)
    )
    return list(dict.fromkeys(found))


def check_instruction(instruction: str, tokenizer: AddedTokenReader) -> None:
    """``PolicyInputError`` naming the control tokens ``instruction`` spells (see above)."""
    found = instruction_control_tokens(instruction, tokenizer)
    if found:
        raise PolicyInputError(
            f"instruction spells the model's control token(s) {', '.join(found)}; they would "
            "be read as tokens, not words"
        )


def _wrap(text: str, start: str, end: str, enabled: bool) -> str:
    # Already-wrapped text passes through, and an empty field is never wrapped: both as released.
    if (text.startswith(start) and text.endswith(end)) or not text or not enabled:
        return text
    return f"{start}{text}{end}"


def image_prefix(num_images: int) -> str:
    """The chat template numbers images only when there are several."""
    if num_images <= 0:
        return ""
    if num_images == 1:
        return IMAGE_PLACEHOLDER
    return "".join(f"Image {index + 1}{IMAGE_PLACEHOLDER}" for index in range(num_images))


ACTION_QUESTION = "Given these, what action should the robot take to complete the task?"
DEPTH_ACTION_QUESTION = (
    "Given these, first predict the depth map of the main image "
    "and then predict the action the robot should take to complete the task?"
)
ACTION_PROMPT_END = "<action_output>"
# The Think prompt asks for both outputs up front; the depth span (<depth_start> ...) is
# generated after it.
DEPTH_ACTION_PROMPT_END = "<depth_output><action_output>"


def build_prompt(
    *,
    num_images: int,
    instruction: str,
    setup: str,
    control_mode: str,
    state_bins: Sequence[int] | None,
    options: PromptOptions | None = None,
    depth_reasoning: bool = False,
) -> str:
    """The robot-policy prompt of the released model, with ``<|image|>`` placeholders.

    ``state_bins=None`` drops the state sentence (an empty sequence keeps it, with no state
    tokens). ``depth_reasoning`` gives the MolmoAct2-Think prompt.
    """
    options = options or PromptOptions()
    setup_text = _wrap(setup, "<setup_start>", "<setup_end>", options.add_setup_tokens)
    control_text = _wrap(
        control_mode, "<control_start>", "<control_end>", options.add_control_tokens
    )
    state_clause = ""
    if state_bins is not None:
        state_clause = (
            " The current state of the robot is "
            f"<state_start>{state_token_text(state_bins)}<state_end>."
        )
    question = DEPTH_ACTION_QUESTION if depth_reasoning else ACTION_QUESTION
    prompt_end = DEPTH_ACTION_PROMPT_END if depth_reasoning else ACTION_PROMPT_END
    return (
        f"{image_prefix(num_images)}<|im_start|>user\n"
        f"The task is to {clean_instruction(instruction)}. "
        f"The setup is {setup_text}.{state_clause} "
        f"The expected control mode is {control_text}. {question}"
        f"<|im_end|>\n<|im_start|>assistant\n{prompt_end}"
    )
