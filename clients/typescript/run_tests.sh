#!/usr/bin/env bash
# End-to-end tests of the TypeScript client against the real server binary.
#
# Installs the locked dependencies (npm ci, only when node_modules is missing or was installed
# from another package-lock.json), generates src/gen with buf + protoc-gen-es (local plugin, no
# network), type-checks with tsc, and runs test/lifecycle.test.ts and test/webhooks.test.ts (end to
# end) and test/resumable-watch.test.ts (scripted streams) with Node's test runner.
# It builds nothing: it runs CONNECTIONS_BIN, else the newer of the debug and release builds
# (target/debug/connections, target/release/connections); build one first.
# Extra arguments go to `node --test`, e.g. --test-name-pattern='gRPC-Web'.
# Exits non-zero on any failure.
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
CONNECTIONS_BIN=$(cd "$(dirname "$CONNECTIONS_BIN")" && pwd)/$(basename "$CONNECTIONS_BIN")

bash ../../.ci/npm-ci-locked
export PATH=$here/node_modules/.bin:$PATH

echo "==> buf generate (protoc-gen-es $(protoc-gen-es --version | awk '{print $NF}'), buf $(buf --version))"
buf generate
echo "generated $(find src/gen -name '*_pb.ts' | wc -l) files in $here/src/gen"

echo "==> tsc --noEmit (TypeScript $(tsc --version | awk '{print $NF}'))"
tsc --noEmit -p .

echo "==> node --test ($(node --version), binary $CONNECTIONS_BIN)"
# Each test and hook has its own timeout; this bounds the whole run as a last resort.
timeout --kill-after=10 600 node --import tsx --test --test-reporter=tap "$@" test/lifecycle.test.ts test/webhooks.test.ts test/resumable-watch.test.ts
