"""Two hosts: the policy node on one "machine", the robot (driver, cameras) on another.

Each machine is a Linux network namespace joined by a veth pair, with addresses only inside the
namespaces, so DDS discovery and every message really cross a network link: cameras and joint
states from the robot side to the policy, chunks back. DDS is forced onto UDP (no shared
memory between the processes of one kernel) and discovery is set to ``SUBNET``, as it must be
between real machines. Skipped with the reason where namespaces cannot be created.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from tests.rostest_util import REPO_ROOT
from tests.system.reliability_util import NodeProcess, smooth_policy_process, unique_namespace

pytestmark = pytest.mark.ros

ROBOT = "so101"
SUBNET = "10.231.{}.{}"


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def two_hosts():
    """(policy_host, robot_host) namespace names; removed again whatever happens."""
    if sys.platform != "linux" or shutil.which("ip") is None:
        pytest.skip("two-host test needs Linux network namespaces and iproute2 (ip)")
    if os.geteuid() != 0:
        pytest.skip("two-host test needs root (CAP_NET_ADMIN) to create network namespaces")
    tag = uuid.uuid4().hex[:6]
    hosts = (f"rel_policy_{tag}", f"rel_robot_{tag}")
    links = (f"rp{tag}", f"rr{tag}")
    octet = int(tag[:2], 16) % 250 + 1
    created: list[str] = []
    try:
        for host in hosts:
            result = _ip("netns", "add", host)
            if result.returncode != 0:
                pytest.skip(f"cannot create network namespaces here: {result.stderr.strip()}")
            created.append(host)
        steps = [("link", "add", links[0], "type", "veth", "peer", "name", links[1])]
        for host, link, address in zip(hosts, links, (1, 2), strict=True):
            steps += [
                ("link", "set", link, "netns", host),
                ("-n", host, "link", "set", "lo", "up"),
                ("-n", host, "addr", "add", f"{SUBNET.format(octet, address)}/24", "dev", link),
                ("-n", host, "link", "set", link, "up", "multicast", "on"),
                # DDS discovery is multicast: give it a route on the link.
                ("-n", host, "route", "add", "224.0.0.0/4", "dev", link),
            ]
        for step in steps:
            result = _ip(*step)
            if result.returncode != 0:
                pytest.skip(f"cannot set up the veth link ({' '.join(step)}): {result.stderr}")
        yield hosts, links
    finally:
        for host in created:
            _ip("netns", "del", host)


def _rx_bytes(host: str, link: str) -> int:
    result = _ip("-n", host, "-s", "-j", "link", "show", link)
    return int(json.loads(result.stdout)[0]["stats64"]["rx"]["bytes"])


def test_chunks_flow_between_policy_and_robot_hosts(two_hosts, tmp_path):
    (policy_host, robot_host), (_policy_link, robot_link) = two_hosts
    env = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
        "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"],
        # Real separate machines share no memory: keep Fast DDS off its shared-memory transport.
        "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4",
    }
    namespace = unique_namespace("hosts")

    def on(host: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", host)

    policy = smooth_policy_process(ROBOT, namespace)
    policy.env.update(env)
    policy.prefix, policy.workdir = on(policy_host), tmp_path
    driver = NodeProcess(ROBOT, "so101_driver", namespace, env=env, prefix=on(robot_host),
                         workdir=tmp_path)
    cameras = NodeProcess(ROBOT, "sim_cameras", namespace, env=env, prefix=on(robot_host),
                          workdir=tmp_path, overrides={"width": 160, "height": 120})
    processes = [driver, cameras, policy]
    try:
        for process in processes:
            process.start()
        probe = subprocess.run(
            [*on(robot_host), sys.executable, "-m", "tests.system.reliability_util",
             ROBOT, namespace, "60"],
            cwd=REPO_ROOT, env={**os.environ, **env}, capture_output=True, text=True,
            timeout=120,
        )
        lines = [line for line in probe.stdout.splitlines() if line.startswith("{")]
        assert lines, probe.stdout + probe.stderr
        seen = json.loads(lines[-1])
        logs = {p.node: p.text()[-2000:] for p in processes}
        assert int(seen["driver"].get("accepted_chunks", "0")) >= 5, (seen, logs)
        assert seen["chunks_seen"] > 0, seen
        # The traffic really crossed the link: camera frames alone are megabytes.
        assert _rx_bytes(policy_host, _policy_link) > 1_000_000
        assert _rx_bytes(robot_host, robot_link) > 10_000
        for process in processes:
            assert process.alive(), process.text()[-2000:]
    finally:
        for process in processes:
            process.stop()
