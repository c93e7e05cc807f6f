#!/usr/bin/env bash
# Set up everything, then fit lme4's sleepstudy model and print its summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python examples/quickstart.py "$@"
