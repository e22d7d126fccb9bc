// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Config checks of the operations fields (`pmd.metrics`), apart from `tests.rs`.

use super::test_support::{host, PORTS_AB};
use super::*;

fn with_pmd(pmd: &str) -> Result<Config, String> {
    let text = format!("[pmd]\n{pmd}\n{PORTS_AB}");
    Config::parse_for(&text, "t.toml", &host()).map_err(|e| format!("{:#}", anyhow::Error::from(e)))
}

#[test]
fn metrics_is_off_by_default_and_takes_an_address() {
    assert_eq!(with_pmd("").unwrap().metrics, None);
    assert_eq!(Config::builtin().metrics, None);
    let c = with_pmd(r#"metrics = "127.0.0.1:9477""#).unwrap();
    assert_eq!(c.metrics, Some("127.0.0.1:9477".parse().unwrap()));
    let c = with_pmd(r#"metrics = "[::1]:9477""#).unwrap();
    assert_eq!(c.metrics.unwrap().port(), 9477);
}

#[test]
fn bad_metrics_addresses_name_the_field() {
    for (value, why) in [
        (r#""localhost:9477""#, "is not an IP address and port"),
        (r#""127.0.0.1""#, "is not an IP address and port"),
        (r#""127.0.0.1:99999""#, "is not an IP address and port"),
        (r#""0.0.0.0:0""#, "needs a port other than 0"),
    ] {
        let e = with_pmd(&format!("metrics = {value}")).unwrap_err();
        assert!(e.starts_with("t.toml: pmd.metrics: "), "{value}: {e}");
        assert!(e.contains(why), "{value}: {e}");
    }
    let e = with_pmd("metrics = 9477").unwrap_err();
    assert!(e.contains("metrics"), "{e}");
}

#[test]
fn the_service_example_parses_and_every_example_shows_metrics() {
    let text = include_str!("../../../configs/vpmd.toml");
    let c = Config::parse_for(text, "vpmd.toml", &host()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.metrics, Some("127.0.0.1:9477".parse().unwrap()));
    assert_eq!(c.ports.len(), 2);
    for (name, text) in [
        (
            "veth-pair.toml",
            include_str!("../../../configs/veth-pair.toml"),
        ),
        (
            "macvlan.toml",
            include_str!("../../../configs/macvlan.toml"),
        ),
    ] {
        assert!(
            text.contains("metrics = \"127.0.0.1:9477\""),
            "{name} shows pmd.metrics"
        );
    }
}
