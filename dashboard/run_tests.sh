#!/usr/bin/env bash
# The dashboard in a real browser: Debian's Chromium (installed with apt-get when missing; nothing
# downloads a browser), driven by playwright-core, against the server binary (CONNECTIONS_BIN, or
# ../target/debug/connections; it is not built here). Builds the page first (build.sh), so the
# generated code the tests use is current. Screenshots go to ../target/dashboard/.
# Extra arguments go to `node --test`, e.g. --test-name-pattern='stale'.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

export CONNECTIONS_BIN=${CONNECTIONS_BIN:-$(pwd)/../target/debug/connections}
if [[ ! -x $CONNECTIONS_BIN ]]; then
    echo "run_tests.sh: no connections binary at $CONNECTIONS_BIN; run 'cargo build --bin connections' first" >&2
    exit 1
fi
export CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}
if [[ ! -x $CHROMIUM_PATH ]]; then
    echo "==> apt-get install chromium"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

bash build.sh
echo "==> node --test ($(node --version), $("$CHROMIUM_PATH" --version))"
exec node --import tsx --test --test-concurrency=1 "$@" test/dashboard.test.ts
