"""Rewrite the wheel builder's Python paths baked into the ROS wheels' CMake configs.

The ros-* wheels are built in a manylinux container, and several of their CMake config files
name that container's Python include directory and numpy include directory. colcon builds of
rosidl packages fail until these point at the venv's real paths. Idempotent: a file already
rewritten contains none of the builder paths and is left untouched.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

BUILDER_PYTHON_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+t?/include/python3\.\d+t?")
BUILDER_NUMPY_INCLUDE = re.compile(
    r"/opt/python/cp3\d+-cp3\d+t?/lib/python3\.\d+t?/site-packages/numpy/(?:_core|core)/include"
)


def rewrite(text: str) -> str:
    """Return the text with the builder's include paths replaced by this interpreter's."""
    text = BUILDER_NUMPY_INCLUDE.sub(numpy.get_include(), text)
    return BUILDER_PYTHON_INCLUDE.sub(sysconfig.get_paths()["include"], text)


def main(venv: str) -> int:
    changed = 0
    for path in Path(venv, "share").rglob("*.cmake"):
        text = path.read_text(errors="surrogateescape")
        if "/opt/python/" not in text:
            continue
        new = rewrite(text)
        if new != text:
            path.write_text(new, errors="surrogateescape")
            changed += 1
    if changed:
        print(f"[setup] rewrote builder paths in {changed} CMake files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
