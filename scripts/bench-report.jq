# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# What the benchmark reports (scripts/bench-report.sh, bench-macvlan-report.sh)
# compute and print alike, as jq definitions: `jq -L DIR 'include "bench-report"; ...'`.

# median: the median of an array of numbers; null for an empty one.
def median: sort | if length == 0 then null
  elif length % 2 == 1 then .[length / 2 | floor]
  else (.[length / 2 - 1] + .[length / 2]) / 2 end;

# r3: rounded to three decimals; null stays null.
def r3: if . == null then null else . * 1000 | round / 1000 end;

# f($d): a number printed with $d decimals; "–" for null.
def f($d): if . == null then "–" elif $d == 0 then (round | tostring)
  else (. * pow(10; $d) | round | tostring) as $n
    | ("0" * ([$d + 1 - ($n | length), 0] | max) + $n) as $p
    | $p[:($p | length) - $d] + "." + $p[($p | length) - $d:] end;

# x: a ratio printed as "1.23×"; "–" for null.
def x: if . == null then "–" else (f(2) + "×") end;

# load: one load snapshot (bl_load_snapshot) as the reports print it.
def load: "loadavg \(.loadavg); other busy processes: \(.others_busy | if . == "" then "none" else . end)";

# load_lines: the report's lines on the machine's load at the start and the end
# of the run (of a raw document with .load.start and .load.end).
def load_lines: "- Load at start: \(.load.start | load)", "- Load at end: \(.load.end | load)";
