#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Every Rust source and shell script of the project names its licence in its first
# lines (after a shebang). `--fix` adds the line where it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LINE="SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause"
fix=0
[[ ${1:-} == --fix ]] && fix=1
missing=0
while IFS= read -r f; do
  if head -n 3 "$f" | grep -q "$LINE"; then
    continue
  fi
  if [[ $fix -eq 0 ]]; then
    echo "check-spdx: $f has no '$LINE' line" >&2
    missing=$((missing + 1))
    continue
  fi
  case "$f" in
    *.rs) { echo "// $LINE"; cat "$f"; } >"$f.spdx" ;;
    *)
      if head -n 1 "$f" | grep -q '^#!'; then
        { head -n 1 "$f"; echo "# $LINE"; tail -n +2 "$f"; } >"$f.spdx"
      else
        { echo "# $LINE"; cat "$f"; } >"$f.spdx"
      fi
      ;;
  esac
  chmod --reference="$f" "$f.spdx"
  mv "$f.spdx" "$f"
done < <(git ls-files '*.rs' '*.sh' .ci/run)
if [[ $missing -ne 0 ]]; then
  echo "check-spdx: $missing files without a licence line (scripts/check-spdx.sh --fix adds it)" >&2
  exit 1
fi
echo "check-spdx: every source file names its licence"
