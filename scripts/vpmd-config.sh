# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# The vpmd configuration the system tests and the benchmarks run with (sourced,
# not run).
# shellcheck shell=bash

# vpmd_veth_config CORE CONTROL SOCK_A SOCK_B MODE MTU: on stdout, a vpmd
# config of two ports vm0 (socket SOCK_A) and vm1 (SOCK_B) in a veth pair,
# both in socket role MODE with MTU, polled on core CORE, control socket CONTROL.
vpmd_veth_config() {
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

[[port]]
name = "vm1"
socket = "$4"
mode = "$5"
mac = "52:54:00:00:00:02"
mtu = $6

[[veth]]
ports = ["vm0", "vm1"]
TOML
}
