// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vpmd reload` (and SIGHUP): what it takes to turn the running ports into those
//! of the config file, computed apart from doing it (a pure function, unit-tested
//! alone).
//!
//! Both sides are a [`Layout`]: ports by name, veth pairs, macvlans. The [`Plan`]:
//!
//! | in the running set | in the file | done |
//! |---|---|---|
//! | port P | absent | P removed (its veth pair too) |
//! | absent | port P | P added |
//! | port P | port P, a field changed | P removed and added again (restarted: its VM reconnects) |
//! | veth A-B | absent | pair removed, ports stay unless removed above |
//! | absent, or a port restarted | veth A-B | pair added |
//! | P on macvlan U | P not on U, or restarted | P taken off U (`macvlan del-port`) |
//! | P not on U, or restarted | P on macvlan U | P put on U (`macvlan add-port`) |
//!
//! Refused, with the field and the reason, changing nothing: any `[pmd]` setting
//! (cores, control socket, capabilities, sleep: they are fixed at start-up), and a
//! `[[macvlan]]` added or removed, or with another uplink, mode or queues (its
//! uplink is opened at start-up, with privileges vpmd no longer holds).

use std::collections::BTreeSet;

use crate::config::{Config, MacvlanMode, Port};

/// Ports and what connects them, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Every port.
    pub ports: Vec<Port>,
    /// veth pairs.
    pub veths: Vec<[String; 2]>,
    /// macvlans.
    pub macvlans: Vec<MacvlanLayout>,
}

/// One macvlan, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanLayout {
    /// Uplink interface.
    pub uplink: String,
    /// Mode.
    pub mode: MacvlanMode,
    /// AF_XDP queues.
    pub queues: u32,
    /// `uplink_checksums`.
    pub checksums: crate::fwd::macvlan::checksum::UplinkChecksums,
    /// Its VM ports.
    pub ports: Vec<String>,
}

impl Layout {
    /// The ports of a configuration.
    pub fn of(config: &Config) -> Layout {
        let name = |i: usize| config.ports[i].name.clone();
        Layout {
            ports: config.ports.clone(),
            veths: config
                .veths
                .iter()
                .map(|&[a, b]| [name(a), name(b)])
                .collect(),
            macvlans: config
                .macvlans
                .iter()
                .map(|m| MacvlanLayout {
                    uplink: m.uplink.clone(),
                    mode: m.mode,
                    queues: m.queues,
                    checksums: m.uplink_checksums,
                    ports: m.ports.iter().map(|&i| name(i)).collect(),
                })
                .collect(),
        }
    }

    fn port(&self, name: &str) -> Option<&Port> {
        self.ports.iter().find(|p| p.name == name)
    }
}

/// What a reload does, in this order: veth pairs removed, ports removed, ports
/// added, veth pairs added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Pairs to remove (as they run).
    pub del_veths: Vec<[String; 2]>,
    /// Ports to remove: gone from the file, or changed.
    pub del_ports: Vec<String>,
    /// Ports to add: new in the file, or changed (the file's version).
    pub add_ports: Vec<Port>,
    /// Pairs to add (as the file has them).
    pub add_veths: Vec<[String; 2]>,
    /// (uplink, port) to take off a macvlan, first of all.
    pub macvlan_del: Vec<[String; 2]>,
    /// (uplink, port) to put on a macvlan, last of all.
    pub macvlan_add: Vec<[String; 2]>,
    /// The changed ports among those removed and added again.
    pub restarted: Vec<String>,
}

impl Plan {
    /// Whether the file asks for nothing new.
    pub fn is_empty(&self) -> bool {
        self.del_veths.is_empty()
            && self.del_ports.is_empty()
            && self.add_ports.is_empty()
            && self.add_veths.is_empty()
            && self.macvlan_del.is_empty()
            && self.macvlan_add.is_empty()
    }
}

/// A pair in a canonical order, so that `["a","b"]` and `["b","a"]` are one pair.
fn key(pair: &[String; 2]) -> [&str; 2] {
    let [a, b] = pair;
    if a <= b {
        [a, b]
    } else {
        [b, a]
    }
}

/// What turns `running` (started from `started`'s `[pmd]`) into `file`; or every
/// reason it cannot be done live, each naming the field.
pub fn plan(started: &Config, running: &Layout, file: &Config) -> Result<Plan, Vec<String>> {
    plan_layouts(started, running, file, &Layout::of(file))
}

/// [`plan`] with the file's layout given.
fn plan_layouts(
    started: &Config,
    running: &Layout,
    file: &Config,
    wanted: &Layout,
) -> Result<Plan, Vec<String>> {
    let mut refused = Vec::new();
    let pmd_fields: [(&str, bool); 8] = [
        ("pmd.cores", started.cores != file.cores),
        (
            "pmd.control_socket",
            started.control_socket != file.control_socket,
        ),
        (
            "pmd.control_socket_mode",
            started.control_socket_mode != file.control_socket_mode,
        ),
        (
            "pmd.control_socket_owner",
            started.control_socket_owner != file.control_socket_owner,
        ),
        (
            "pmd.control_socket_group",
            started.control_socket_group != file.control_socket_group,
        ),
        (
            "pmd.keep_capabilities",
            started.keep_capabilities != file.keep_capabilities,
        ),
        (
            "pmd.max_sleep_us",
            started.max_sleep_us != file.max_sleep_us,
        ),
        (
            "pmd.sleep_after_us",
            started.sleep_after_us != file.sleep_after_us,
        ),
    ];
    for (field, changed) in pmd_fields {
        if changed {
            refused.push(format!(
                "{field}: changed in the file; it is fixed at start-up (restart vpmd to \
                 apply it, or set it back to reload the rest)"
            ));
        }
    }
    let shape = |l: &Layout| -> Vec<(String, MacvlanMode, u32, _)> {
        l.macvlans
            .iter()
            .map(|m| (m.uplink.clone(), m.mode, m.queues, m.checksums))
            .collect()
    };
    if shape(running) != shape(wanted) {
        refused.push(
            "macvlan: [[macvlan]] sections added or removed, or with another uplink, mode, \
             queues or uplink_checksums; uplinks are opened at start-up only (restart vpmd to apply it)"
                .to_string(),
        );
    }

    let mut plan = Plan::default();
    for p in &running.ports {
        match wanted.port(&p.name) {
            None => plan.del_ports.push(p.name.clone()),
            Some(q) if q != p => {
                plan.del_ports.push(p.name.clone());
                plan.add_ports.push(q.clone());
                plan.restarted.push(p.name.clone());
            }
            Some(_) => {}
        }
    }
    for q in &wanted.ports {
        if running.port(&q.name).is_none() {
            plan.add_ports.push(q.clone());
        }
    }
    let removed = |name: &String| plan.del_ports.contains(name);
    let wanted_pairs: BTreeSet<[&str; 2]> = wanted.veths.iter().map(key).collect();
    let mut kept: BTreeSet<[&str; 2]> = BTreeSet::new();
    let mut del_veths = Vec::new();
    for v in &running.veths {
        if !wanted_pairs.contains(&key(v)) || v.iter().any(removed) {
            del_veths.push(v.clone());
        } else {
            kept.insert(key(v));
        }
    }
    plan.del_veths = del_veths;
    plan.add_veths = wanted
        .veths
        .iter()
        .filter(|v| !kept.contains(&key(v)))
        .cloned()
        .collect();
    for (r, w) in running.macvlans.iter().zip(&wanted.macvlans) {
        let pair = |p: &String| [r.uplink.clone(), p.clone()];
        for p in &r.ports {
            if !w.ports.contains(p) || plan.del_ports.contains(p) {
                plan.macvlan_del.push(pair(p));
            }
        }
        for p in &w.ports {
            if !r.ports.contains(p) || plan.del_ports.contains(p) {
                plan.macvlan_add.push(pair(p));
            }
        }
    }
    if refused.is_empty() {
        Ok(plan)
    } else {
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let head = "[pmd]\ncores = [0]\ncontrol_socket = \"/tmp/vpmd-reload-test.sock\"\n";
        Config::parse(&format!("{head}{text}"), "test.toml").unwrap()
    }

    fn port(name: &str, mac: u8) -> String {
        format!(
            "[[port]]\nname = \"{name}\"\nsocket = \"/tmp/{name}.sock\"\n\
             mac = \"52:54:00:00:00:{mac:02x}\"\n"
        )
    }

    fn pair(a: &str, b: &str) -> String {
        format!("[[veth]]\nports = [\"{a}\", \"{b}\"]\n")
    }

    fn four() -> String {
        port("a", 1) + &port("b", 2) + &port("c", 3) + &port("d", 4)
    }

    fn names(v: &[[String; 2]]) -> Vec<String> {
        v.iter().map(|[a, b]| format!("{a}-{b}")).collect()
    }

    #[test]
    fn same_file_plans_nothing() {
        let c = config(&(port("a", 1) + &port("b", 2) + &pair("a", "b")));
        let p = plan(&c, &Layout::of(&c), &c).unwrap();
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn from_empty_adds_ports_then_pairs() {
        let empty = config("");
        let file = config(&(port("a", 1) + &port("b", 2) + &pair("b", "a")));
        let p = plan(&empty, &Layout::of(&empty), &file).unwrap();
        let added: Vec<&str> = p.add_ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(added, ["a", "b"]);
        assert_eq!(names(&p.add_veths), ["b-a"]);
        assert!(p.del_ports.is_empty() && p.del_veths.is_empty());
    }

    #[test]
    fn removed_pair_and_ports_go_and_the_rest_stays() {
        let two = config(&(four() + &pair("a", "b") + &pair("c", "d")));
        let one = config(&(port("a", 1) + &port("b", 2) + &pair("a", "b")));
        let p = plan(&two, &Layout::of(&two), &one).unwrap();
        assert_eq!(p.del_ports, ["c", "d"]);
        assert_eq!(names(&p.del_veths), ["c-d"]);
        assert!(p.add_ports.is_empty() && p.add_veths.is_empty(), "{p:?}");
    }

    #[test]
    fn a_changed_port_is_restarted_with_its_pair() {
        let old = config(&(port("a", 1) + &port("b", 2) + &pair("a", "b")));
        let new = config(
            &(port("a", 1)
                + &port("b", 2).replace("[[port]]\n", "[[port]]\nmtu = 9000\n")
                + &pair("a", "b")),
        );
        let p = plan(&old, &Layout::of(&old), &new).unwrap();
        assert_eq!(p.restarted, ["b"]);
        assert_eq!(p.del_ports, ["b"]);
        assert_eq!(p.add_ports.len(), 1);
        assert_eq!(p.add_ports[0].mtu, 9000);
        assert_eq!(names(&p.del_veths), ["a-b"]);
        assert_eq!(names(&p.add_veths), ["a-b"]);
    }

    #[test]
    fn repaired_ports_move_pairs() {
        let old = config(&(four() + &pair("a", "b") + &pair("c", "d")));
        let new = config(&(four() + &pair("a", "c") + &pair("d", "b")));
        let p = plan(&old, &Layout::of(&old), &new).unwrap();
        assert!(p.del_ports.is_empty() && p.add_ports.is_empty());
        assert_eq!(names(&p.del_veths), ["a-b", "c-d"]);
        assert_eq!(names(&p.add_veths), ["a-c", "d-b"]);
    }

    #[test]
    fn runtime_changes_are_compared_too() {
        // Started empty, two ports added at runtime and paired: the file (still
        // empty) takes them away again.
        let empty = config("");
        let file = config(&(port("a", 1) + &port("b", 2) + &pair("a", "b")));
        let running = Layout::of(&file);
        let p = plan(&empty, &running, &empty).unwrap();
        assert_eq!(p.del_ports, ["a", "b"]);
        assert_eq!(names(&p.del_veths), ["a-b"]);
    }

    #[test]
    fn pmd_changes_are_refused_naming_the_field() {
        let old = config(&(port("a", 1) + &port("b", 2) + &pair("a", "b")));
        let text = format!(
            "[pmd]\ncores = [0]\nmax_sleep_us = 50\ncontrol_socket = \"/tmp/other.sock\"\n{}",
            port("a", 1) + &port("b", 2) + &pair("a", "b")
        );
        let new = Config::parse(&text, "test.toml").unwrap();
        let err = plan(&old, &Layout::of(&old), &new).unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[0].starts_with("pmd.control_socket: "), "{err:?}");
        assert!(err[1].starts_with("pmd.max_sleep_us: "), "{err:?}");
    }

    #[test]
    fn macvlan_ports_move_and_changed_ones_are_put_back() {
        let eth = |ports: &[&str]| MacvlanLayout {
            uplink: "eth9".into(),
            mode: MacvlanMode::Bridge,
            queues: 1,
            checksums: Default::default(),
            ports: ports.iter().map(ToString::to_string).collect(),
        };
        let c = config(&(four() + &pair("a", "b") + &pair("c", "d")));
        // Running: "a" moved onto the macvlan (after a `veth del`), no pairs; the
        // file has the pair a-b back, "c" changed and still on the macvlan.
        let mut running = Layout::of(&c);
        running.veths.clear();
        running.macvlans.push(eth(&["c", "a"]));
        let mut file = c.clone();
        file.ports[2].mtu = 9000;
        let mut wanted = Layout::of(&file);
        wanted.veths = vec![["a".into(), "b".into()]];
        wanted.macvlans.push(eth(&["c"]));
        let p = plan_layouts(&c, &running, &file, &wanted).unwrap();
        assert_eq!(p.restarted, ["c"]);
        let pairs = |v: &[[String; 2]]| {
            v.iter()
                .map(|[u, p]| format!("{u}:{p}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(&p.macvlan_del), ["eth9:c", "eth9:a"]);
        assert_eq!(pairs(&p.macvlan_add), ["eth9:c"]);
        assert_eq!(names(&p.add_veths), ["a-b"]);
    }

    #[test]
    fn macvlan_changes_are_refused() {
        let old = config(&(port("a", 1) + &port("b", 2) + &pair("a", "b")));
        let mut running = Layout::of(&old);
        running.macvlans.push(MacvlanLayout {
            uplink: "eth9".into(),
            mode: MacvlanMode::Bridge,
            queues: 1,
            checksums: Default::default(),
            ports: vec![],
        });
        let err = plan(&old, &running, &old).unwrap_err();
        assert!(err[0].starts_with("macvlan: "), "{err:?}");
    }
}
