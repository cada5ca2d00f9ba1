#!/usr/bin/env bash
# One idempotent setup step: .venv with pinned deps (ROS 2 Kilted wheels, CPU torch, ...),
# the CMake path rewrites the ROS wheels need, a colcon build of ros2_ws/, and the project's
# Python packages installed editable. Each stage is skipped when its inputs did not change,
# so a re-run with nothing changed takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMPS="$VENV/.molmoact2-stamps"

log() { printf '[setup] %s\n' "$*"; }
# pip prints a warning per package for index mirrors that do not exist on this machine; keep
# the log readable without hiding real errors (pip's exit status is still checked).
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | grep -v -e 'is ignored: it is neither a file nor a directory' -e '^\s*$' || true; return "${PIPESTATUS[0]}"; }
stamp_of() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }
stage_done() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
mark_done() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi

req_stamp=$(stamp_of "$ROOT/requirements.txt")
# MOLMOACT2_SKIP_REQUIREMENTS=1: the venv's packages come from elsewhere, e.g. a GPU machine's
# image with its own CUDA torch and wheels carried to it (bench/gpu/run_benches.sh); the
# pinned CPU torch must not replace them, and such a machine reaches no package index.
if [[ "${MOLMOACT2_SKIP_REQUIREMENTS:-0}" == 1 ]]; then
  log "MOLMOACT2_SKIP_REQUIREMENTS=1: not installing requirements.txt"
elif ! stage_done requirements "$req_stamp"; then
  log "installing pinned dependencies (first run: about a minute)"
  quiet_pip install -q --upgrade pip setuptools wheel
  quiet_pip install -q -r "$ROOT/requirements.txt"
  mark_done requirements "$req_stamp"
fi

# The ROS wheels' CMake configs hard-code the wheel builder's Python paths.
"$VENV/bin/python" "$ROOT/scripts/fix_ros_cmake_paths.py" "$VENV"

msgs_stamp=$(stamp_of "$ROOT"/src/molmoact2_msgs/{package.xml,CMakeLists.txt} "$ROOT"/src/molmoact2_msgs/msg/* "$ROOT"/src/molmoact2_msgs/srv/* "$ROOT"/src/molmoact2_msgs/action/* "$ROOT/requirements.txt")
if ! stage_done colcon "$msgs_stamp" || [[ ! -d "$ROOT/ros2_ws/install/molmoact2_msgs" ]]; then
  log "colcon build of ros2_ws (molmoact2_msgs)"
  (
    cd "$ROOT/ros2_ws"
    export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
    export CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
    # Only the interface package needs a compiled build here; the Python packages are
    # installed editable below. Users with a system ROS build every package with colcon.
    "$VENV/bin/colcon" --log-base log build --packages-select molmoact2_msgs \
      --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" \
      --event-handlers console_direct- > "$ROOT/ros2_ws/colcon-build.log" 2>&1 \
      || { tail -n 60 "$ROOT/ros2_ws/colcon-build.log"; exit 1; }
  )
  mark_done colcon "$msgs_stamp"
fi

# Interface packages with no wheel (tf2_msgs): build our stand-in only when no real one is
# importable (a sourced system ROS wins); drop a stale stand-in when a real one appeared.
mapfile -t STAND_INS < <("$VENV/bin/python" "$ROOT/scripts/pip_interfaces.py" "$ROOT/ros2_ws/install")
for dir in "$ROOT"/ros2_ws/pip_interfaces/*/; do
  pkg=$(basename "$dir")
  if [[ " ${STAND_INS[*]} " != *" $pkg "* ]]; then
    rm -rf "$ROOT/ros2_ws/install/$pkg" "$ROOT/ros2_ws/build/$pkg" "$STAMPS/standin-$pkg"
  fi
done
for pkg in "${STAND_INS[@]}"; do
  src="$ROOT/ros2_ws/pip_interfaces/$pkg"
  pkg_stamp_in=$(stamp_of "$src"/package.xml "$src"/CMakeLists.txt "$src"/msg/* "$ROOT/requirements.txt")
  if ! stage_done "standin-$pkg" "$pkg_stamp_in" || [[ ! -d "$ROOT/ros2_ws/install/$pkg" ]]; then
    log "colcon build of the $pkg stand-in (no $pkg package is importable)"
    (
      cd "$ROOT/ros2_ws"
      export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
      export CMAKE_PREFIX_PATH="$VENV" AMENT_PREFIX_PATH="$VENV"
      # --paths: pip_interfaces/ has a COLCON_IGNORE so that no crawl of ros2_ws finds it.
      "$VENV/bin/colcon" --log-base log build --paths "pip_interfaces/$pkg" \
        --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python" \
        --event-handlers console_direct- > "$ROOT/ros2_ws/colcon-build-$pkg.log" 2>&1 \
        || { tail -n 60 "$ROOT/ros2_ws/colcon-build-$pkg.log"; exit 1; }
    )
    mark_done "standin-$pkg" "$pkg_stamp_in"
  fi
done

# Make the built messages importable from the venv without sourcing anything. The ROS wheels'
# bootstrapper (ros_wheels_bootstrapper.pth) re-executes Python once with LD_LIBRARY_PATH set;
# this .pth sorts before it and adds our install's lib dir, so the re-exec picks it up too.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
INSTALL="$ROOT/ros2_ws/install"
: > "$SITE/molmoact2_ws.pth"
for pkg in molmoact2_msgs "${STAND_INS[@]}"; do
  cat >> "$SITE/molmoact2_ws.pth" <<PTH
$INSTALL/$pkg/lib/python3.11/site-packages
import os; _l = "$INSTALL/$pkg/lib"; _p = os.environ.get("LD_LIBRARY_PATH", ""); os.environ["LD_LIBRARY_PATH"] = _p if _l in _p.split(":") else ":".join(x for x in (_l, _p) if x); _a = os.environ.get("AMENT_PREFIX_PATH", ""); os.environ["AMENT_PREFIX_PATH"] = _a if "$INSTALL/$pkg" in _a.split(":") else ":".join(x for x in ("$INSTALL/$pkg", "$VENV", _a) if x)
PTH
done
# python version in the path above must match the venv's
sed -i "s#lib/python3.11/#lib/$("$VENV/bin/python" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')/#" "$SITE/molmoact2_ws.pth"

pkg_stamp=$(stamp_of "$ROOT"/src/*/setup.py "$ROOT"/src/*/setup.cfg "$ROOT/requirements.txt")
if ! stage_done packages "$pkg_stamp"; then
  log "installing the project's Python packages (editable)"
  # setuptools warns about editable installs at length; keep its output for failures only.
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation \
    -e "$ROOT/src/molmoact2_common" -e "$ROOT/src/molmoact2_policy" -e "$ROOT/src/hw_drivers" \
    -e "$ROOT/src/molmoact2" \
    > "$VENV/editable-install.log" 2>&1 || { tail -n 40 "$VENV/editable-install.log"; exit 1; }
  mark_done packages "$pkg_stamp"
fi

"$VENV/bin/python" -c "from molmoact2_msgs.msg import ActionChunk, ChunkExecution, DepthTokens, PolicyStatus; from molmoact2_msgs.srv import SetInstruction; from tf2_msgs.msg import TFMessage" \
  || { log "the built messages do not import; see ros2_ws/colcon-build.log"; exit 1; }
log "ready: source scripts/env.sh (or use .venv/bin/python)"
