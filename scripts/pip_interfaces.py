"""Which stand-in interface packages the pip path has to build (called by scripts/setup.sh).

Some ROS interface packages the suite publishes have no wheel on PyPI (tf2_msgs). For those,
ros2_ws/pip_interfaces/ holds a stand-in with the real definitions. A stand-in is built only
when no real package of that name is importable: a sourced system ROS (PYTHONPATH) or a wheel
always wins, and our own earlier build does not count as "real".

    python scripts/pip_interfaces.py <our colcon install dir>

prints the names to build, one a line, and says on stderr where each skipped one was found.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

# Package -> a module every real build of it has (the generated Python message module).
STAND_INS: dict[str, str] = {"tf2_msgs": "msg/_tf_message.py"}


def find_real_package(name: str, marker: str, own_install: Path, path: list[str]) -> Path | None:
    """Directory of an importable ``name`` outside ``own_install`` that has ``marker``."""
    own = own_install.resolve()
    outside = [p for p in path if p and not _is_within(Path(p), own)]
    spec = importlib.machinery.PathFinder.find_spec(name, outside)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if (Path(location) / marker).is_file():
            return Path(location)
    return None


def packages_to_build(own_install: Path, path: list[str] | None = None) -> list[str]:
    """Stand-ins with no real package importable from ``path`` (default ``sys.path``)."""
    path = list(sys.path if path is None else path)
    needed = []
    for name, marker in STAND_INS.items():
        found = find_real_package(name, marker, own_install, path)
        if found is None:
            needed.append(name)
        else:
            print(f"{name}: using {found}; not building the stand-in", file=sys.stderr)
    return needed


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent)
    except (OSError, ValueError):
        return False
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    for name in packages_to_build(Path(argv[0])):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
