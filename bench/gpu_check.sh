#!/usr/bin/env bash
# Check tokengym on a GPU machine. Run from anywhere: ./bench/gpu_check.sh
#
# One line per check, "PASS name seconds" or "FAIL name seconds"; the exit status is 1 when any check
# failed. Each check's output goes to $GPU_CHECK_OUT/<name>.log (default: $OUT when set, which a
# device runner copies back, else /tmp/gpu_check), and so do the benchmark's results.
#
#   SKIP_INSTALL=1      skip ./install.sh --dev (the environment is already installed)
#   PYTEST_ARGS="-x"    extra arguments for the full test suite
#   PYTHON=python3.11   the interpreter
#
# This is for a person (or a device runner) to run on a GPU machine; no test runs it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${GPU_CHECK_OUT:-${OUT:-/tmp/gpu_check}}
mkdir -p "$LOGS"
failed=0

check() {  # check NAME COMMAND...: run COMMAND, its output in $LOGS/NAME.log, one line of verdict
  local name=$1 t0 status
  shift
  t0=$(date +%s)
  if "$@" >"$LOGS/$name.log" 2>&1; then status=PASS; else status=FAIL; failed=$((failed + 1)); fi
  echo "$status $name $(($(date +%s) - t0))"
}

if [ "${SKIP_INSTALL:-0}" != "1" ]; then
  check install ./install.sh --dev
fi
# Everything after this needs torch to see the GPU: a CPU build of torch would pass the tests on the CPU.
check cuda_visible "$PY" -c "import sys, torch; print(torch.__version__, torch.version.cuda); \
sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU (a CPU build of torch?)'); "
# The device and precision tests first: quick. The suite pins device="auto" to the CPU in fp32
# (tests/conftest.py); here the pins say the GPU, so 'auto' runs them on CUDA (bf16 autocast where the
# GPU supports it).
check device_tests env TOKENGYM_DEVICE=cuda TOKENGYM_DTYPE=auto "$PY" -m pytest -q tests/test_device.py tests/test_bf16.py
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
check test_suite "$PY" -m pytest -q ${PYTEST_ARGS:-}
# A short PPO run of SmolLM2 on the GPU (dtype auto: bf16 autocast on a GPU that supports it). VADER pays
# the reward so that the run does not first build the task's learned reward model (minutes, once).
check train_smollm2_cuda "$PY" -m tokengym train --iterations 3 --reward vader --set ppo.device=cuda \
  --set eval_episodes=16 --output-dir /tmp/gpu_run --overwrite --no-progress
check train_report_cuda "$PY" -c "import json; h = json.load(open('/tmp/gpu_run/report.json'))['hardware']; \
print(h); assert h['device'].startswith('cuda') and h.get('gpu'), h"
# The rollout benchmark on the GPU, fp32 and (where supported) bf16; results next to the logs.
check rollout_bench_cuda "$PY" bench/rollout.py --device cuda --repeats 3 --results-dir "$LOGS/bench"

echo "$failed check(s) failed; logs in $LOGS"
[ "$failed" -eq 0 ]
