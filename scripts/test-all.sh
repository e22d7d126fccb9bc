#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Runs every vpmd test, as CI does (.ci/run runs exactly this script).
#
#   1. installs what the tests need from Debian (QEMU, a guest kernel, busybox,
#      DPDK, ...; idempotent, needs root and apt)
#   2. checks formatting, clippy (-D warnings), the declared rust-version
#      (scripts/check-msrv.sh) and dependencies' licences, bans and sources
#      (cargo deny; installed with `cargo install` if missing)
#   3. builds the workspace (release)
#   4. cargo test: unit tests, ring tests on mock queues, property tests, the
#      cloud-hypervisor-shaped frontend against a running vpmd, the hostile-frontend
#      suite (hostile/tests), the AF_XDP/XDP tests in network namespaces
#   5. bounded fuzzing of the descriptor-chain and vhost-user targets (scripts/fuzz.sh)
#   6. the system tests in tests/system/ (real QEMU guests, DPDK's virtio-user)
#
# Usage: scripts/test-all.sh            (as root, from anywhere)
# Environment: SKIP_LINT=1 skips step 2; FILTER=NAME runs only matching system tests.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
start=$SECONDS
step() { echo; echo "=== [$((SECONDS - start))s] $*"; }

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
if [[ $(id -u) -ne 0 ]]; then
  echo "scripts/test-all.sh: run as root (apt-get, network namespaces, BPF, hugepages)" >&2
  exit 1
fi

step "installing test dependencies"
scripts/install-deps.sh

if [[ ${SKIP_LINT:-0} != 1 ]]; then
  step "cargo fmt --check"
  cargo fmt --all --check
  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --release -- -D warnings
  step "rust-version and cargo deny (licences, bans, sources)"
  scripts/check-msrv.sh
  scripts/check-spdx.sh
  if ! command -v cargo-deny >/dev/null; then
    echo "installing cargo-deny"
    cargo install cargo-deny --locked
  fi
  # The advisories check needs the RustSec database, which cannot be fetched here.
  cargo deny --offline check licenses bans sources
fi

step "cargo build --release"
cargo build --workspace --release

step "cargo test"
# One test binary at a time: tests that start vpmd busy-poll a core, and two of
# them at once on a two-core machine would starve each other.
cargo test --workspace --release -- --test-threads=1

step "fuzzing (bounded: FUZZ_SECONDS per target, default 60)"
scripts/fuzz.sh

step "system tests"
SKIP_BUILD=1 scripts/run-system-tests.sh ${FILTER:-}

step "all tests passed in $((SECONDS - start))s"
