#!/usr/bin/env bash
# The main job: mqnet-bench, the loopback benchmark harness. With no arguments it runs the default
# matrix (about a minute) and prints a table of mqnet against its peers, measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -p mqnet-bench -- "$@"
