#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Turns the raw results of scripts/bench-macvlan.sh (machine, commands, every
# measurement) into OUT.json (raw + summary) and OUT.md (tables). Can be rerun
# on a kept raw file.
#
# Usage: scripts/bench-macvlan-report.sh RAW.json OUT_BASENAME
#
# Summary per direction, frame size and contender: medians over the rounds of
# the generator's Mpps, the Mpps delivered, the polling thread's CPU time per
# frame (and its user share and share of a core); the largest loss and number
# of unknown-MAC frames at the VMs over the rounds. The CPU ratio is vpmd's
# median ns/frame over DPDK's. Targets (direction "in", not tests): vpmd loses
# nothing and delivers no unknown-MAC frame in any round, the unknown-MAC frames
# all reach the host, and vpmd-sleep spends <= 0.7x DPDK's CPU time per frame.
set -euo pipefail

LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) # bench-report.jq

RAW=${1:?usage: bench-macvlan-report.sh RAW.json OUT_BASENAME}
OUT=${2:?usage: bench-macvlan-report.sh RAW.json OUT_BASENAME}

jq -L "$LIB" 'include "bench-report";
  # The median of the values there are (a round may lack one).
  def known_median: map(select(. != null)) | median;
  def r0: if . == null then null else round end;
  . as $raw
  | [.measurements | group_by([.direction, .size, .contender])[]
     | {direction: .[0].direction, size: .[0].size, contender: .[0].contender, rounds: length,
        offered_mpps: (map(.offered_mpps) | known_median | r3),
        delivered_mpps: (map(.delivered_mpps) | known_median | r3),
        delivered_mpps_min: (map(.delivered_mpps) | min | r3),
        delivered_mpps_max: (map(.delivered_mpps) | max | r3),
        lost_max: (map(.lost) | max), lost_median: (map(.lost) | known_median),
        lost_pct_max: (map(if .direction == "in" then (if .vm_frames_offered > 0 then 100 * .lost / .vm_frames_offered else null end)
                           else (if .offered_frames > 0 then 100 * .lost / .offered_frames else null end) end) | max
                       | if . == null then null else . * 1000 | round / 1000 end),
        unknown_offered: (map(.unknown_frames_offered) | known_median),
        unknown_at_vms_max: (map(.unknown_at_vms) | max),
        unknown_to_host_median: (map(.unknown_to_host) | known_median),
        unknown_all_to_host: (map(select(.direction == "in") | .unknown_to_host >= .unknown_frames_offered) | all),
        corrupt_or_reordered: (map(.checks // {} | (.corrupted // 0) + (.reordered // 0) + (.duplicates // 0)) | add),
        accounting_exact: (map(.vpmd.accounting_exact // null) | map(select(. != null)) | if length == 0 then null else all end),
        pmd_ns_per_frame: (map(.pmd.ns_per_frame) | known_median | r0),
        pmd_share: (map(.pmd.share) | known_median | r3),
        pmd_user_pct: (map(.pmd.user_pct) | known_median | r0),
        gen_mpps: (map(.generator.mpps) | known_median | r3),
        gen_mpps_min: (map(.generator.mpps) | min | r3), gen_mpps_max: (map(.generator.mpps) | max | r3),
        gen_cpu_share: (map(.generator.cpu_share) | known_median | r3),
        gen_ns_per_frame: (map(.generator.ns_per_frame) | known_median | r0),
        load_median: (map(.loadavg1) | known_median), load_max: (map(.loadavg1) | max)}] as $cells
  | [$cells | group_by([.direction, .size])[]
     | (map({key: .contender, value: .}) | from_entries) as $c
     | {direction: .[0].direction, size: .[0].size, contenders: $c}
     | . + {cpu_ratio_busy: (if $c["vpmd-busy"].pmd_ns_per_frame and $c.dpdk.pmd_ns_per_frame
                             then $c["vpmd-busy"].pmd_ns_per_frame / $c.dpdk.pmd_ns_per_frame | r3 else null end),
            cpu_ratio_sleep: (if $c["vpmd-sleep"].pmd_ns_per_frame and $c.dpdk.pmd_ns_per_frame
                              then $c["vpmd-sleep"].pmd_ns_per_frame / $c.dpdk.pmd_ns_per_frame | r3 else null end)}
     | . + (if .direction != "in" then {} else
         {targets: {
            zero_loss_busy: (if $c["vpmd-busy"] then $c["vpmd-busy"].lost_max == 0 else null end),
            zero_loss_sleep: (if $c["vpmd-sleep"] then $c["vpmd-sleep"].lost_max == 0 else null end),
            no_unknown_at_vms: ([$c["vpmd-busy"], $c["vpmd-sleep"]] | map(select(. != null) | .unknown_at_vms_max == 0) | all),
            unknown_all_to_host: ([$c["vpmd-busy"], $c["vpmd-sleep"]] | map(select(. != null) | .unknown_all_to_host) | all),
            cpu_sleep_le_0_7: (if .cpu_ratio_sleep == null then null else .cpu_ratio_sleep <= 0.7 end)}} end)] as $summary
  | $raw + {summary: $summary}' "$RAW" >"$OUT.json"

jq -r -L "$LIB" 'include "bench-report";
  def yn: if . == null then "–" elif . then "yes" else "**no**" end;
  def order: {"vpmd-busy": 0, "vpmd-sleep": 1, dpdk: 2}[.] // 9;
  def name: {"vpmd-busy": "vpmd (max_sleep_us = 0)", "vpmd-sleep": "vpmd (max_sleep_us = \($sleep))",
             dpdk: "DPDK testpmd (af_xdp ↔ vhost, io)"}[.] // .;
  # cells($dir): per size, then per contender in table order: {s: the size'"'"'s
  # summary, key: the contender, v: its cells}.
  def cells($dir): .summary | map(select(.direction == $dir)) | sort_by(.size)[] as $s
    | $s.contenders | to_entries | sort_by(.key | order)[] | {s: $s, key, v: .value};
  # rates: a row'"'"'s size, contender, Mpps offered and delivered, and loss.
  def rates: "| \(.s.size) | \(.key | name) | \(.v.offered_mpps | f(3)) | \(.v.delivered_mpps | f(3)) | \(.v.lost_max) (\(.v.lost_pct_max | f(3)) %) |";
  # cpu: a row'"'"'s polling-thread cells, the ratio to DPDK and the load.
  def cpu: " \(.v.pmd_ns_per_frame | f(0)) | \(.v.pmd_user_pct | f(0)) | \(.v.pmd_share | f(2)) | \(if .key == "vpmd-busy" then (.s.cpu_ratio_busy | x) elif .key == "vpmd-sleep" then (.s.cpu_ratio_sleep | x) else "–" end) | \(.v.load_median) |";
  "# Macvlan: uplink (veth + AF_XDP) ↔ VM ports, vpmd vs DPDK testpmd\n",
    "\(.date)\(if .quick then " — **quick mode** (1 round, smoke test)" else "" end)\n",
    "- Machine: \(.machine.cpu), \(.machine.cores) cores, kernel \(.machine.kernel), \(.machine.os); DPDK \(.machine.dpdk)",
    load_lines,
    "- 1-minute load average at each measurement (the generator and the polling thread alone make about 2): \([.measurements[].loadavg1] | sort | if length == 0 then "–" else "min \(.[0]), median \(.[length / 2 | floor]), max \(.[-1])" end).",
    "- Generator (`vpmd-bench xdp-txonly`, AF_XDP \(.measurements[0].generator.bind_mode // "copy") mode) on core \(.config.generator_core) in a namespace, on the far end of a veth pair (one queue per end, MTU 1504) whose near end is the uplink; destinations in turn: `\(.config.generator_destinations)` (VM MACs weight 7, unknown MACs weight 1). Polling thread on core \(.config.polling_core). Receivers: `vpmd-bench rxonly` per VM port, sleeping on their call eventfd (no spinning), pinned to core \(.config.rx_core)\(if .config.rx_core == "0" then " (with the generator: the polling thread has core \(.config.polling_core) to itself, and its CPU time is its own)" elif .config.rx_core == "1" then " (beside the polling thread: a busy poller then gets only what the receivers leave it)" else "" end)\(if .config.rx_priority == "fifo" then " with SCHED_FIFO priority 1 (a woken receiver runs at once, as a VM'"'"'s vCPU on its own core would, instead of waiting for a time slice)" else "" end), virtqueues of \(.config.rx_queue_size), guest memory on \(if .config.guest_hugepages then "2 MiB hugepages" else "4 KiB pages" end). vpmd: \(.config.vm_ports) VM ports; DPDK: one (net_vhost0).",
    "- \(.config.duration_s) s of generator per measurement; median of \(.config.rounds) round(s), contenders alternating. Frame size = Ethernet frame without FCS.",
    "- CPU time per frame: utime + stime of the polling thread (vpmd `pmd-core1`, testpmd its forwarding lcore) from /proc/PID/task/TID/stat over the generator'"'"'s run, divided by the frames delivered to the VM ports (in) or to the namespace (out). Share = that CPU time / wall time (1.00 = a whole core).",
    "",
    "## Uplink → VM ports (generator in the namespace → rxonly)\n",
    "| Size (B) | Contender | generator Mpps | delivered to VMs Mpps | lost (max, % of VM frames) | unknown-MAC at VMs (max) | unknown-MAC to host (median / offered) | pmd CPU ns/frame | user % | core share | vs DPDK | load (med) |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ( cells("in") | rates + " \(.v.unknown_at_vms_max) | \(.v.unknown_to_host_median) / \(.v.unknown_offered) |" + cpu ),
    "",
    "DPDK'"'"'s af_xdp PMD loads an XDP program that takes every frame of the queue, so the unknown-MAC frames reach its VM too (expected, not a fault of the benchmark); vpmd'"'"'s program leaves them to the host stack, counted as the uplink'"'"'s `rx otherhost` drops (the host'"'"'s IP stack saw frames for another MAC).",
    "",
    "### Targets (uplink → VMs)\n",
    "| Size (B) | zero loss, every round: max_sleep_us = 0 | = \($sleep) | no unknown-MAC frame at a VM | unknown-MAC frames all reach the host | CPU/frame ≤ 0.7× DPDK, max_sleep_us = \($sleep) | (max_sleep_us = 0) |",
    "|---:|:---:|:---:|:---:|:---:|:---:|:---:|",
    ( .summary | map(select(.direction == "in")) | sort_by(.size)[]
      | "| \(.size) | \(.targets.zero_loss_busy | yn) | \(.targets.zero_loss_sleep | yn) | \(.targets.no_unknown_at_vms | yn) | \(.targets.unknown_all_to_host | yn) | \(.targets.cpu_sleep_le_0_7 | yn) (\(.cpu_ratio_sleep | x)) | \(.cpu_ratio_busy | x) |"),
    "",
    "Frames lost by vpmd, by where (sum over rounds): \([.measurements[] | select(.direction == "in" and .contender != "dpdk" and .lost > 0) | "\(.contender) \(.size) B round \(.round): \(.lost) lost, of which \(.uplink_rx_dropped) at the uplink'"'"'s XDP redirect (AF_XDP ring full or no fill-ring chunk: the polling thread did not run for milliseconds), \(.vpmd.drops | to_entries | map("\(.value) \(.key)") | join(", ") | if . == "" then "none in vpmd" else . end)\(if .steal_ticks then "; hypervisor steal meanwhile: core 0 \(.steal_ticks.core0), core 1 \(.steal_ticks.core1) ticks" else "" end)"] | if length == 0 then "none" else join("; ") end).",
    "",
    "## VM port → uplink (txonly on vm0 → the namespace)\n",
    "| Size (B) | Contender | offered Mpps | delivered Mpps | lost (max, %) | pmd CPU ns/frame | user % | core share | vs DPDK | load (med) |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ( cells("out") | rates + cpu ),
    "",
    "## The generator\n",
    "Reference (NOTES, DPDK testpmd txonly on net_af_xdp as the generator): about 0.79 Mpps at 64 B and 0.68 Mpps at 1518 B, its core saturated by the kernel side (AF_XDP transmit, veth, XDP, copy). Here the generator shares core \(.config.generator_core) with the receivers (\(if .config.rx_core == "0" then "they take their CPU time from it" else "not here" end)). Its own CPU accounting (in the JSON) says little: the kernel'"'"'s receive side of the veth (NAPI, XDP, the copy into the AF_XDP ring) runs in softirq, charged to the generator when it runs at the end of a send, to ksoftirqd/\(.config.generator_core) when deferred; the core stays saturated either way.\n",
    "| Size (B) | Receiving contender | generator Mpps (median, min – max) |",
    "|---:|---|---:|",
    ( cells("in") | "| \(.s.size) | \(.key | name) | \(.v.gen_mpps | f(3)) (\(.v.gen_mpps_min | f(3)) – \(.v.gen_mpps_max | f(3))) |" ),
    "",
    "In front of vpmd the unknown-MAC frames go up the host'"'"'s stack on the generator'"'"'s core (vpmd'"'"'s program passes them); in front of DPDK they are redirected like the rest.",
    "",
    "## Commands (as run, first round; sockets in the run'"'"'s work dir)\n",
    ( .commands | to_entries[] | select(.value != null and (.value | length) > 0)
      | "\(.key):\n```\n\(.value | join("\n"))\n```\n"),
    "Every measurement (per round: generator report, receivers, uplink counters, vpmd counters, CPU split, load) is in the JSON file next to this one."
' --argjson sleep "$(jq '.config.max_sleep_us' "$OUT.json")" "$OUT.json" >"$OUT.md"
