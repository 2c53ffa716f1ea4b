#!/usr/bin/env bash
# One prepared accelerator check, all inside 8 minutes (480 s; ACCEL_LIMIT_S overrides):
#   1. installs the checkout without touching the network (pip install -e . --no-deps
#      --no-build-isolation: JAX and the rest must be preinstalled);
#   2. runs the accelerator-relevant tests on the GPU (JAX_PLATFORMS=cuda): surface, Hessian
#      (float32 precision of the products against dense Hessians), curves, sharding; the
#      multidevice tests need 8 devices and are deselected, and so are the slow ones;
#   3. runs benchmarks/bench_accelerator.py (W1 at 51 x 51 with 10,000 images, vmap over points
#      with the automatic chunk size, and PyTorch's per-point loop on cuda), which appends one block
#      to benchmarks/RESULTS.md.
# Usage: bash benchmarks/accelerator.sh [--dry-run]
#   --dry-run: for the CPU: installs nothing, only collects the tests, runs the benchmark at shrunk
#   sizes and does not record it (tests/test_benchmarks_smoke.py runs this).
# PYTHON selects the interpreter (default: python3). Exit code: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY="${PYTHON:-python3}"
LIMIT="${ACCEL_LIMIT_S:-480}"
START=$SECONDS
status=0

left() { echo $((LIMIT - (SECONDS - START))); }
step() { echo; echo "== $* ($(left) s left)"; }

step "environment"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: not available"

if [[ $DRY == 1 ]]; then
  step "install (dry run: skipped; would run: $PY -m pip install -e . --no-deps --no-build-isolation)"
  PLATFORM="${JAX_PLATFORMS:-cpu}"
else
  step "install (no network)"
  "$PY" -m pip install -e . --no-deps --no-build-isolation -q --no-index || status=1
  PLATFORM="${JAX_PLATFORMS:-cuda}"
fi

TESTS=(tests/test_surface.py tests/test_hessian.py tests/test_curves.py tests/test_sharding.py)
if "$PY" -c "import pytest" 2>/dev/null; then
  if [[ $DRY == 1 ]]; then
    step "tests (dry run: collected only)"
    JAX_PLATFORMS="$PLATFORM" timeout 120 "$PY" -m pytest "${TESTS[@]}" -q --collect-only \
      -m "not multidevice and not slow" -p no:cacheprovider | tail -n 3 || status=1
  else
    step "tests on $PLATFORM"
    JAX_PLATFORMS="$PLATFORM" timeout 200 "$PY" -m pytest "${TESTS[@]}" -q \
      -m "not multidevice and not slow" -p no:cacheprovider || status=1
  fi
else
  step "tests: pytest is not installed here; skipped"
  status=1
fi

REMAIN=$(left)
if (( REMAIN < 60 )); then
  echo "only ${REMAIN} s left: bench_accelerator.py not started"
  exit 1
fi
if [[ $DRY == 1 ]]; then
  step "bench_accelerator.py --dry-run"
  JAX_PLATFORMS="$PLATFORM" timeout $((REMAIN - 5)) "$PY" benchmarks/bench_accelerator.py \
    --dry-run || status=1
else
  step "bench_accelerator.py"
  JAX_PLATFORMS="$PLATFORM" timeout $((REMAIN - 5)) "$PY" benchmarks/bench_accelerator.py \
    || status=1
fi
echo
echo "== done in $((SECONDS - START)) s, status $status"
exit $status
