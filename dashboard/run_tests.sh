#!/usr/bin/env bash
# The dashboard in a real browser: Debian's Chromium (installed with apt-get when missing; nothing
# downloads a browser), driven by playwright-core, against the server binary. It builds no server:
# it runs CONNECTIONS_BIN, else the newer of the debug and release builds that exist
# (../target/debug/connections, ../target/release/connections); build one first. Builds the page
# first (build.sh), so the generated code the tests use is current.
# Screenshots: README's go to ../docs/screenshots/ (committed, so every full run regenerates them);
# the others to ../target/dashboard/.
# Extra arguments go to `node --test`, e.g. --test-name-pattern='stale'.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# connections-bin.sh looks for the builds two levels above $here (it expects clients/<name>):
# dashboard/test is two levels below the repository's root.
here=$(pwd)/test
# shellcheck source=../clients/connections-bin.sh
source ../clients/connections-bin.sh
if [[ ! -x $CONNECTIONS_BIN ]]; then
    echo "run_tests.sh: no connections binary at $CONNECTIONS_BIN" >&2
    echo "run_tests.sh: build it first with 'cargo build --bin connections' (or --release) in the repository root, or set CONNECTIONS_BIN" >&2
    exit 1
fi
export CHROMIUM_PATH=${CHROMIUM_PATH:-/usr/bin/chromium}
if [[ ! -x $CHROMIUM_PATH ]]; then
    echo "==> apt-get install chromium"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

bash build.sh
echo "==> node --test ($(node --version), $("$CHROMIUM_PATH" --version)) against $CONNECTIONS_BIN"
exec node --import tsx --test --test-concurrency=1 "$@" test/dashboard.test.ts
