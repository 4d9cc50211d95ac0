#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test (unit, integration, doc), and a short bounded
# fuzz run of each fuzz target. Installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"

step() { printf '\n== %s\n' "$*"; }

step "tools"
# librdkafka (its mock cluster and consumer) for the producer's interop tests.
if ! dpkg -s librdkafka-dev >/dev/null 2>&1 || ! command -v pkg-config >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq librdkafka-dev pkg-config
fi
# kcat: the broker's interop tests read back with it (check.crcs=true).
if ! command -v kcat >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kcat
fi
# procps: the replication tests stop, resume and kill broker processes with /bin/kill.
if ! command -v kill >/dev/null 2>&1 || [ ! -x /bin/kill ]; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq procps
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, integration, doc)"
cargo test --workspace
cargo test --features metrics-facade --test metrics_facade

step "fuzz (${FUZZ_SECONDS}s per target, stable, no sanitizer)"
cd fuzz
for target in $(cargo fuzz list); do
  cargo fuzz run "$target" --sanitizer none -- -max_total_time="$FUZZ_SECONDS"
done
