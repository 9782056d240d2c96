#!/usr/bin/env bash
# The test command of the README: installs what is missing, builds, then runs every test
# (GoogleTest unit tests and the Python reference tests against transformers) through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)" "$@"
