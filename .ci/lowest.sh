#!/usr/bin/env bash
# Lowest-versions check: every direct dependency of pyproject.toml installed at its floor, then a
# fast subset of the tests (a few minutes on 2 cores).
#
#   .ci/lowest.sh                  # python3.11 (the lowest supported Python) if found, else python3
#   PYTHON=python3.12 .ci/lowest.sh
#
# A temporary venv gets the package with the test, cpu and h5 extras through
# `uv pip install --resolution lowest-direct` (uv from PyPI, into a second temporary venv, unless
# `uv` is on PATH): each direct dependency at the lowest version pyproject.toml allows,
# transitive ones at their newest compatible versions (what a user with old pins gets).
# .ci/floors.py then fails if any direct dependency was resolved above its written floor (a floor
# that cannot be installed as written, e.g. one that conflicts with another floor), and the tests
# below run in that environment. Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
EXTRAS=test,cpu,h5
TESTS=(
  tests/test_directions.py tests/test_paths.py tests/test_surface.py tests/test_checkpoints.py
  tests/test_store.py tests/test_data.py tests/test_digits_file.py tests/test_evaluation.py
  tests/test_training.py tests/test_onednn.py tests/test_onednn_fallback.py
  tests/test_li2018_h5.py tests/test_adapters.py tests/test_interactive.py
  tests/test_batchnorm_backward.py
)

if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=$(command -v python3.11 || command -v python3)
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/landscape-jax-lowest.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export UV_CACHE_DIR="${UV_CACHE_DIR:-$TMP/uv-cache}"

UV=$(command -v uv || true)
if [[ -z "$UV" ]]; then
  "$PYTHON" -m venv "$TMP/tools"
  "$TMP/tools/bin/python" -m pip install -q "uv==$UV_VERSION"
  UV="$TMP/tools/bin/uv"
fi

echo "lowest-versions check with $("$PYTHON" --version) and $("$UV" --version)"
"$PYTHON" -m venv "$TMP/floors"
"$UV" pip install -q --python "$TMP/floors/bin/python" --resolution lowest-direct \
  --link-mode=copy ".[$EXTRAS]"
"$TMP/floors/bin/python" .ci/floors.py check --extras="$EXTRAS"

# From the repository root: pytest's pythonpath imports this checkout's landscape_jax, with the
# floor versions of everything else. The oneDNN kernel is built against the floor jax's FFI
# headers in a cache of its own (XDG_CACHE_HOME: tests set and unset LANDSCAPE_JAX_CACHE_DIR).
# LANDSCAPE_JAX_TEST_XLA_OPT=default: this subset compiles at XLA's default optimisation level
# (the main run compiles at level 0 for speed, tests/conftest.py).
LANDSCAPE_JAX_TEST_XLA_OPT=default XDG_CACHE_HOME="$TMP/cache" "$TMP/floors/bin/python" -m pytest -q -n 2 --dist loadgroup \
  -p no:cacheprovider -m "not slow" --basetemp="$TMP/pytest" "${TESTS[@]}"
