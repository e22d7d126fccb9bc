#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Bounded coverage-guided fuzzing of vpmd's guest-facing parsers (fuzz/, cargo-fuzz
# layout, libFuzzer through libfuzzer-sys):
#   chain_walk       one data-path burst over a fuzzed ring and guest memory
#   vhost_user_msgs  anything a frontend can send on a port's socket, fds included
#
# Each target runs FUZZ_SECONDS (default 60) starting from its committed seeds in
# fuzz/seeds/<target>; new inputs go to a scratch corpus that is thrown away.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
#
# Toolchain: only stable rustc is installed. cargo-fuzz passes -Zsanitizer=address
# for AddressSanitizer; RUSTC_BOOTSTRAP=1 lets stable rustc accept it (the stable
# toolchain ships the ASan runtime). FUZZ_SANITIZER=none builds without a sanitizer
# (coverage only; no -Z flag needed at all).
#
# Usage: scripts/fuzz.sh [target...]     (run longer: FUZZ_SECONDS=3600 scripts/fuzz.sh)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO/fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-60}
SANITIZER=${FUZZ_SANITIZER:-address}
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(chain_walk vhost_user_msgs offload_headers)

if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$REPO/target/fuzz}
for t in "${TARGETS[@]}"; do
  cargo fuzz build -O --sanitizer "$SANITIZER" "$t" 2>&1 | tail -n 3 || {
    echo "fuzz build of $t failed" >&2
    exit 1
  }
done

declare -A MAX_LEN=([chain_walk]=20492 [vhost_user_msgs]=4096)
for t in "${TARGETS[@]}"; do
  corpus=$(mktemp -d "/tmp/vpmd-fuzz-$t.XXXXXX")
  echo "=== fuzzing $t for ${SECONDS_EACH}s"
  # Leak detection off: vhost-user-backend's per-connection threads and a
  # process-wide port outlive single inputs on purpose.
  if ! cargo fuzz run -O --sanitizer "$SANITIZER" "$t" "$corpus" "seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -max_len="${MAX_LEN[$t]:-4096}" \
      -timeout=10 -rss_limit_mb=2048 -detect_leaks=0 -print_final_stats=1 \
      >"$corpus.log" 2>&1; then
    tail -n 60 "$corpus.log" >&2
    echo "fuzz target $t failed; reproducer in fuzz/artifacts/$t/" >&2
    rm -rf "$corpus"
    exit 1
  fi
  grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)|Done [0-9]+ runs" "$corpus.log" || true
  echo "corpus grew to $(ls "$corpus" | wc -l) inputs"
  rm -rf "$corpus" "$corpus.log"
done
echo "fuzzing passed: ${TARGETS[*]}, ${SECONDS_EACH}s each"
