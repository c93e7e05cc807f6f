#!/usr/bin/env bash
# Create (or refresh) .venv with Python >= 3.12 and bayeslmm installed in editable mode.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again: it reinstalls only when
# pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

find_python() {
    local candidate
    # 3.12 first: the version the project is developed and tested with
    for candidate in "${PYTHON:-}" python3.12 python3.13 python3 \
        /root/.pyenv/versions/3.12*/bin/python3 /root/.pyenv/versions/3.13*/bin/python3 \
        /usr/local/bin/python3.12 /usr/local/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.13; do
        [ -n "$candidate" ] || continue
        # pyenv shims exist for versions that are installed but not selected: run them to be sure
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
            command -v "$candidate" 2>/dev/null || echo "$candidate"
            return 0
        fi
    done
    return 1
}

stamp=.venv/.bayeslmm-installed
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    python=$(find_python) || { echo "bayeslmm needs Python >= 3.12; none found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
    echo "setting up .venv with $python ($("$python" --version))" >&2
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    # pip's and setuptools' notes go to a log, shown only if the installation fails
    log=.venv/install.log
    .venv/bin/python -m pip install --quiet --upgrade pip > "$log" 2>&1 || { cat "$log" >&2; exit 1; }
    .venv/bin/python -m pip install --quiet -e ".[test]" >> "$log" 2>&1 || { cat "$log" >&2; exit 1; }
    .venv/bin/python -c "import bayeslmm" || { echo "installation of bayeslmm failed" >&2; exit 1; }
    # compile the samplers' numba kernels now (about 20 s), so that no fit waits for it
    .venv/bin/python -m bayeslmm compile >&2 || { echo "compiling bayeslmm's kernels failed" >&2; exit 1; }
    echo "$wanted" > "$stamp"
fi
