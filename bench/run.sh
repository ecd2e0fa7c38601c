#!/usr/bin/env bash
# Builds the server and the benchmark with optimizations, then runs the
# benchmark; arguments are passed on (see `bench/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p connections -p bench
exec target/release/bench "$@"
