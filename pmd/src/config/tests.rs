// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Config parsing and validation: the shapes that work, and every error naming its field.

use super::test_support::host;
use super::*;

fn parse(text: &str) -> Result<Config, String> {
    // As vpmd prints it: the error and its causes, once each.
    Config::parse_for(text, "t.toml", &host()).map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

/// `config` with `line` (one or more) added after its line `anchor`.
fn with_line(config: &str, anchor: &str, line: &str) -> String {
    config.replace(anchor, &format!("{anchor}\n{line}"))
}

/// The line that opens port "a" of [`PAIR`].
const PORT_A: &str = r#"name = "a""#;

const PAIR: &str = r#"
[pmd]
cores = [1]
[[port]]
name = "a"
socket = "/tmp/a.sock"
mac = "52:54:00:00:00:01"
[[port]]
name = "b"
socket = "/tmp/b.sock"
mode = "client"
mac = "52:54:00:00:00:02"
mtu = 9000
[[veth]]
ports = ["a", "b"]
"#;

const MACVLAN: &str = r#"
[[port]]
name = "vm2"
socket = "/tmp/vm2.sock"
mac = "52:54:00:00:00:12"
[[port]]
name = "vm3"
socket = "/tmp/vm3.sock"
mac = "52:54:00:00:00:13"
allow_mac_spoofing = true
[[macvlan]]
uplink = "eth1"
ports = ["vm2", "vm3"]
"#;

#[test]
fn builtin_and_examples_parse() {
    let c = Config::builtin();
    assert_eq!(c.ports.len(), 2);
    assert_eq!(c.veths, vec![[0, 1]]);
    assert_eq!(c.sleep_after_us, 1000, "adaptive polling by default");
    let c = parse(PAIR).unwrap();
    assert_eq!(c.sleep_after_us, 1000);
    let busy = parse(&PAIR.replace("cores = [1]", "cores = [1]\nsleep_after_us = 0")).unwrap();
    assert_eq!(busy.sleep_after_us, 0, "busy polling one setting away");
    assert_eq!(c.ports[0].queue_pairs, 1, "one queue pair by default");
    let mq = parse(&PAIR.replace("mtu = 9000", "mtu = 9000\nqueues = 8")).unwrap();
    assert_eq!(mq.ports[1].queue_pairs, 8);
    let pinned =
        parse(&PAIR.replace("mtu = 9000", "mtu = 9000\nqueues = 2\nqueue_cores = [1, 1]")).unwrap();
    assert_eq!(pinned.ports[1].queue_cores, vec![1, 1]);
    assert_eq!(c.ports[1].mode, Mode::Client);
    assert_eq!(c.ports[1].mtu, 9000);
    assert_eq!(c.ports[0].socket_mode, 0o600);
    assert!(!c.ports[0].allow_mac_spoofing);
    let example = include_str!("../../../configs/veth-pair.toml");
    Config::parse_for(example, "veth-pair.toml", &host()).unwrap();
}

#[test]
fn socket_owner_group_and_capabilities() {
    let c = parse(PAIR).unwrap();
    assert_eq!(
        (c.ports[0].socket_owner, c.ports[0].socket_group),
        (None, None)
    );
    assert_eq!(c.control_socket_mode, 0o600);
    assert_eq!(
        (c.control_socket_owner, c.control_socket_group),
        (None, None)
    );
    assert_eq!(c.keep_capabilities, 0);
    let text = with_line(
        PAIR,
        PORT_A,
        "socket_mode = \"0660\"\nsocket_owner = \"qemu\"\nsocket_group = \"kvm\"",
    );
    let text = with_line(
        &text,
        "cores = [1]",
        "control_socket_mode = \"0640\"\ncontrol_socket_owner = 0\n\
         control_socket_group = \"1234\"\nkeep_capabilities = [\"CAP_DAC_OVERRIDE\", \"net_raw\"]",
    );
    let c = parse(&text).unwrap();
    let p = &c.ports[0];
    assert_eq!(
        (p.socket_mode, p.socket_owner, p.socket_group),
        (0o660, Some(107), Some(36))
    );
    assert_eq!(
        (
            c.control_socket_mode,
            c.control_socket_owner,
            c.control_socket_group
        ),
        (0o640, Some(0), Some(1234))
    );
    assert_eq!(c.keep_capabilities, (1 << 1) | (1 << 13));
    // Numeric ids need not exist, as with chown(1).
    let c = parse(&with_line(PAIR, PORT_A, "socket_owner = 4242")).unwrap();
    assert_eq!(c.ports[0].socket_owner, Some(4242));
}

#[test]
fn macvlan_defaults_and_fields() {
    let c = parse(MACVLAN).unwrap();
    assert_eq!(c.macvlans.len(), 1);
    let m = &c.macvlans[0];
    assert_eq!(
        (m.uplink.as_str(), m.queues, m.mode),
        ("eth1", 1, MacvlanMode::Bridge)
    );
    assert_eq!(m.ports, vec![0, 1]);
    assert!(c.ports[1].allow_mac_spoofing);
    let c = parse(&with_line(
        MACVLAN,
        r#"uplink = "eth1""#,
        "queues = 2\nmode = \"vepa\"",
    ))
    .unwrap();
    assert_eq!(
        (c.macvlans[0].queues, c.macvlans[0].mode),
        (2, MacvlanMode::Vepa)
    );
}

#[test]
fn connection_limits_default_and_parse() {
    let c = parse(PAIR).unwrap();
    assert_eq!(
        c.ports[0].limits,
        vpmd_backend::conn_limits::ConnLimits::DEFAULT
    );
    let c = parse(&with_line(
        PAIR,
        "mtu = 9000",
        "max_memory_mib = 1024\nmax_messages_per_sec = 50",
    ))
    .unwrap();
    assert_eq!(c.ports[1].limits.max_memory, 1 << 30);
    assert_eq!(c.ports[1].limits.messages_per_sec, 50);
}

#[test]
fn errors_name_the_field() {
    // (config, this text, replaced by this, the field the error names)
    let replaced = [
        (PAIR, "mtu = 9000", "mtu = 9001", "port[1].mtu"),
        (
            PAIR,
            "52:54:00:00:00:02",
            "52:54:00:00:00:01",
            "port[1].mac",
        ),
        (
            PAIR,
            "52:54:00:00:00:02",
            "01:00:5e:00:00:01",
            "port[1].mac",
        ),
        (PAIR, "52:54:00:00:00:02", "nope", "port[1].mac"),
        (PAIR, "cores = [1]", "cores = [7]", "pmd.cores[0]"),
        (PAIR, r#"["a", "b"]"#, r#"["a", "c"]"#, "veth[0].ports[1]"),
        (PAIR, r#"["a", "b"]"#, r#"["a", "a"]"#, "veth[0].ports[1]"),
        (PAIR, "/tmp/b.sock", "/tmp/a.sock", "port[1].socket"),
        (PAIR, r#"mode = "client""#, r#"mode = "both""#, "mode"),
        (MACVLAN, r#""eth1""#, r#""nosuch0""#, "macvlan[0].uplink"),
        (
            MACVLAN,
            r#""vm2", "vm3"]"#,
            r#""vm2", "vm9"]"#,
            "macvlan[0].ports[1]",
        ),
        (
            MACVLAN,
            "52:54:00:00:00:13",
            "52:54:00:00:00:12",
            "port[1].mac",
        ),
        (
            MACVLAN,
            r#"ports = ["vm2", "vm3"]"#,
            r#"ports = ["vm2"]"#,
            "port[1]",
        ),
    ];
    // (config, after this line, this line added, the field the error names)
    let added = [
        (
            PAIR,
            "mtu = 9000",
            "max_memory_mib = 0",
            "port[1].max_memory_mib",
        ),
        (
            PAIR,
            "mtu = 9000",
            "max_messages_per_sec = 1",
            "port[1].max_messages_per_sec",
        ),
        (PAIR, "mtu = 9000", "colour = 1", "colour"),
        (PAIR, "mtu = 9000", "queues = 0", "port[1].queues"),
        (PAIR, "mtu = 9000", "queues = 9", "port[1].queues"),
        (
            PAIR,
            "mtu = 9000",
            "queues = 2\nqueue_cores = [1]",
            "port[1].queue_cores",
        ),
        (
            PAIR,
            "mtu = 9000",
            "queues = 2\nqueue_cores = [1, 3]",
            "port[1].queue_cores[1]",
        ),
        (
            PAIR,
            "cores = [1]",
            "max_sleep_us = 20000",
            "pmd.max_sleep_us",
        ),
        (
            PAIR,
            "cores = [1]",
            "sleep_after_us = 20000000",
            "pmd.sleep_after_us",
        ),
        (
            PAIR,
            PORT_A,
            r#"socket_owner = "nobody-here""#,
            "port[0].socket_owner",
        ),
        (
            PAIR,
            PORT_A,
            r#"socket_group = "nogroup-here""#,
            "port[0].socket_group",
        ),
        (
            PAIR,
            PORT_A,
            "socket_owner = 4294967295",
            "port[0].socket_owner",
        ),
        // Client role: the frontend creates the socket.
        (
            PAIR,
            r#"mode = "client""#,
            r#"socket_group = "kvm""#,
            "port[1].socket_group",
        ),
        (
            PAIR,
            PORT_A,
            r#"socket_mode = "0999""#,
            "port[0].socket_mode",
        ),
        (
            PAIR,
            "cores = [1]",
            r#"control_socket_group = "nope""#,
            "pmd.control_socket_group",
        ),
        (
            PAIR,
            "cores = [1]",
            r#"control_socket_mode = "rw""#,
            "pmd.control_socket_mode",
        ),
        (
            PAIR,
            "cores = [1]",
            r#"keep_capabilities = ["CAP_CHOWN", "CAP_FLY"]"#,
            "pmd.keep_capabilities[1]",
        ),
        (
            MACVLAN,
            r#"uplink = "eth1""#,
            r#"mode = "passthru""#,
            "macvlan[0].ports",
        ),
        (
            MACVLAN,
            r#"uplink = "eth1""#,
            "queues = 0",
            "macvlan[0].queues",
        ),
        (MACVLAN, r#"uplink = "eth1""#, r#"mode = "hub""#, "mode"),
    ];
    let mut cases: Vec<(String, &str)> = replaced
        .iter()
        .map(|&(config, from, to, field)| (config.replace(from, to), field))
        .chain(
            added
                .iter()
                .map(|&(config, anchor, line, field)| (with_line(config, anchor, line), field)),
        )
        .collect();
    cases.push((
        format!("{MACVLAN}\n[[macvlan]]\nuplink = \"eth1\"\nports = [\"vm3\"]"),
        "macvlan[1].uplink",
    ));
    // One port in both a veth pair and a macvlan.
    cases.push((
        format!("{PAIR}\n{MACVLAN}").replace(r#""vm2", "vm3"]"#, r#""vm2", "vm3", "a"]"#),
        "macvlan[0].ports[2]",
    ));
    for (text, field) in cases {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(field), "{err:?} should name {field}");
    }
}
