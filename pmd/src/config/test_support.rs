// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What the config tests share: a host to check against and a veth pair.

use super::Host;

/// A 2-CPU host with interfaces `eth1` and `eth2`, user `qemu` (107) and group
/// `kvm` (36).
pub fn host() -> Host {
    Host {
        cpus: 2,
        interface_exists: |name| name == "eth1" || name == "eth2",
        user_id: |name| (name == "qemu").then_some(107),
        group_id: |name| (name == "kvm").then_some(36),
    }
}

/// Ports `a` and `b` (server role, default MTU) and their veth, after a `[pmd]`.
pub const PORTS_AB: &str = r#"
[[port]]
name = "a"
socket = "/tmp/a.sock"
mac = "52:54:00:00:00:01"
[[port]]
name = "b"
socket = "/tmp/b.sock"
mac = "52:54:00:00:00:02"
[[veth]]
ports = ["a", "b"]
"#;
