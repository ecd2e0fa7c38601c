#!/usr/bin/env bash
# End-to-end tests of the Python client against the real server binary.
#
# Creates .venv (once), installs the pinned requirements, generates the stubs into gen/ and runs
# pytest. It builds nothing: it runs CONNECTIONS_BIN, else the newer of the debug and release builds
# (target/debug/connections, target/release/connections); build one first.
# Exits non-zero on any failure, including when pytest collects no test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
here=$(pwd)

# shellcheck source=../connections-bin.sh
source "$here/../connections-bin.sh"
if [[ ! -x $CONNECTIONS_BIN ]]; then
    echo "run_tests.sh: no connections binary at $CONNECTIONS_BIN" >&2
    echo "run_tests.sh: build it first with 'cargo build --bin connections' (or --release) in the repository root, or set CONNECTIONS_BIN" >&2
    exit 1
fi

venv=$here/.venv
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "==> creating $venv"
    rm -rf "$venv"
    "${PYTHON3:-python3}" -m venv "$venv"
    # The pip that ships with the interpreter can be old; use a known one.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check pip==26.3
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install -q -r requirements.txt

echo "==> generating stubs"
PYTHON=$venv/bin/python bash ./generate.sh

echo "==> pytest"
status=0
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "run_tests.sh: pytest collected no tests" >&2
fi
exit "$status"
