"""Test-session settings shared by every tier (unit, ros, system)."""

from __future__ import annotations

import os
import random

from hypothesis import settings

# Keep ROS traffic of this test session to itself: a private DDS domain (several developers'
# or CI's suites may run on one machine) and discovery limited to this host. Subprocesses that
# tests start inherit both.
if "ROS_DOMAIN_ID" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# Two cores: torch's default thread pool would fight the ROS executors in the same test.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property tests draw the same examples on every run: CI must be deterministic, and a test that
# draws new examples each run fails one run in ten when it does find something (reproduce the
# finding, then fix it at its cause and keep the example). No per-example deadline: these tests
# check behaviour, not speed, on shared cores. ``HYPOTHESIS_PROFILE=explore`` draws fresh
# random examples, more of them, for a local hunt; a test's own ``@settings`` still override.
settings.register_profile("ci", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None, database=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_sessionstart(session) -> None:
    # Fast DDS files that killed node processes (tests kill some on purpose) or earlier runs
    # on this machine left in /dev/shm: graphs started by this session would reopen their
    # ports, which crashes participant creation in the wheels' Fast DDS now and then.
    from molmoact2_common import fastdds_shm

    fastdds_shm.clean_zombies()
