"""Freed memory stays in a model process (molmoact2_common.allocator).

The page faults are counted in a fresh interpreter, so the allocator starts from glibc's state at
start-up, on the main thread and on a worker thread (where the policy node infers).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap

import pytest

from molmoact2_common import allocator

try:
    ctypes.CDLL(None).mallopt  # noqa: B018 - glibc only
    HAS_MALLOPT = sys.platform.startswith("linux")
except (OSError, AttributeError):
    HAS_MALLOPT = False

# Rounds of twelve 4 MiB buffers, written and freed, as an inference allocates and frees its
# activations; the minor page faults of each round, per thread.
FAULT_PROBE = textwrap.dedent(
    """
    import ctypes, json, resource, sys, threading
    from molmoact2_common.allocator import keep_freed_memory
    applied = keep_freed_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def rounds(out):
        for _ in range(5):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            buffers = [libc.malloc(4 * 2**20 + 4096 * i) for i in range(12)]
            for pointer in buffers:
                ctypes.memset(pointer, 1, 4 * 2**20)
            for pointer in buffers:
                libc.free(pointer)
            out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    main, worker = [], []
    rounds(main)
    thread = threading.Thread(target=rounds, args=(worker,))
    thread.start()
    thread.join()
    print(json.dumps({"applied": applied, "main": main, "worker": worker}))
    """
)
PAGES_PER_ROUND = 12 * 4 * 2**20 // 4096  # 12288


def fault_counts(env_overrides: dict[str, str]) -> dict:
    # The test machine's own malloc settings would stand in for the ones under test.
    drop = {"GLIBC_TUNABLES", allocator.OPT_OUT_ENV, *allocator.USER_MALLOC_ENV}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_overrides)
    result = subprocess.run(
        [sys.executable, "-c", FAULT_PROBE], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not HAS_MALLOPT, reason="glibc's mallopt only")
def test_freed_buffers_are_not_faulted_in_again_on_the_next_round():
    kept = fault_counts({})
    assert kept["applied"] is True
    # The first round maps the memory once; after that every round reuses it.
    for thread in ("main", "worker"):
        assert kept[thread][0] >= PAGES_PER_ROUND * 0.9, kept
        assert max(kept[thread][1:]) < PAGES_PER_ROUND * 0.05, kept


@pytest.mark.skipif(not HAS_MALLOPT, reason="glibc's mallopt only")
def test_glibc_defaults_fault_every_round_in_again():
    """What the settings are for: with the defaults (opted out), each round pays every page."""
    default = fault_counts({allocator.OPT_OUT_ENV: "0"})
    assert default["applied"] is False
    for thread in ("main", "worker"):
        assert min(default[thread][1:]) >= PAGES_PER_ROUND * 0.9, default


@pytest.mark.skipif(not HAS_MALLOPT, reason="glibc's mallopt only")
def test_the_users_own_malloc_tunables_are_left_alone():
    own = fault_counts({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"})
    assert own["applied"] is False
    assert min(own["main"][1:]) >= PAGES_PER_ROUND * 0.9, own


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ""),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, "GLIBC_TUNABLES"),
        ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, ""),
        (
            {"MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "1"},
            "MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_",
        ),
    ],
)
def test_user_malloc_settings(environ, expected):
    assert allocator.user_malloc_settings(environ) == expected


def test_opt_out_and_user_settings_apply_nothing(caplog):
    caplog.set_level("INFO", logger=allocator.__name__)
    assert allocator.keep_freed_memory({allocator.OPT_OUT_ENV: "0"}) is False
    assert allocator.keep_freed_memory({"MALLOC_MMAP_THRESHOLD_": "4096"}) is False
    assert "MOLMOACT2_MALLOC_KEEP=0" in caplog.text
    assert "MALLOC_MMAP_THRESHOLD_ are used as set" in caplog.text


def test_the_policy_node_and_server_set_it_before_loading_the_model(monkeypatch):
    from molmoact2_policy import policy_node
    from molmoact2_policy.remote import server

    calls: list[str] = []
    monkeypatch.setattr(policy_node, "keep_freed_memory", lambda: calls.append("keep"))
    monkeypatch.setattr(policy_node, "run_lifecycle_node", lambda *a, **k: calls.append("node"))
    policy_node.main([])
    assert calls == ["keep", "node"]

    calls.clear()
    monkeypatch.setattr(server, "keep_freed_memory", lambda: calls.append("keep"))

    def load(args):
        calls.append("load")
        raise SystemExit("stop here")

    monkeypatch.setattr(server, "_load_policy", load)
    with pytest.raises(SystemExit, match="stop here"):
        server.main(["--checkpoint", "tiny", "--embodiment", "yam_bimanual"])
    assert calls == ["keep", "load"]
