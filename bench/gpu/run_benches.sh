#!/usr/bin/env bash
# The policy node and driver benches on a lent GPU machine with no network (issue #21's figures).
#
# The machine brings its own Python with CUDA torch and nothing of ROS. Here, once:
#     .venv/bin/python bench/gpu/pack_wheels.py --python-version 3.12 \
#         --skip-file bench/gpu/image-packages.txt          # -> .devwheels/wheels.tar.xz
# There (the repo's root, .devwheels carried along):
#     bash bench/gpu/run_benches.sh
# It makes .venv on the image's interpreter, with the image's packages visible through a .pth
# (its CUDA torch stays), installs the carried wheels, runs scripts/setup.sh without
# requirements.txt (colcon builds molmoact2_msgs for this Python), then each bench under its own
# time limit, so that one hanging bench still leaves the others' figures. Logs go to $OUT.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/out/gpu}"
mkdir -p "$OUT"
IMAGE_PY="${IMAGE_PYTHON:-python3}"
ARCHIVE="${WHEELS_ARCHIVE:-$ROOT/.devwheels/wheels.tar.xz}"
BENCHES="${BENCHES:-zero tiny_cpu tiny_cpu_default tiny_cuda tiny_cuda_eager launch_bound executor}"
FRAMES="${FRAMES:-16}"  # observations per tiny-model bench
STREAM_SECONDS="${STREAM_SECONDS:-5}"  # the tiny-model benches' 30 Hz camera stream after them

exec > >(tee -a "$OUT/run.log") 2>&1
step() { echo "=== $(date -u +%T) $*"; }

step "machine"
nproc
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader || true
"$IMAGE_PY" - <<'PY'
import os, sys, sysconfig, torch
include = sysconfig.get_paths()["include"]
print(sys.version.split()[0], sys.executable, "base", sys._base_executable)
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
print("Python.h", os.path.exists(os.path.join(include, "Python.h")), include)
print("LIBDIR", sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY"))
PY
command -v cmake c++ gcc || true
# The policy-node bench keeps raw frames in Fast DDS shared memory (its large segment); with no
# usable /dev/shm it would hear nothing, so it keeps Fast DDS's default transports instead.
DDS_ARGS=()
if ! { [[ -d /dev/shm && -w /dev/shm ]] && df -h /dev/shm; }; then
  echo "no writable /dev/shm: the policy node benches use --default-dds"
  DDS_ARGS=(--default-dds)
fi

# Only a .venv this script made is installed into: the wheels are for the GPU image's Python,
# and the development venv (pinned CPU torch, Python 3.11) must not get them.
if [[ -x .venv/bin/python ]] && ! compgen -G ".venv/lib/python3*/site-packages/00-image-site.pth" >/dev/null; then
  echo ".venv was not made by this script: run it in a fresh checkout on the GPU machine" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  step "venv on the image's interpreter"
  base=$("$IMAGE_PY" -c 'import sys; print(sys._base_executable)')
  "$base" -m venv --without-pip .venv || exit 1
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # The image's site directories after ours: its torch, numpy and pip are used as they are, and
  # addsitedir also runs their .pth files; what we install into .venv comes first.
  "$IMAGE_PY" -c 'import site, sys
dirs = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))' > "$site/00-image-site.pth"
  cat "$site/00-image-site.pth"
fi

step "carried wheels"
rm -rf /tmp/molmoact2-wheels
.venv/bin/python bench/gpu/pack_wheels.py --unpack "$ARCHIVE" /tmp/molmoact2-wheels || exit 1
.venv/bin/python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  /tmp/molmoact2-wheels/*.whl || exit 1

step "setup (interface packages)"
# The benches import our packages from src/, so they run even where setup.sh's editable installs
# fail (a setuptools of 80 or later refuses setup.cfg's ament [develop] section; the archive
# carries the one colcon-core accepts).
export PYTHONPATH="$ROOT/src/molmoact2_common:$ROOT/src/molmoact2_policy:$ROOT/src/hw_drivers:$ROOT/src/molmoact2"
MOLMOACT2_SKIP_REQUIREMENTS=1 bash scripts/setup.sh || {
  echo "setup.sh failed (above, and the end of the colcon log below); going on if all imports"
  tail -n 30 ros2_ws/colcon-build.log
}
.venv/bin/python -c 'import torch, transformers, rclpy, molmoact2_policy.policy_node
import hw_drivers.driver_node
from molmoact2_msgs.msg import ActionChunk
print("torch", torch.__version__, "transformers", transformers.__version__,
      "cuda", torch.cuda.is_available())' || exit 1

run_bench() {  # name, time limit [s], command...
  local name=$1 limit=$2
  shift 2
  step "bench $name: $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "exit $?"
  cat "$OUT/$name.log"
}
export PYTHONUNBUFFERED=1
for bench in $BENCHES; do
  case $bench in
    zero) run_bench zero 120 .venv/bin/python bench/policy_node.py --policy zero "${DDS_ARGS[@]}" ;;
    tiny_cpu) run_bench tiny_cpu 120 .venv/bin/python bench/policy_node.py --preset tiny \
      --frames "$FRAMES" --stream-seconds "$STREAM_SECONDS" --no-conversion-cost "${DDS_ARGS[@]}" ;;
    # glibc's malloc defaults in node and bench, as before molmoact2_common.allocator
    tiny_cpu_default) run_bench tiny_cpu_default 120 .venv/bin/python bench/policy_node.py \
      --preset tiny --frames "$FRAMES" --stream-seconds "$STREAM_SECONDS" --allocator default \
      --no-conversion-cost "${DDS_ARGS[@]}" ;;
    tiny_cpu_single) run_bench tiny_cpu_single 120 .venv/bin/python bench/policy_node.py \
      --preset tiny --frames "$FRAMES" --stream-seconds "$STREAM_SECONDS" --executor single \
      --no-conversion-cost "${DDS_ARGS[@]}" ;;
    tiny_cuda) run_bench tiny_cuda 150 .venv/bin/python bench/policy_node.py --preset tiny \
      --frames "$FRAMES" --stream-seconds "$STREAM_SECONDS" --device cuda --cuda-graph \
      --no-conversion-cost "${DDS_ARGS[@]}" ;;
    tiny_cuda_eager) run_bench tiny_cuda_eager 120 .venv/bin/python bench/policy_node.py \
      --preset tiny --frames "$FRAMES" --stream-seconds "$STREAM_SECONDS" --device cuda \
      --no-conversion-cost "${DDS_ARGS[@]}" ;;
    # the node's other threads against a launch-bound model's inference thread, on the CPU
    launch_bound) run_bench launch_bound 120 .venv/bin/python bench/policy_node.py \
      --policy launch-bound --frames "$((FRAMES * 2))" --stream-seconds "$STREAM_SECONDS" \
      --no-conversion-cost "${DDS_ARGS[@]}" ;;
    executor) run_bench executor 90 .venv/bin/python bench/executor.py ;;
    *) echo "unknown bench $bench" ;;
  esac
done
step "done"
