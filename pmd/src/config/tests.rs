//! Config parsing and validation: the shapes that work, and every error naming its field.

use super::*;

fn host() -> Host {
    Host {
        cpus: 2,
        interface_exists: |name| name == "eth1" || name == "eth2",
    }
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse_for(text, "t.toml", &host()).map_err(|e| e.to_string())
}

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
    let c = parse(PAIR).unwrap();
    assert_eq!(c.ports[1].mode, Mode::Client);
    assert_eq!(c.ports[1].mtu, 9000);
    assert_eq!(c.ports[0].socket_mode, 0o600);
    assert!(!c.ports[0].allow_mac_spoofing);
    let example = include_str!("../../../configs/veth-pair.toml");
    Config::parse_for(example, "veth-pair.toml", &host()).unwrap();
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
    let c = parse(&MACVLAN.replace(
        "ports = [\"vm2\"",
        "queues = 2\nmode = \"vepa\"\nports = [\"vm2\"",
    ))
    .unwrap();
    assert_eq!(
        (c.macvlans[0].queues, c.macvlans[0].mode),
        (2, MacvlanMode::Vepa)
    );
}

#[test]
fn errors_name_the_field() {
    let both = format!("{PAIR}\n{MACVLAN}");
    let cases = [
        (PAIR.replace("mtu = 9000", "mtu = 9001"), "port[1].mtu"),
        (
            PAIR.replace("52:54:00:00:00:02", "52:54:00:00:00:01"),
            "port[1].mac",
        ),
        (
            PAIR.replace("52:54:00:00:00:02", "01:00:5e:00:00:01"),
            "port[1].mac",
        ),
        (PAIR.replace("52:54:00:00:00:02", "nope"), "port[1].mac"),
        (PAIR.replace("cores = [1]", "cores = [7]"), "pmd.cores[0]"),
        (
            PAIR.replace("[\"a\", \"b\"]", "[\"a\", \"c\"]"),
            "veth[0].ports[1]",
        ),
        (
            PAIR.replace("[\"a\", \"b\"]", "[\"a\", \"a\"]"),
            "veth[0].ports[1]",
        ),
        (PAIR.replace("/tmp/b.sock", "/tmp/a.sock"), "port[1].socket"),
        (PAIR.replace("mode = \"client\"", "mode = \"both\""), "mode"),
        (
            PAIR.replace("mtu = 9000", "mtu = 9000\ncolour = 1"),
            "colour",
        ),
        (
            MACVLAN.replace("\"eth1\"", "\"nosuch0\""),
            "macvlan[0].uplink",
        ),
        (
            MACVLAN.replace("ports = [\"vm2\", \"vm3\"]", "ports = [\"vm2\", \"vm9\"]"),
            "macvlan[0].ports[1]",
        ),
        (
            MACVLAN.replace("ports = [\"vm2\"", "mode = \"passthru\"\nports = [\"vm2\""),
            "macvlan[0].ports",
        ),
        (
            MACVLAN.replace("ports = [\"vm2\"", "queues = 0\nports = [\"vm2\""),
            "macvlan[0].queues",
        ),
        (
            MACVLAN.replace("ports = [\"vm2\"", "mode = \"hub\"\nports = [\"vm2\""),
            "mode",
        ),
        (
            MACVLAN.replace("52:54:00:00:00:13", "52:54:00:00:00:12"),
            "port[1].mac",
        ),
        (
            MACVLAN.replace("ports = [\"vm2\", \"vm3\"]", "ports = [\"vm2\"]"),
            "port[1]",
        ),
        (
            format!("{MACVLAN}\n[[macvlan]]\nuplink = \"eth1\"\nports = [\"vm3\"]"),
            "macvlan[1].uplink",
        ),
        // One port in both a veth pair and a macvlan.
        (
            both.replace(
                "ports = [\"vm2\", \"vm3\"]",
                "ports = [\"vm2\", \"vm3\", \"a\"]",
            ),
            "macvlan[0].ports[2]",
        ),
    ];
    for (text, field) in cases {
        let err = parse(&text).unwrap_err();
        assert!(err.contains(field), "{err:?} should name {field}");
    }
}
