// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Ports sent at runtime (`vpmd port add`): the file's checks, errors naming
//! `port.<field>`, uniqueness against the running ports; and the empty config.

use super::test_support::{host, PORTS_AB};
use super::*;

fn running() -> Vec<Port> {
    let text = format!("[pmd]\ncores = [1]\n{PORTS_AB}");
    Config::parse_for(&text, "t.toml", &host()).unwrap().ports
}

/// The port `c` with `extra` fields merged in, checked against `a` and `b`.
fn add(extra: serde_json::Value) -> Result<Port, (String, String)> {
    let mut v = serde_json::json!({
        "name": "c", "socket": "/tmp/c.sock", "mac": "52:54:00:00:00:03"
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    let ports = running();
    let refs: Vec<&Port> = ports.iter().collect();
    Port::from_request_for(v, &refs, &host()).map_err(|e| match e {
        ConfigError::Invalid { field, reason, .. } => (field, reason),
        other => panic!("not a field error: {other}"),
    })
}

fn field(extra: serde_json::Value) -> String {
    add(extra).unwrap_err().0
}

#[test]
fn a_port_gets_the_files_defaults() {
    let p = add(serde_json::json!({})).unwrap();
    assert_eq!(p.name, "c");
    assert_eq!(p.mode, Mode::Server);
    assert_eq!(p.mtu, 1500);
    assert_eq!(p.socket_mode, 0o600);
    assert_eq!(p.socket_owner, None);
    assert!(!p.allow_mac_spoofing);
    assert_eq!(p.limits, vpmd_backend::conn_limits::ConnLimits::DEFAULT);
    let p = add(serde_json::json!({
        "mode": "client", "mtu": 9000, "socket_mode": "0660",
        "max_memory_mib": 1024, "max_messages_per_sec": 500, "allow_mac_spoofing": true
    }))
    .unwrap();
    assert_eq!((p.mode, p.mtu, p.socket_mode), (Mode::Client, 9000, 0o660));
    assert_eq!(p.limits.max_memory, 1024 << 20);
    assert_eq!(p.limits.messages_per_sec, 500);
    assert!(p.allow_mac_spoofing);
    let p = add(serde_json::json!({ "socket_owner": "qemu", "socket_group": "36" })).unwrap();
    assert_eq!((p.socket_owner, p.socket_group), (Some(107), Some(36)));
}

#[test]
fn every_bad_field_is_named() {
    use serde_json::json;
    assert_eq!(field(json!({ "mac": "52:54:00:zz:00:03" })), "port.mac");
    assert_eq!(field(json!({ "mac": "01:00:5e:00:00:01" })), "port.mac");
    assert_eq!(field(json!({ "mac": "00:00:00:00:00:00" })), "port.mac");
    assert_eq!(field(json!({ "name": "" })), "port.name");
    assert_eq!(field(json!({ "name": "a/b" })), "port.name");
    assert_eq!(field(json!({ "name": "x".repeat(33) })), "port.name");
    assert_eq!(field(json!({ "socket": "" })), "port.socket");
    assert_eq!(field(json!({ "mtu": 67 })), "port.mtu");
    assert_eq!(field(json!({ "mtu": 9001 })), "port.mtu");
    assert_eq!(field(json!({ "socket_mode": "0999" })), "port.socket_mode");
    assert_eq!(
        field(json!({ "socket_owner": "nobody-here" })),
        "port.socket_owner"
    );
    assert_eq!(
        field(json!({ "mode": "client", "socket_group": "kvm" })),
        "port.socket_group"
    );
    assert_eq!(field(json!({ "max_memory_mib": 0 })), "port.max_memory_mib");
    assert_eq!(
        field(json!({ "max_messages_per_sec": 1 })),
        "port.max_messages_per_sec"
    );
}

#[test]
fn names_sockets_and_macs_in_use_are_refused() {
    use serde_json::json;
    let (f, why) = add(json!({ "name": "a" })).unwrap_err();
    assert_eq!(f, "port.name");
    assert!(why.contains("used twice"), "{why}");
    let (f, why) = add(json!({ "socket": "/tmp/b.sock" })).unwrap_err();
    assert_eq!(f, "port.socket");
    assert!(why.contains("another port"), "{why}");
    let (f, why) = add(json!({ "mac": "52:54:00:00:00:02" })).unwrap_err();
    assert_eq!(f, "port.mac");
    assert!(why.contains("another port"), "{why}");
}

#[test]
fn malformed_requests_are_refused_as_the_port() {
    use serde_json::json;
    let (f, why) = add(json!({ "colour": "red" })).unwrap_err();
    assert_eq!(f, "port");
    assert!(why.contains("unknown field `colour`"), "{why}");
    let (f, why) = add(json!({ "mtu": "big" })).unwrap_err();
    assert_eq!(f, "port");
    assert!(why.contains("invalid type"), "{why}");
    let ports = running();
    let refs: Vec<&Port> = ports.iter().collect();
    let e = Port::from_request_for(json!({ "name": "c" }), &refs, &host()).unwrap_err();
    assert!(e.to_string().contains("missing field `socket`"), "{e}");
}

#[test]
fn a_config_without_ports_is_valid() {
    let c = Config::parse_for("[pmd]\ncores = [1]\n", "t.toml", &host()).unwrap();
    assert!(c.ports.is_empty() && c.veths.is_empty() && c.macvlans.is_empty());
    let c = Config::parse_for("", "t.toml", &host()).unwrap();
    assert_eq!(c.cores, [1], "the last core by default");
}
