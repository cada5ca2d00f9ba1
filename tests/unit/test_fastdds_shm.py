"""Stale Fast DDS shared-memory files: removed when their owner is gone, never while it lives.

A node died with SIGSEGV inside ``create_publisher`` with 1,200 stale segments in /dev/shm;
Fast DDS before eProsima/Fast-DDS#6501 can crash reopening a stale port. The files here are
stand-ins in a temporary directory with the names Fast DDS gives them; a live owner is an open
file holding the flock, as Fast DDS's RobustExclusiveLock holds it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from molmoact2_common import fastdds_shm

SEGMENT = "fastdds_0123456789abcdef"
PORT = "fastdds_port7413"
OLD = 1_000_000.0  # mtime of files written long ago
NOW = OLD + 3600.0


def _write(directory: Path, *names: str, mtime: float = OLD) -> None:
    for name in names:
        path = directory / name
        path.write_bytes(b"x")
        os.utime(path, (mtime, mtime))


def _segment(directory: Path, **kw) -> None:
    _write(directory, SEGMENT, f"{SEGMENT}_el", **kw)


def _port(directory: Path, **kw) -> None:
    _write(directory, PORT, f"{PORT}_el", f"{PORT}_sl", f"sem.{PORT}_mutex", **kw)


@pytest.fixture
def hold():
    """``hold(path, mode)``: a live owner's flock on ``path`` until the test ends."""
    handles = []

    def take(path: Path, mode: int = fcntl.LOCK_EX) -> None:
        handle = open(path, "ab")
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
        handles.append(handle)

    yield take
    for handle in handles:
        handle.close()


def test_a_dead_owners_segment_and_port_are_removed(tmp_path):
    _segment(tmp_path)
    _port(tmp_path)
    _write(tmp_path, "unrelated_file", "sem.other")
    removed = fastdds_shm.clean_zombies(tmp_path, now=NOW)
    assert sorted(Path(p).name for p in removed) == sorted(
        [SEGMENT, f"{SEGMENT}_el", PORT, f"{PORT}_el", f"{PORT}_sl", f"sem.{PORT}_mutex"]
    )
    assert sorted(os.listdir(tmp_path)) == ["sem.other", "unrelated_file"]


def test_a_live_owners_files_stay(tmp_path, hold):
    _segment(tmp_path)
    _port(tmp_path)
    hold(tmp_path / f"{SEGMENT}_el")
    hold(tmp_path / f"{PORT}_sl", fcntl.LOCK_SH)  # a reader of the port is alive
    assert fastdds_shm.clean_zombies(tmp_path, now=NOW) == []
    assert len(os.listdir(tmp_path)) == 6


def test_a_participant_still_starting_is_left_alone(tmp_path):
    # It has created its lock file but not locked it yet: young files are never touched.
    _segment(tmp_path, mtime=NOW - 1.0)
    assert fastdds_shm.clean_zombies(tmp_path, min_age_s=30.0, now=NOW) == []
    assert fastdds_shm.clean_zombies(tmp_path, min_age_s=0.5, now=NOW) != []


def test_the_locks_are_held_while_the_files_go(tmp_path, monkeypatch):
    # A participant reopening the port meanwhile must find it locked, not lose its files.
    _port(tmp_path)
    seen = []
    unlink = Path.unlink

    def checking_unlink(path: Path, *args, **kwargs):
        if path.name.endswith(("_el", "_sl")):
            with open(path, "ab") as probe:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append(path.name)
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", checking_unlink)
    fastdds_shm.clean_zombies(tmp_path, now=NOW)
    assert sorted(seen) == [f"{PORT}_el", f"{PORT}_sl"]


def test_a_missing_directory_is_nothing_to_clean(tmp_path):
    assert fastdds_shm.clean_zombies(tmp_path / "absent") == []


def test_a_process_owns_only_the_files_it_holds_the_exclusive_lock_on(tmp_path, monkeypatch, hold):
    monkeypatch.setattr(fastdds_shm, "SHM_DIR", str(tmp_path))
    _segment(tmp_path)
    _port(tmp_path)
    hold(tmp_path / f"{SEGMENT}_el")
    hold(tmp_path / f"{PORT}_sl", fcntl.LOCK_SH)  # reading a peer's port is not owning it
    assert sorted(fastdds_shm.locked_files()) == [
        str(tmp_path / SEGMENT), str(tmp_path / f"{SEGMENT}_el")
    ]
