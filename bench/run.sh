#!/usr/bin/env bash
# Builds the server and the benchmark with optimizations, then runs the
# benchmark; arguments are passed on (see `bench/run.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then
        echo "bench/run.sh [COMMAND] [OPTIONS]: builds the server and the benchmark with optimizations"
        echo "(cargo build --release -p connections -p bench), then runs target/release/bench with the"
        echo "arguments given; BENCHMARKS.md explains the commands and what they report."
        echo
        if [[ -x target/release/bench ]]; then
            exec target/release/bench "$@"
        fi
        echo "The benchmark's own options are listed once it is built: run bench/run.sh --help again then."
        exit 0
    fi
done

cargo build --release -p connections -p bench
exec target/release/bench "$@"
