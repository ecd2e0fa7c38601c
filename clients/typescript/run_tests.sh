#!/usr/bin/env bash
# End-to-end tests of the TypeScript client against the real server binary.
#
# Installs the locked dependencies (npm ci, only when node_modules is missing or was installed
# from another package-lock.json), generates src/gen with buf + protoc-gen-es (local plugin, no
# network), type-checks with tsc, and runs test/lifecycle.test.ts with Node's test runner.
# It builds nothing: run `cargo build --bin connections` first, or set CONNECTIONS_BIN.
# Extra arguments go to `node --test`, e.g. --test-name-pattern='gRPC-Web'.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
here=$(pwd)

export CONNECTIONS_BIN=${CONNECTIONS_BIN:-$here/../../target/debug/connections}
if [[ ! -x $CONNECTIONS_BIN ]]; then
    echo "run_tests.sh: no connections binary at $CONNECTIONS_BIN" >&2
    echo "run_tests.sh: build it first with 'cargo build --bin connections' in the repository root, or set CONNECTIONS_BIN" >&2
    exit 1
fi
CONNECTIONS_BIN=$(cd "$(dirname "$CONNECTIONS_BIN")" && pwd)/$(basename "$CONNECTIONS_BIN")

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "run_tests.sh: node and npm are required (Node.js 20 or later)" >&2
    exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if (( node_major < 20 )); then
    echo "run_tests.sh: Node.js 20 or later is required, found $(node --version)" >&2
    exit 1
fi

# npm ci when node_modules is missing or was installed from another lockfile. Install scripts are
# not run: buf and esbuild (under tsx) find their platform binaries without them.
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
stamp=node_modules/.installed-from-lock
if [[ ! -f $stamp || $(cat "$stamp") != "$lock_hash" ]]; then
    echo "==> npm ci"
    npm ci --ignore-scripts --no-audit --no-fund
    echo "$lock_hash" >"$stamp"
fi
export PATH=$here/node_modules/.bin:$PATH

echo "==> buf generate (protoc-gen-es $(protoc-gen-es --version | awk '{print $NF}'), buf $(buf --version))"
buf generate
echo "generated $(find src/gen -name '*_pb.ts' | wc -l) files in $here/src/gen"

echo "==> tsc --noEmit (TypeScript $(tsc --version | awk '{print $NF}'))"
tsc --noEmit -p .

echo "==> node --test ($(node --version), binary $CONNECTIONS_BIN)"
# Each test and hook has its own timeout; this bounds the whole run as a last resort.
timeout --kill-after=10 600 node --import tsx --test --test-reporter=tap "$@" test/lifecycle.test.ts
