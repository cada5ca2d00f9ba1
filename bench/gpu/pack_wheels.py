"""Pack the wheels a GPU machine without network needs for the ROS benches (bench/gpu/).

A lent GPU machine has its own Python with CUDA torch but no registry and no ROS. This takes the
ROS 2 wheels, colcon (to build molmoact2_msgs there) and the few runtime packages our nodes use
that such an image lacks, resolved from this venv's installed metadata (the versions the suite is
tested with), downloads them for the target interpreter, and packs them into one archive small
enough to travel with the working tree:

    .venv/bin/python bench/gpu/pack_wheels.py --python-version 3.12 \\
        --skip-file bench/gpu/image-packages.txt

Wheels are zip files that barely compress further, but their contents do: the archive holds the
unpacked wheels as tar.xz (about a third of the wheels' size), and ``unpack_wheels`` zips each
back into a wheel on the target. ``--skip-file`` lists packages the target image already has
(any separators), which are not packed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import logging
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canonical

REPO = Path(__file__).resolve().parents[2]
LOG = logging.getLogger("pack_wheels")

# Beyond the ros-* pins of requirements.txt: what the policy, driver and bench processes import
# that a CUDA torch image is not expected to have, and colcon for the interface package build.
EXTRA_ROOTS = ("transformers", "simplejpeg", "transforms3d", "colcon-common-extensions")
# Packed even where the image has them. transformers: the model code is tested with the pinned
# version, and the Molmo2 classes it builds on change between releases. setuptools: colcon-core
# needs < 80 (80 dropped `setup.py develop`'s options: the editable installs failed on the H200
# image's newer one with "command 'develop' has no such option 'script_dir'").
ALWAYS_PACKED = frozenset({"transformers", "setuptools"})
# Linters and test fixtures the ament wheels pull in; a BUILD_TESTING=OFF build never runs them.
NOT_NEEDED = re.compile(r"^ros-(ament-cmake-(cppcheck|cpplint|flake8|pep257|uncrustify)|rmw-test-)")
MANYLINUX = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def requirement_name(requirement: str) -> str:
    return canonical(Requirement(requirement).name)


def roots_from_requirements(path: Path) -> list[str]:
    roots = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("ros-"):
            roots.append(requirement_name(line))
    return roots + [canonical(r) for r in EXTRA_ROOTS]


def closure(
    roots: list[str],
    installed: dict[str, importlib.metadata.Distribution],
    have: set[str],
    python_version: str,
) -> set[str]:
    """Names reachable from ``roots`` through installed requirements whose markers hold on the
    target (Linux, ``python_version``, no extras), not going through what the target already
    ``has`` (its own versions bring their own requirements)."""
    environment = {"python_version": python_version, "extra": ""}
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name in have:
            continue
        if name not in installed:
            raise SystemExit(f"{name} is not installed in this venv: run make setup first")
        seen.add(name)
        for text in installed[name].requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                stack.append(canonical(requirement.name))
    return seen


def to_pack(
    roots: list[str],
    installed: dict[str, importlib.metadata.Distribution],
    have: set[str],
    python_version: str,
) -> set[str]:
    """What the target needs from us: the closure past what it ``has`` (``ALWAYS_PACKED``
    packed anyway), without the linters and fixtures a BUILD_TESTING=OFF build never runs."""
    names = closure(roots, installed, have - ALWAYS_PACKED, python_version)
    return {name for name in names if not NOT_NEEDED.match(name)}


def pinned(names: set[str], installed: dict[str, importlib.metadata.Distribution]) -> list[str]:
    return sorted(f"{name}=={installed[name].version}" for name in names)


def download(requirements: list[str], python_version: str, directory: Path) -> None:
    """Binary wheels for the target; a pure-Python package with no wheel is built here."""
    abi = "cp" + python_version.replace(".", "")
    platforms = [arg for p in [*MANYLINUX, "any"] for arg in ("--platform", p)]
    for requirement in requirements:
        command = [
            sys.executable, "-m", "pip", "download", "-q", "--no-deps",
            "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
            "--abi", abi, "--abi", "abi3", "--abi", "none", *platforms, "-d", str(directory),
            requirement,
        ]  # fmt: skip
        if subprocess.run(command, capture_output=True).returncode == 0:
            continue
        # No binary wheel (empy): build one; only a pure-Python result is usable elsewhere.
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(directory),
             requirement],
            check=True,
        )  # fmt: skip
        built = sorted(directory.glob(f"{requirement.split('==')[0].replace('-', '_')}-*.whl"))
        if not built or not built[-1].name.endswith("-py3-none-any.whl"):
            raise SystemExit(f"{requirement}: no wheel for Python {python_version}")


def pack(wheel_dir: Path, archive: Path) -> None:
    """Each wheel's files under a folder named after the wheel, all in one tar.xz."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for wheel in sorted(wheel_dir.glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    data = zf.read(info)
                    member = tarfile.TarInfo(f"{wheel.name}/{info.filename}")
                    member.size = len(data)
                    # A wheel's scripts keep their exec bit (zip stores it in the high bits).
                    member.mode = (info.external_attr >> 16) & 0o777 or 0o644
                    tar.addfile(member, io.BytesIO(data))


def unpack_wheels(archive: Path, directory: Path) -> list[Path]:
    """Inverse of ``pack``: one .whl per folder of the archive, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    wheels: dict[str, zipfile.ZipFile] = {}
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar:
            if not member.isfile():
                continue
            wheel_name, inner = member.name.split("/", 1)
            if wheel_name not in wheels:
                wheels[wheel_name] = zipfile.ZipFile(directory / wheel_name, "w")
            info = zipfile.ZipInfo(inner)
            info.external_attr = (member.mode & 0o777) << 16
            extracted = tar.extractfile(member)
            assert extracted is not None
            wheels[wheel_name].writestr(info, extracted.read())
    for zf in wheels.values():
        zf.close()
    return sorted(directory / name for name in wheels)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[pack_wheels] %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the target's Python X.Y")
    parser.add_argument("--skip-file", type=Path, help="packages the target already has")
    parser.add_argument("--out", type=Path, default=REPO / ".devwheels" / "wheels.tar.xz")
    parser.add_argument(
        "--unpack", nargs=2, metavar=("ARCHIVE", "DIR"), help="on the target: rebuild the wheels"
    )
    args = parser.parse_args()
    if args.unpack:
        wheels = unpack_wheels(Path(args.unpack[0]), Path(args.unpack[1]))
        LOG.info("%d wheels in %s", len(wheels), args.unpack[1])
        return 0
    installed = {canonical(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    have = set()
    if args.skip_file:
        listed = "\n".join(
            line.split("#", 1)[0] for line in args.skip_file.read_text().splitlines()
        )
        have = {canonical(n) for n in re.split(r"[\s,]+", listed) if n}
    roots = roots_from_requirements(REPO / "requirements.txt")
    requirements = pinned(to_pack(roots, installed, have, args.python_version), installed)
    LOG.info("%d packages for Python %s", len(requirements), args.python_version)
    with tempfile.TemporaryDirectory() as tmp:
        download(requirements, args.python_version, Path(tmp))
        pack(Path(tmp), args.out)
    LOG.info("%s: %.1f MB", args.out, args.out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
