"""Which depth-grid cells of a camera frame changed since the previous one (pure numpy, no ROS).

MolmoAct2-Think re-predicts a depth code only for image cells that changed. This is the released
rule (``_compute_depth_update_mask`` in ``huggingface/lerobot``
``src/lerobot/policies/molmoact2/hf_model/modeling_molmoact2.py``): the frame is resized with
PIL's bilinear filter to ``size`` x ``size`` (grid x 32 = 320 for the released model; a frame
already that size is used as is), split into ``grid`` x ``grid`` patches of 32 x 32 x 3, and
each patch is compared with the same patch of the previous frame by the cosine similarity of
the raw float32 pixel values, computed in float32 as released: ``dot / (|a| |b| + 1e-12)``,
1.0 when ``|a| |b| < 1e-8`` (a black patch counts as unchanged against anything). A cell is
changed when its similarity is below ``threshold`` (0.996).

Cell ``i = r * grid + c`` covers rows ``[r * H / grid, (r + 1) * H / grid)`` and columns
``[c * W / grid, (c + 1) * W / grid)`` of the original frame (the DepthTokens convention).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_GRID = 10
DEFAULT_SIZE = 320
DEFAULT_THRESHOLD = 0.996


@dataclass(frozen=True)
class CellChanges:
    """The outcome of comparing two frames."""

    changed: np.ndarray  # (grid * grid,) bool, row-major
    similarity: np.ndarray  # (grid * grid,) float32 cosine similarity (see patch_similarity)

    @property
    def changed_fraction(self) -> float:
        return float(self.changed.mean()) if self.changed.size else 0.0


def check_rgb_frame(rgb: object, what: str = "frame") -> np.ndarray:
    """Return ``rgb`` as an HxWx3 uint8 array or raise ``ValueError`` naming the problem."""
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"{what}: expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8:
        raise ValueError(
            f"{what}: expected uint8 RGB pixels, got dtype {rgb.dtype} "
            "(convert 16-bit or float images to 8-bit RGB first)"
        )
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(
            f"{what}: expected an HxWx3 RGB image, got shape {rgb.shape} "
            "(mono, Bayer and RGBA frames must be converted to RGB first)"
        )
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"{what}: empty image of shape {rgb.shape}")
    return rgb


def _check_geometry(grid: int, size: int) -> None:
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    if size < grid or size % grid:
        raise ValueError(f"size {size} must be a positive multiple of grid {grid}")


def prepare_frame(
    rgb: np.ndarray, size: int = DEFAULT_SIZE, grid: int = DEFAULT_GRID
) -> np.ndarray:
    """Resize a frame for comparison and cut it into patches: (grid*grid, patch_values) float32.

    Keeping this form (not the raw frame) in the cache means each new frame is resized once.
    """
    _check_geometry(grid, size)
    rgb = check_rgb_frame(rgb)
    if rgb.shape[0] != size or rgb.shape[1] != size:
        # The released resize: PIL bilinear (it widens its filter when shrinking).
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    patch = size // grid
    patches = rgb.astype(np.float32).reshape(grid, patch, grid, patch, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(patches.reshape(grid * grid, patch * patch * 3))


def patch_similarity(prev_patches: np.ndarray, patches: np.ndarray) -> np.ndarray:
    """Cosine similarity per patch of two ``prepare_frame`` outputs: (cells,) float32.

    The released arithmetic, in float32: a patch without a direction (norm product below
    1e-8, e.g. black) counts as identical to anything (1.0).
    """
    if prev_patches.shape != patches.shape:
        raise ValueError(
            f"patch arrays differ in shape: {prev_patches.shape} vs {patches.shape} "
            "(were they prepared with the same grid and size?)"
        )
    a = np.asarray(patches, dtype=np.float32)
    b = np.asarray(prev_patches, dtype=np.float32)
    dot = np.sum(a * b, axis=-1)
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(denom < 1e-8, 1.0, dot / (denom + 1e-12))


def compare_frames(
    prev_rgb: np.ndarray | None,
    rgb: np.ndarray,
    grid: int = DEFAULT_GRID,
    size: int = DEFAULT_SIZE,
    threshold: float = DEFAULT_THRESHOLD,
) -> CellChanges:
    """Changed mask and similarities; with no previous frame every cell is changed."""
    patches = prepare_frame(rgb, size, grid)
    if prev_rgb is None:
        n = grid * grid
        return CellChanges(changed=np.ones(n, dtype=bool), similarity=np.zeros(n))
    prev = prepare_frame(check_rgb_frame(prev_rgb, "previous frame"), size, grid)
    return changes_from_patches(prev, patches, threshold)


def changes_from_patches(
    prev_patches: np.ndarray, patches: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> CellChanges:
    """Like ``compare_frames`` for frames already passed through ``prepare_frame``."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    similarity = patch_similarity(prev_patches, patches)
    # A Python float threshold compares in float32, as the released constant does.
    return CellChanges(changed=similarity < float(threshold), similarity=similarity)


def detect_changed_cells(
    prev_rgb: np.ndarray | None,
    rgb: np.ndarray,
    grid: int = DEFAULT_GRID,
    size: int = DEFAULT_SIZE,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """(grid*grid,) bool, row-major: True where the cell must be re-predicted."""
    return compare_frames(prev_rgb, rgb, grid, size, threshold).changed


def stamp_jump_reason(
    previous_s: float | None, stamp_s: float, max_gap_s: float, pace_s: float = 0.0
) -> str | None:
    """Why the depth cache must be dropped before a frame stamped ``stamp_s`` (None: keep it).

    Cached codes describe the scene at ``previous_s``; a stamp going backwards (bag replay,
    clock reset) or a gap longer than ``max_gap_s`` beyond the model's own pace ``pace_s``
    (camera paused, new episode) means the cached frame may no longer be the scene the robot
    sees. Consecutive Think frames lie one inference apart: without ``pace_s`` a model slower
    than ``max_gap_s`` per inference (a CPU, a loaded GPU, a remote server) reset the cache
    before every inference and never used it.
    """
    if previous_s is None:
        return None
    if stamp_s < previous_s:
        return f"camera stamp went backwards by {previous_s - stamp_s:.3f} s"
    allowed = max_gap_s + max(0.0, pace_s)
    if stamp_s - previous_s > allowed:
        pace = f" (max_stamp_gap + {pace_s:.3f} s per inference)" if pace_s > 0 else ""
        return f"camera stamp gap {stamp_s - previous_s:.3f} s exceeds {allowed:.3f} s{pace}"
    return None


class ResetGenerations:
    """Which Think results still describe the depth cache after its resets (thread-safe).

    A Think result comes from the cache its inference read. One that was running when the
    cache was reset (``~/reset`` arrives while the model runs; the policy's reset waits for the
    model call and clears the cache after it) describes the scene before the reset, and
    publishing it, or noting its stamp, would pass it off as the scene after.

    ``token()`` is taken when an inference starts, ``admit(token)`` when its result arrives:
    False (and counted in ``dropped``) when a reset began after the start or was still running
    at it. Resets are counted when they begin and when they end, so a start that overlaps a
    reset counts as before it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._begun = 0
        self._done = 0
        self.dropped = 0

    @contextmanager
    def resetting(self) -> Iterator[None]:
        """Wrap one reset of the cache (its failure counts as a reset too)."""
        with self._lock:
            self._begun += 1
        try:
            yield
        finally:
            with self._lock:
                self._done += 1

    def token(self) -> int:
        """Call right before an inference starts; hand the value to ``admit``."""
        with self._lock:
            return self._done

    def admit(self, token: int) -> bool:
        """True when no reset began since ``token`` was taken (nor was running then)."""
        with self._lock:
            current = self._begun == token
            if not current:
                self.dropped += 1
            return current
