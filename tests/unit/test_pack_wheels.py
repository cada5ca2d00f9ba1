"""bench/gpu/pack_wheels.py: wheels survive the tar.xz round trip that carries them to a GPU
machine (same files, same bytes, scripts still executable), and the requirement closure stops at
what the target image already has."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("pack_wheels", REPO / "bench/gpu/pack_wheels.py")
pack_wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pack_wheels)


def write_wheel(path: Path, files: dict[str, tuple[bytes, int]]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (data, mode) in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)


def test_wheels_come_back_byte_for_byte(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    first = {
        "pkg/__init__.py": (b"x = 1\n", 0o644),
        "pkg-1.0.data/scripts/tool": (b"#!/bin/sh\necho hi\n", 0o755),
        "pkg-1.0.dist-info/RECORD": (b"pkg/__init__.py,,\n", 0o644),
    }
    second = {"other/lib.so": (bytes(range(256)) * 40, 0o755)}
    write_wheel(wheels / "pkg-1.0-py3-none-any.whl", first)
    write_wheel(wheels / "other-2.0-cp312-cp312-manylinux_2_28_x86_64.whl", second)
    archive = tmp_path / "out" / "wheels.tar.xz"
    pack_wheels.pack(wheels, archive)
    rebuilt = pack_wheels.unpack_wheels(archive, tmp_path / "rebuilt")
    assert [p.name for p in rebuilt] == sorted(p.name for p in wheels.glob("*.whl"))
    for wheel, files in (
        ("pkg-1.0-py3-none-any.whl", first),
        ("other-2.0-cp312-cp312-manylinux_2_28_x86_64.whl", second),
    ):
        with zipfile.ZipFile(tmp_path / "rebuilt" / wheel) as zf:
            assert sorted(zf.namelist()) == sorted(files)
            for name, (data, mode) in files.items():
                assert zf.read(name) == data
                assert (zf.getinfo(name).external_attr >> 16) & 0o777 == mode


class FakeDist:
    def __init__(self, requires):
        self.requires = requires


def test_closure_follows_requirements_but_not_into_what_the_target_has():
    installed = {
        "ros-rclpy": FakeDist(["ros-rcl", "numpy", "pywin32; sys_platform == 'win32'"]),
        "ros-rcl": FakeDist(["ros-rcutils", "pytest[extra]; extra == 'test'"]),
        "ros-rcutils": FakeDist(None),
        "numpy": FakeDist(["never-installed"]),  # the target's own numpy brings its own
        "old-only": FakeDist(None),
        "needs-old": FakeDist(["old-only; python_version < '3.12'"]),
    }
    assert pack_wheels.closure(["ros-rclpy"], installed, {"numpy"}, "3.12") == {
        "ros-rclpy",
        "ros-rcl",
        "ros-rcutils",
    }
    assert pack_wheels.closure(["needs-old"], installed, set(), "3.12") == {"needs-old"}
    assert pack_wheels.closure(["needs-old"], installed, set(), "3.11") == {"needs-old", "old-only"}


def test_transformers_and_setuptools_are_packed_even_where_the_image_has_them():
    installed = {
        "ros-rclpy": FakeDist(["numpy"]),
        "colcon-core": FakeDist(["setuptools<80,>=30.3.0", "packaging"]),
        "transformers": FakeDist(["numpy"]),
        "setuptools": FakeDist(None),
        "numpy": FakeDist(None),
        "packaging": FakeDist(None),
        "ros-ament-cmake-cppcheck": FakeDist(None),
    }
    roots = ["ros-rclpy", "colcon-core", "transformers", "ros-ament-cmake-cppcheck"]
    have = {"numpy", "packaging", "setuptools", "transformers"}
    assert pack_wheels.to_pack(roots, installed, have, "3.12") == {
        "ros-rclpy",
        "colcon-core",
        "transformers",
        "setuptools",
    }
