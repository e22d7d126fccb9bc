#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Turns the raw results of scripts/bench-compare.sh (one JSON document with the
# machine, the commands and every measurement) into OUT.json (raw + summary)
# and OUT.md (tables). Can be rerun on a kept raw.json.
#
# Usage: scripts/bench-report.sh RAW.json OUT_BASENAME
#
# Summary, per frontend, frame size and backend: the median over rounds of the
# per-direction Mpps and Gbit/s (each measurement is the mean of its two
# directions), min and max, the number of rounds, and the median of the
# backend's CPU cycles per frame on its polling core. Ratios vpmd/testpmd and
# vpmd/OVS are ratios of those medians; the targets (not tests) are vpmd >= 1.0x
# the faster of testpmd and OVS at 64 B and >= 1.3x at 1024 and 1518 B; with the
# ring-loop frontend (the backend alone, issue 11) >= 2.0x at 64 and 1518 B and
# >= 1.5x at 256 and 1024 B.
set -euo pipefail

LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) # bench-report.jq

RAW=${1:?usage: bench-report.sh RAW.json OUT_BASENAME}
OUT=${2:?usage: bench-report.sh RAW.json OUT_BASENAME}

jq -L "$LIB" 'include "bench-report";
  def target($f; $s): if $f == "ring-loop" then
      (if ($s == 64 or $s == 1518) then 2.0 elif ($s == 256 or $s == 1024) then 1.5 else null end)
    elif $s == 64 then 1.0 elif ($s == 1024 or $s == 1518) then 1.3 else null end;
  . as $raw
  | [.measurements | group_by([.frontend, .size, .backend])[]
     | {frontend: .[0].frontend, size: .[0].size, backend: .[0].backend, rounds: length,
        mpps: (map(.mpps) | median | r3), mpps_min: (map(.mpps) | min | r3),
        mpps_max: (map(.mpps) | max | r3), gbps: (map(.gbps) | median | r3),
        cycles_per_frame: (map(.backend_cycles_per_frame | select(. != null)) | median
                           | if . == null then null else . * 10 | round / 10 end),
        cycles_min: (map(.backend_cycles_per_frame | select(. != null)) | min
                     | if . == null then null else . * 10 | round / 10 end),
        cycles_source: (map(.cycles_source) | unique | join(",")),
        front_cpu_share: (map(.front_cpu_share | select(. != null)) | median | r3),
        front_cycles_per_frame: (map(.front_cycles_per_frame | select(. != null)) | median
                                 | if . == null then null else . * 10 | round / 10 end),
        front_busy_share: (map(.front_busy_share | select(. != null)) | median | r3),
        frames_per_burst: (map(.frames_per_burst | select(. != null)) | median
                           | if . == null then null else . * 10 | round / 10 end),
        backend_drops: (map(.backend_drops | select(. != null)) | median),
        checks_bad: (map(.checks_bad | select(. != null)) | add),
        steal_s_max: (map(.steal_s | select(. != null)) | max)}] as $cells
  | [$cells | group_by([.frontend, .size])[]
     | (map({key: .backend, value: .}) | from_entries) as $b
     | {frontend: .[0].frontend, size: .[0].size, backends: $b,
        vpmd_over_testpmd: (if $b.vpmd.mpps and $b.testpmd.mpps and $b.testpmd.mpps > 0
                            then $b.vpmd.mpps / $b.testpmd.mpps | r3 else null end),
        vpmd_over_ovs: (if $b.vpmd.mpps and $b.ovs.mpps and $b.ovs.mpps > 0
                        then $b.vpmd.mpps / $b.ovs.mpps | r3 else null end),
        target: target(.[0].frontend; .[0].size)}
     | ([.backends.testpmd.mpps, .backends.ovs.mpps] | map(select(. != null)) | max) as $best
     | . + {vpmd_over_best: (if .backends.vpmd.mpps and $best and $best > 0
                              then .backends.vpmd.mpps / $best | r3 else null end)}
     | . + {target_met: (if .target == null or .vpmd_over_best == null then null
                          else .vpmd_over_best >= .target end)}
     | ([.backends.testpmd.mpps_max, .backends.ovs.mpps_max] | map(select(. != null)) | max) as $top
     | . + {vpmd_best_over_best: (if .backends.vpmd.mpps_max and $top and $top > 0
                                   then .backends.vpmd.mpps_max / $top | r3 else null end)}] as $summary
  | $raw + {summary: $summary}' "$RAW" >"$OUT.json"

jq -r -L "$LIB" 'include "bench-report";
  def name: {testpmd: "DPDK testpmd (net_virtio_user, io fwd, start tx_first 32)",
             "vpmd-bench": "vpmd-bench loopback (zero-copy io fwd, 32 bursts injected)",
             "ring-loop": "vpmd-bench ring-loop (the backend alone: rings filled once, only indexes moved)"}[.] // .;
  . as $r
  | "# Loopback throughput: vpmd vs DPDK testpmd vs OVS-DPDK\n",
    "\(.date)\(if .quick then " — **quick mode** (1 round, smoke test)" else "" end)\n",
    "- Machine: \(.machine.cpu), \(.machine.cores) cores, kernel \(.machine.kernel), \(.machine.os); DPDK \(.machine.dpdk), OVS \(.machine.ovs)",
    load_lines,
    "- 1-minute load average at each measurement (2.0 = both cores busy, which the two polling threads alone make): \([.measurements[].loadavg1] | sort | "min \(.[0]), median \(.[length / 2 | floor]), max \(.[-1])"); CPU share the vpmd-bench frontend got on its core: \([.measurements[] | .front_cpu_share | select(. != null)] | sort | if length == 0 then "–" else "min \(.[0] * 100 | round) %, median \(.[length / 2 | floor] * 100 | round) %" end).",
    "- Each backend forwards with one polling core (core 1); each frontend runs on core 0. \(.config.duration_s) s measured after \(.config.warmup_s) s warm-up; median of \(.config.rounds) rounds (up to \(.config.max_rounds) where the spread exceeded 15 %), contenders alternating round by round.",
    "- Mpps and Gbit/s are **per direction** (mean of the two directions of a run); Gbit/s counts frame bytes (no FCS, preamble or gap). Frame size = Ethernet frame without FCS (testpmd --txpkts).",
    "",
    ( .summary | group_by(.frontend)[]
      | "## Frontend: \(.[0].frontend | name)\n",
        "| Size (B) | testpmd Mpps | Gbit/s | vpmd Mpps | Gbit/s | OVS Mpps | Gbit/s | vpmd/DPDK | vpmd/OVS | target vs faster | met |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ( sort_by(.size)[]
          | "| \(.size) | \(.backends.testpmd.mpps | f(2)) | \(.backends.testpmd.gbps | f(2)) | \(.backends.vpmd.mpps | f(2)) | \(.backends.vpmd.gbps | f(2)) | \(.backends.ovs.mpps | f(2)) | \(.backends.ovs.gbps | f(2)) | \(.vpmd_over_testpmd | x) | \(.vpmd_over_ovs | x) | \(if .target then "≥ \(.target | f(1))× (is \(.vpmd_over_best | x))" else "–" end) | \(if .target_met == null then "–" elif .target_met then "yes" else "**no**" end) |"),
        "" ),
    "## Backend CPU cycles per frame on its polling core (median)\n",
    "Sources: testpmd `set record-core-cycles on` + `show fwd stats all`; vpmd `perf stat` on its polling thread when the machine has hardware counters, else its own TSC accounting (`vpmd stats --json`: busy_cycles / frames); OVS `ovs-appctl dpif-netdev/pmd-stats-show` (avg processing cycles per packet). Hardware counters here: \(if .perf_counters then "yes" else "no (perf stat -e instructions: not supported)" end).\n",
    "| Size (B) | Frontend | testpmd | vpmd | OVS | frontend busy cycles/frame (with testpmd / vpmd / OVS) | frontend CPU share |",
    "|---:|---|---:|---:|---:|---|---|",
    ( .summary | sort_by(.size, .frontend)[]
      | "| \(.size) | \(.frontend) | \(.backends.testpmd.cycles_per_frame | f(1)) | \(.backends.vpmd.cycles_per_frame | f(1)) | \(.backends.ovs.cycles_per_frame | f(1)) | \([.backends.testpmd, .backends.vpmd, .backends.ovs] | map(if . == null then "–" else (.front_cycles_per_frame | f(1)) end) | join(" / ")) | \(if .frontend == "vpmd-bench" or .frontend == "ring-loop" then ([.backends.testpmd, .backends.vpmd, .backends.ovs] | map(if . == null then "–" else (.front_cpu_share | f(2)) end) | join(" / ")) else "–" end) |"),
    "",
    "The busy cycles of a frontend count only forwarding steps that moved frames (testpmd: `record-core-cycles` on the frontend; vpmd-bench: its TSC accounting); their inverse is the most that frontend could forward on its core. The CPU share is the CPU time the vpmd-bench frontend got over wall time: below 1.00 the machine was loaded.",
    "",
    ( .summary | map(select(.frontend == "ring-loop")) | select(length > 0)
      | "## ring-loop: the backend alone (medians; testpmd / vpmd / OVS)\n",
        "Frames per second here are what the backend delivered with a frontend that only moves ring indexes; the frontend busy share (cycles of its polls that moved something / all cycles) must stay well below 1, or the frontend, not the backend, set the rate. Drops: TX descriptors the backend took minus frames it delivered, after a drain. Steal: the most seconds stolen from all CPUs in one measurement. Bad: sampled frames or TX completions that failed their check (sum).\n",
        "| Size (B) | frontend busy share | frames per burst | backend drops | steal (s, max) | bad samples |",
        "|---:|---|---|---|---|---|",
        ( sort_by(.size)[] | . as $b0
          | "| \(.size) | " + ([["front_busy_share", 2], ["frames_per_burst", 1], ["backend_drops", 0], ["steal_s_max", 2], ["checks_bad", 0]]
              | map(.[0] as $k | .[1] as $d
                    | [$b0.backends.testpmd, $b0.backends.vpmd, $b0.backends.ovs]
                    | map(if . == null then "–" else (.[$k] | f($d)) end) | join(" / "))
              | join(" | ")) + " |"),
        "" ),
    "## vpmd memory\n",
    "Resident memory of vpmd excluding guest mappings (sum of Rss in /proc/PID/smaps over mappings that are not memfd or hugetlbfs guest memory), the largest seen at the end of a measurement, frontend connected: \(if .vpmd_rss_kib_excluding_guest then "\(.vpmd_rss_kib_excluding_guest) KiB (\(.vpmd_rss_kib_excluding_guest / 1024 | f(1)) MiB)" else "not measured" end).\n",
    "## Spread (Mpps per direction: min – median – max, rounds)\n",
    "| Size (B) | Frontend | testpmd | vpmd | OVS |",
    "|---:|---|---|---|---|",
    ( .summary | sort_by(.size, .frontend)[]
      | "| \(.size) | \(.frontend) | " + ([.backends.testpmd, .backends.vpmd, .backends.ovs]
          | map(if . == null then "–" else "\(.mpps_min | f(2)) – \(.mpps | f(2)) – \(.mpps_max | f(2)) (\(.rounds))" end)
          | join(" | ")) + " |"),
    "",
    "## Best round (the least disturbed one of each contender)\n",
    "On a shared machine a disturbance only ever slows a run down, so each contender'"'"'s fastest round and lowest cycles per frame are the closest to what it costs undisturbed; the medians above are the figures of record.\n",
    "| Size (B) | Frontend | testpmd Mpps | vpmd Mpps | OVS Mpps | vpmd/faster | lowest cycles/frame testpmd / vpmd / OVS |",
    "|---:|---|---:|---:|---:|---:|---|",
    ( .summary | sort_by(.size, .frontend)[]
      | "| \(.size) | \(.frontend) | \(.backends.testpmd.mpps_max | f(2)) | \(.backends.vpmd.mpps_max | f(2)) | \(.backends.ovs.mpps_max | f(2)) | \(.vpmd_best_over_best | x) | \([.backends.testpmd, .backends.vpmd, .backends.ovs] | map(if . == null then "–" else (.cycles_min | f(1)) end) | join(" / ")) |"),
    "",
    "## Reference figures measured earlier on this kind of machine (Mpps per direction, median)\n",
    "| Size (B) | testpmd ref | testpmd here (testpmd frontend) | OVS ref | OVS here (testpmd frontend) |",
    "|---:|---:|---:|---:|---:|",
    ( .reference_mpps as $ref | .summary | map(select(.frontend == "testpmd")) | sort_by(.size)[]
      | "| \(.size) | \($ref.testpmd[.size | tostring] | f(2)) | \(.backends.testpmd.mpps | f(2)) | \($ref.ovs[.size | tostring] | f(2)) | \(.backends.ovs.mpps | f(2)) |"),
    "",
    "## Commands (as run, first round; sockets in the work dir of the run)\n",
    ( [["Backend testpmd", .commands.backend_testpmd], ["Backend vpmd", .commands.backend_vpmd],
       ["Backend OVS", .commands.backend_ovs], ["Frontend testpmd", .commands.frontend_testpmd],
       ["Frontend vpmd-bench", .commands.frontend_vpmd_bench],
       ["Frontend ring-loop", .commands.frontend_ring_loop]][]
      | select(.[1] != null and (.[1] | length) > 0)
      | "\(.[0]):\n```\n\(.[1] | join("\n"))\n```\n"),
    "Every measurement (both directions, load average, cycle source) is in the JSON file next to this one."
' "$OUT.json" >"$OUT.md"
