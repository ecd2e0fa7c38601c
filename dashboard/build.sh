#!/usr/bin/env bash
# Builds the dashboard into dist/, which is committed and embedded in the server binary.
#
# Installs the locked dependencies (npm ci, only when node_modules is missing or was installed
# from another package-lock.json), generates src/gen from ../proto with buf + protoc-gen-es (local
# plugin, no network), type-checks, and builds with Vite. Run it after changing anything under
# dashboard/, then commit dist/ with the change. CI runs it and fails if dist/ differs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

bash ../.ci/npm-ci-locked

echo "==> buf generate"
npx --no-install buf generate
echo "==> tsc --noEmit"
npx --no-install tsc --noEmit
echo "==> vite build"
npx --no-install vite build
