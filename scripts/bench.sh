#!/usr/bin/env bash
# The main job: mqnet-bench, the loopback benchmark harness. With no arguments it runs the default
# matrix and prints a table of mqnet against its peers, measured in the same run: the echo rows
# (against tokio) and a produce row (mqnet's Kafka producer against librdkafka's, on an in-process
# librdkafka mock cluster). Installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# librdkafka (the producer peer and its mock cluster, feature `rdkafka-peer`, on by default).
if ! dpkg -s librdkafka-dev >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq librdkafka-dev pkg-config
fi

# Both binaries: mqnet-bench runs the produce rows in mqnet-bench-rdkafka, built beside it.
cargo build --release -p mqnet-bench --bins
exec cargo run --release -p mqnet-bench --bin mqnet-bench -- "$@"
