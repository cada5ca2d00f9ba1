#!/usr/bin/env bash
# The project's test command (README, CI): lint, then the whole pytest suite.
# Fails on any failure, and also when pytest collected no test at all.
#
# With no arguments the suite runs in two parts. The unit tests first, on every core
# (pytest-xdist): they start no ROS graph and measure no timing, so they can share the CPUs.
# Then the ROS and system tests, one at a time: they run real node graphs against the clock
# (a 250 Hz driver, a 30 Hz camera), and a neighbour test loading the CPUs would change what
# they see. MOLMOACT2_TEST_WORKERS sets the unit tests' workers (default: one per core).
# With arguments, they go to one plain pytest run (`scripts/run_tests.sh tests/unit/test_x.py`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
.venv/bin/ruff check .

run_pytest() {
  set +e
  .venv/bin/python -m pytest "$@"
  local rc=$?
  set -e
  if [[ $rc -eq 5 ]]; then
    echo "pytest ran no tests ($*): failing" >&2
    return 1
  fi
  return $rc
}

if [[ $# -gt 0 ]]; then
  run_pytest "$@"
  exit $?
fi

status=0
# The sim launches of the ROS and system tests use each robot's demo checkpoint, made on first
# use: about a minute of CPU-bound training per robot, which the serial part would spend on
# one core. Made here beside the unit tests instead (one thread each, as the tests' launches
# would), in the same cache the launches read (XDG_CACHE_HOME; CI points it into the clone).
demo_log="$(mktemp)"
(
  for robot in yam droid so101; do  # the robots test_tf_in_sim and test_bringup launch
    OMP_NUM_THREADS=1 .venv/bin/python -m molmoact2.demo_checkpoint "$robot" > /dev/null || exit 1
  done
) 2> "$demo_log" &
demo_pid=$!
run_pytest -n "${MOLMOACT2_TEST_WORKERS:-auto}" tests/unit || status=1
if ! wait "$demo_pid"; then
  cat "$demo_log" >&2
  echo "making the demo checkpoints failed" >&2
  status=1
fi
rm -f "$demo_log"
run_pytest tests/ros tests/system || status=1
exit $status
