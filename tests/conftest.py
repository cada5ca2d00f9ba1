"""Test-session settings shared by every tier (unit, ros, system)."""

from __future__ import annotations

import os
import random

# Keep ROS traffic of this test session to itself: a private DDS domain (several developers'
# or CI's suites may run on one machine) and discovery limited to this host. Subprocesses that
# tests start inherit both.
if "ROS_DOMAIN_ID" not in os.environ:
    os.environ["ROS_DOMAIN_ID"] = str(random.Random(os.getpid()).randint(1, 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# Two cores: torch's default thread pool would fight the ROS executors in the same test.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_sessionstart(session) -> None:
    # Fast DDS files that killed node processes (tests kill some on purpose) or earlier runs
    # on this machine left in /dev/shm: graphs started by this session would reopen their
    # ports, which crashes participant creation in the wheels' Fast DDS now and then.
    from molmoact2_common import fastdds_shm

    fastdds_shm.clean_zombies()
