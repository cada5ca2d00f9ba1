"""glibc malloc settings for a process that runs the model: freed buffers stay in the process.

Every inference allocates and frees the same tens of megabytes: activations on the CPU, image
preprocessing and staging buffers before the GPU. With glibc's defaults that memory goes back to
the kernel after each inference (the heap is trimmed once more than ``M_TRIM_THRESHOLD`` is free
at its top, and buffers over the adaptive ``M_MMAP_THRESHOLD`` are unmapped on free), so the
next inference page-faults all of it in again, zero-filled by the kernel: 12,267 faults per
round of twelve 4 MiB buffers in ``tests/unit/test_allocator.py``, none with these settings. On
the lent H200 machine (a microVM, where a fault costs more than on bare metal) the tiny model's
``act`` in the policy node took 121-139 ms with the defaults and 94 ms with these settings (set
through ``GLIBC_TUNABLES`` for that run; issue #21's bench, ``bench/gpu/run_benches.sh``).

The price is that the process keeps its peak use of buffers under 32 MiB instead of returning it
between inferences; buffers of 32 MiB and more (weights while loading, large activations) are
still mapped one by one and returned on free. ``MOLMOACT2_MALLOC_KEEP=0`` leaves glibc's
defaults; malloc settings of the user's own (``GLIBC_TUNABLES`` with ``glibc.malloc.``, or the
``MALLOC_*_`` variables) are left as they are too.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Mapping

LOG = logging.getLogger(__name__)

# mallopt parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): setting it also turns
# off the adaptive threshold, which otherwise moves with each freed buffer.
MMAP_THRESHOLD = 32 * 2**20
# mallopt takes an int: the largest one means the heap is in practice never trimmed.
TRIM_THRESHOLD = 2**31 - 1
OPT_OUT_ENV = "MOLMOACT2_MALLOC_KEEP"
USER_MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def user_malloc_settings(environ: Mapping[str, str]) -> str:
    """The user's own malloc settings in ``environ`` (empty when there are none)."""
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return ", ".join(name for name in USER_MALLOC_ENV if name in environ)


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Keep freed heap memory in this process (module docstring); True when applied.

    False, with a log line saying why, when ``MOLMOACT2_MALLOC_KEEP=0``, when the user set malloc
    settings of their own, or when the C library has no ``mallopt`` (not glibc).
    """
    environ = os.environ if environ is None else environ
    if environ.get(OPT_OUT_ENV, "1").strip() == "0":
        LOG.info("%s=0: glibc's default malloc settings", OPT_OUT_ENV)
        return False
    own = user_malloc_settings(environ)
    if own:
        LOG.info("malloc settings from %s are used as set", own)
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        LOG.info("no mallopt in this C library: its default malloc settings stay")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    if applied:
        LOG.debug("freed memory stays in the process (mmap threshold 32 MiB, no heap trim)")
    else:
        LOG.warning("mallopt refused the settings: glibc's default malloc settings stay")
    return applied
