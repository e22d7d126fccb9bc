# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# The vpmd configuration the system tests and the benchmarks run with (sourced,
# not run).
# shellcheck shell=bash

# vpmd_veth_config CORE CONTROL SOCK_A SOCK_B MODE MTU [OFFLOAD_A [OFFLOAD_B]]:
# on stdout, a vpmd config of two ports vm0 (socket SOCK_A) and vm1 (SOCK_B) in
# a veth pair, both in socket role MODE with MTU, polled on core CORE, control
# socket CONTROL. OFFLOAD_A/OFFLOAD_B, when given and not empty, become that
# port's `offload = { ... }` table, e.g. "csum = false, guest_csum = false"
# (every offload is on without one; a vpmd older than offloads rejects the key,
# so it is written only when asked for).
vpmd_veth_config() {
  local off_a="" off_b=""
  # With its newline: an empty one leaves the config exactly as without offloads.
  [[ -n ${7:-} ]] && off_a="offload = { $7 }"$'\n'
  [[ -n ${8:-} ]] && off_b="offload = { $8 }"$'\n'
  cat <<TOML
[pmd]
cores = [$1]
control_socket = "$2"

[[port]]
name = "vm0"
socket = "$3"
mode = "$5"
mac = "52:54:00:00:00:01"
mtu = $6
$off_a
[[port]]
name = "vm1"
socket = "$4"
mode = "$5"
mac = "52:54:00:00:00:02"
mtu = $6
$off_b
[[veth]]
ports = ["vm0", "vm1"]
TOML
}

# vpmd_macvlan_config CORE CONTROL UPLINK SOCKDIR NAME=MAC...: on stdout, a vpmd
# config of VM ports NAME (socket SOCKDIR/NAME.sock, server role) on one macvlan
# over the interface UPLINK (bridge mode, defaults otherwise), polled on core CORE.
vpmd_macvlan_config() {
  local core=$1 control=$2 uplink=$3 dir=$4 p names=""
  shift 4
  printf '[pmd]\ncores = [%s]\ncontrol_socket = "%s"\n' "$core" "$control"
  for p in "$@"; do
    printf '\n[[port]]\nname = "%s"\nsocket = "%s/%s.sock"\nmac = "%s"\n' "${p%%=*}" "$dir" "${p%%=*}" "${p#*=}"
    names+="${names:+, }\"${p%%=*}\""
  done
  printf '\n[[macvlan]]\nuplink = "%s"\nports = [%s]\n' "$uplink" "$names"
}
