#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Runs every system test (tests/system/*.sh except lib.sh), each as its own
# bash process with a time limit, prints PASS/FAIL per test and ends with the
# line "N passed, N failed". Exit status 1 if any test failed.
#
# Usage: scripts/run-system-tests.sh [TEST_NAME_FILTER]
# Environment: VPMD (binary under test; default target/release/vpmd, built
# with `cargo build --release` unless SKIP_BUILD=1 or VPMD is set),
# TEST_TIMEOUT (seconds per test, default 300; a test's own "# test-timeout: S"
# line raises it for that test), KEEP_WORK=1 (keep work dirs).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
FILTER=${1:-}
cd "$REPO"

# install-deps.sh needs root (apt); without root, assume the packages are there.
if [[ $(id -u) -eq 0 ]]; then
  scripts/install-deps.sh >/dev/null
fi
if [[ -z ${VPMD:-} && ${SKIP_BUILD:-0} != 1 ]]; then
  cargo build --release --quiet || { echo "cargo build --release failed"; exit 1; }
fi
# Build the guest once up front so the first test's time limit is not spent on it.
scripts/guest/build-initramfs.sh "${GUEST_DIR:-$REPO/target/guest}"

passed=0 failed=0 failed_names=()
for t in tests/system/*.sh; do
  name=$(basename "$t" .sh)
  [[ $name == lib ]] && continue                    # helpers, not a test
  [[ -n $FILTER && $name != *"$FILTER"* ]] && continue
  # A test that is not yet reliable here says why in a line "# test-manual: WHY";
  # it runs only when named (scripts/run-system-tests.sh NAME), and says so.
  manual=$(sed -n 's/^# test-manual: //p' "$t" | head -n 1)
  if [[ -n $manual && $FILTER != "$name" ]]; then
    echo "SKIP $name (manual: $manual)"
    continue
  fi
  echo "=== $name"
  start=$SECONDS
  rc=0
  # --kill-after: if the test ignores SIGTERM, SIGKILL it; its EXIT trap
  # normally cleans up its QEMUs and vpmd on SIGTERM.
  # A test that boots several guests may ask for more: a line "# test-timeout: S".
  limit=$(sed -n 's/^# test-timeout: \([0-9][0-9]*\)$/\1/p' "$t" | head -n 1)
  limit=$(( ${limit:-0} > TEST_TIMEOUT ? limit : TEST_TIMEOUT ))
  timeout --kill-after=20 "$limit" bash "$t" || rc=$?
  dur=$((SECONDS - start))
  if [[ $rc -eq 0 ]]; then
    echo "PASS $name (${dur}s)"
    passed=$((passed + 1))
  else
    [[ $rc -eq 124 ]] && echo "(timed out after ${limit}s)"
    echo "FAIL $name (${dur}s, exit $rc)"
    failed=$((failed + 1)); failed_names+=("$name")
  fi
done

[[ $failed -eq 0 ]] || echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
