// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Reading `vpmd stats --json` documents in tests and harnesses: a port's entry, one of
//! its counters, the sum of its drops. Each panics with the whole document when what is
//! asked for is missing, so a failing test shows what vpmd reported.

use serde_json::Value;

/// Port `name`'s entry in a stats document.
pub fn port<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no port {name} in stats: {stats}"))
}

/// A counter of port `name`: `"tx_packets"`, a drop reason as `"drops.peer_down"`,
/// an offload counter as `"offloads.sw_segments"`.
pub fn counter(stats: &Value, name: &str, field: &str) -> u64 {
    let p = port(stats, name);
    let v = match field.split_once('.') {
        Some((group, name)) => &p[group][name],
        None => &p[field],
    };
    v.as_u64()
        .unwrap_or_else(|| panic!("port {name} has no counter {field}: {stats}"))
}

/// Sum of every drop counter of port `name`.
pub fn drops(stats: &Value, name: &str) -> u64 {
    port(stats, name)["drops"]
        .as_object()
        .unwrap_or_else(|| panic!("port {name} has no drops: {stats}"))
        .values()
        .map(|v| v.as_u64().expect("numeric drop counter"))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ports_counters_and_drops() {
        let s: Value = serde_json::json!({"ports": [
            {"name": "a", "tx_packets": 7, "drops": {"peer_down": 2, "runt": 1}},
            {"name": "b", "tx_packets": 0, "drops": {}}
        ]});
        assert_eq!(counter(&s, "a", "tx_packets"), 7);
        assert_eq!(counter(&s, "a", "drops.peer_down"), 2);
        assert_eq!(drops(&s, "a"), 3);
        assert_eq!(drops(&s, "b"), 0);
        assert!(std::panic::catch_unwind(|| port(&s, "c")).is_err());
    }
}
