#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Checks that the workspace's rust-version is true: no locked dependency needs a
# newer rustc (cargo metadata's rust_version of every package), and every crate of
# ours inherits it. Our own code is checked against it by clippy's
# `incompatible_msrv` lint (part of `cargo clippy`, which reads rust-version).
# Only one toolchain can be installed on these machines, so building with the
# oldest supported rustc is not possible; this is the evidence instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
declared=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
[[ -n $declared ]] || { echo "check-msrv: no rust-version in [workspace.package]" >&2; exit 1; }
meta=$(cargo metadata --format-version 1 --locked)
newest=$(jq -r '.packages[] | select(.source != null) | .rust_version // empty' <<<"$meta" | sort -V | tail -1)
ours=$(jq -r '.packages[] | select(.source == null) | "\(.name) \(.rust_version // "none")"' <<<"$meta")
status=0
while read -r name rv; do
  if [[ $rv != "$declared" ]]; then
    echo "check-msrv: crate $name has rust-version $rv, not the workspace's $declared" >&2
    status=1
  fi
done <<<"$ours"
full() { [[ $1 == *.*.* ]] && echo "$1" || echo "$1.0"; }
if [[ $(printf '%s\n%s\n' "$(full "$newest")" "$(full "$declared")" | sort -V | tail -1) != "$(full "$declared")" ]]; then
  needs=$(jq -r --arg v "$newest" '.packages[] | select(.source != null and .rust_version == $v) | "\(.name) \(.version)"' <<<"$meta" | head -3 | tr '\n' ' ')
  echo "check-msrv: dependencies need rustc $newest ($needs), more than rust-version $declared" >&2
  status=1
fi
[[ $status -eq 0 ]] && echo "check-msrv: rust-version $declared; newest needed by a dependency: $newest; every crate inherits it"
exit $status
