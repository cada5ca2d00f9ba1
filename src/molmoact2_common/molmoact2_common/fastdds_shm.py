"""Fast DDS shared-memory files in /dev/shm: the ones a process owns, and the ones nobody does.

Fast DDS (the default RMW of the ROS wheels) gives each participant a data segment
``fastdds_<16 hex>`` and a receive port ``fastdds_port<n>`` per locator, each guarded by a lock
file ``<name>_el`` its owner holds an flock on for as long as it lives (ports also have a
``<name>_sl`` reader lock and a ``sem.<name>_mutex``). Destroying the participant removes them;
a process that skips that teardown (our nodes end with ``os._exit``, see ``ros_runtime``) or is
killed leaves them behind: 32 MB a node with config/fastdds.xml, for ever, and the next
participant on the same domain reopens the same port numbers as the dead process left them.
Reopening such a stale port segfaults participant creation in Fast DDS before the fix of
eProsima/Fast-DDS#6501 (the wheels ship 3.2); a node here died at start with SIGSEGV inside
``create_publisher`` with 1,200 stale segments (9 GB) in /dev/shm.

``release_own`` removes the files a process owns just before it exits; ``clean_zombies`` removes
files whose owner is gone, by the rule ``fastdds shm clean`` uses (a lock file nobody holds), and
only ones older than a few seconds, so a participant that has created its lock file but not yet
locked it is never touched. No ROS imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from pathlib import Path

SHM_DIR = "/dev/shm"
# A lock file guarding a segment or a port (its owner's exclusive lock, or a port's reader lock).
_LOCK_FILE = re.compile(r"fastdds_(?:[0-9a-f]{16}|port\d+)_(?:el|sl)")
# Only the exclusive lock marks ownership: a process may hold a peer's port reader lock.
_OWNER_LOCK = re.compile(r"fastdds_(?:[0-9a-f]{16}|port\d+)_el")
# A lock file younger than this may belong to a participant still starting up.
ZOMBIE_MIN_AGE_S = 30.0


def locked_files(pid: int | str = "self") -> list[str]:
    """The Fast DDS shared-memory files process ``pid`` owns: each ``_el`` lock file it holds an
    flock on, and the segment or port it guards. Only a held lock counts: the process may also
    have a peer's lock file open for a moment (Fast DDS's watchdog probing whether it lives)."""
    owned: list[str] = []
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return owned
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
            directory, name = os.path.split(target)
            if directory != SHM_DIR or not _OWNER_LOCK.fullmatch(name):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                if any(line.startswith("lock:") for line in info):
                    owned += [target.removesuffix("_el"), target]
        except OSError:  # closed meanwhile
            continue
    return owned


def release_own() -> None:
    """Unlink this process's own Fast DDS shared-memory files, as destroying its participant
    would; for a process about to ``os._exit`` (its mappings stay valid until then). Peers that
    still have a segment mapped keep it; the memory is freed when the last one exits."""
    for path in locked_files():
        with contextlib.suppress(OSError):
            os.unlink(path)


def _take_locks(paths: list[Path], stack: contextlib.ExitStack) -> bool:
    """Take every lock in ``paths`` (released when ``stack`` closes); False when a live
    process holds one. Held while the files go, so a participant reopening the port meanwhile
    finds it locked (in use) instead of losing the files under it."""
    for path in paths:
        try:
            handle = stack.enter_context(open(path, "ab"))  # append: nothing is written
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held (BlockingIOError), gone meanwhile, or not ours to open
            return False
    return True


def clean_zombies(
    shm_dir: str | Path = SHM_DIR, min_age_s: float = ZOMBIE_MIN_AGE_S, now: float | None = None
) -> list[str]:
    """Remove the Fast DDS segments and ports whose owner is gone; returns the removed paths.

    A segment or port is a zombie when none of its lock files is held and each is older than
    ``min_age_s`` (by modification time). Removes the segment or port, its lock files and a
    port's ``sem.<port>_mutex``, as ``fastdds shm clean`` does, holding the locks meanwhile.
    """
    directory = Path(shm_dir)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    now = time.time() if now is None else now
    locks: dict[str, list[Path]] = {}
    for name in names:
        if _LOCK_FILE.fullmatch(name):
            locks.setdefault(name[:-3], []).append(directory / name)
    removed: list[str] = []
    for base, lock_paths in sorted(locks.items()):
        try:
            if any(now - path.stat().st_mtime < min_age_s for path in lock_paths):
                continue
        except OSError:
            continue
        with contextlib.ExitStack() as stack:
            if not _take_locks(lock_paths, stack):
                continue
            victims = [directory / base, *lock_paths]
            if base.startswith("fastdds_port"):
                victims.append(directory / f"sem.{base}_mutex")
            for path in victims:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(str(path))
    return removed
