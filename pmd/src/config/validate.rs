// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Checks a parsed file and builds the [`Config`]: every error names the file, the
//! field (`port[1].mac`, `macvlan[0].uplink`) and what is wrong.

use std::collections::HashSet;
use std::path::PathBuf;

use super::{
    Config, ConfigError, Host, IdOrName, MacAddr, Macvlan, MacvlanMode, Mode, Port, RawConfig,
    RawPort, DEFAULT_CONTROL_SOCKET, DEFAULT_SLEEP_AFTER_US, MAX_MACVLAN_PORTS, MAX_MTU,
    MAX_SLEEP_AFTER_US, MAX_SLEEP_US, MAX_UPLINK_QUEUES, MIN_MTU,
};

/// Builds errors for one file.
struct Errors<'a> {
    file: &'a str,
}

impl Errors<'_> {
    fn at(&self, field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub(super) fn validate(raw: RawConfig, file: &str, host: &Host) -> Result<Config, ConfigError> {
    let err = Errors { file };
    let cores = validate_cores(&raw, host.cpus, &err)?;
    // No [[port]] at all is valid: vpmd then runs with none, and ports are added at
    // runtime (`vpmd port add`); main says so when it starts.
    let ports = validate_ports(&raw.ports, host, &err)?;
    for (i, p) in ports.iter().enumerate() {
        for (q, c) in p.queue_cores.iter().enumerate() {
            if !cores.contains(c) {
                return Err(err.at(
                    format!("port[{i}].queue_cores[{q}]"),
                    format!("core {c} is not one of pmd.cores {cores:?}"),
                ));
            }
        }
    }

    // Which veth or macvlan each port belongs to: at most one.
    let mut owner: Vec<Option<String>> = vec![None; ports.len()];
    let mut claim = |idx: usize, field: &str, by: String| -> Result<(), ConfigError> {
        if let Some(other) = &owner[idx] {
            return Err(err.at(
                field,
                format!("port {:?} already belongs to {other}", ports[idx].name),
            ));
        }
        owner[idx] = Some(by);
        Ok(())
    };
    let find = |name: &str, field: &str| {
        ports
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| err.at(field, format!("no [[port]] is named {name:?}")))
    };

    let mut veths = Vec::new();
    for (i, v) in raw.veths.iter().enumerate() {
        let mut pair = [0usize; 2];
        for (j, name) in v.ports.iter().enumerate() {
            let field = format!("veth[{i}].ports[{j}]");
            let idx = find(name, &field)?;
            claim(idx, &field, format!("veth[{i}]"))?;
            pair[j] = idx;
        }
        veths.push(pair);
    }

    let mut macvlans = Vec::new();
    let mut uplinks = HashSet::new();
    for (i, m) in raw.macvlans.iter().enumerate() {
        let f = |name: &str| format!("macvlan[{i}].{name}");
        if !(host.interface_exists)(&m.uplink) {
            return Err(err.at(
                f("uplink"),
                format!("no network interface named {:?} on this host", m.uplink),
            ));
        }
        if !uplinks.insert(m.uplink.clone()) {
            return Err(err.at(
                f("uplink"),
                format!("{:?} is the uplink of another [[macvlan]]", m.uplink),
            ));
        }
        if !(1..=MAX_UPLINK_QUEUES).contains(&m.queues) {
            return Err(err.at(
                f("queues"),
                format!("{} is outside 1-{MAX_UPLINK_QUEUES}", m.queues),
            ));
        }
        if m.ports.is_empty() || m.ports.len() > MAX_MACVLAN_PORTS {
            return Err(err.at(
                f("ports"),
                format!("needs 1-{MAX_MACVLAN_PORTS} ports, has {}", m.ports.len()),
            ));
        }
        if m.mode == MacvlanMode::Passthru && m.ports.len() != 1 {
            return Err(err.at(
                f("ports"),
                "passthru mode gives the uplink to exactly one port",
            ));
        }
        let mut idxs = Vec::new();
        for (j, name) in m.ports.iter().enumerate() {
            let field = format!("macvlan[{i}].ports[{j}]");
            let idx = find(name, &field)?;
            claim(idx, &field, format!("macvlan[{i}]"))?;
            idxs.push(idx);
        }
        macvlans.push(Macvlan {
            uplink: m.uplink.clone(),
            queues: m.queues,
            mode: m.mode,
            uplink_checksums: m.uplink_checksums,
            ports: idxs,
        });
    }

    if let Some(i) = owner.iter().position(Option::is_none) {
        return Err(err.at(
            format!("port[{i}]"),
            format!(
                "port {:?} is in no [[veth]] or [[macvlan]]: its frames would go nowhere",
                ports[i].name
            ),
        ));
    }
    let mut keep_capabilities = 0u64;
    for (i, name) in raw.pmd.keep_capabilities.iter().flatten().enumerate() {
        let cap = crate::privileges::capability(name).ok_or_else(|| {
            err.at(
                format!("pmd.keep_capabilities[{i}]"),
                format!("{name:?} is not a capability name like \"CAP_DAC_OVERRIDE\""),
            )
        })?;
        keep_capabilities |= 1u64 << cap;
    }
    if raw.pmd.max_sleep_us > MAX_SLEEP_US {
        return Err(err.at(
            "pmd.max_sleep_us",
            format!(
                "{} is above {MAX_SLEEP_US} (a longer sleep would overrun the rings)",
                raw.pmd.max_sleep_us
            ),
        ));
    }
    let sleep_after_us = raw.pmd.sleep_after_us.unwrap_or(DEFAULT_SLEEP_AFTER_US);
    if sleep_after_us > MAX_SLEEP_AFTER_US {
        return Err(err.at(
            "pmd.sleep_after_us",
            format!("{sleep_after_us} is above {MAX_SLEEP_AFTER_US} (10 s); 0 busy-polls"),
        ));
    }
    let metrics = validate_metrics(raw.pmd.metrics.as_deref(), &err)?;
    Ok(Config {
        cores,
        metrics,
        max_sleep_us: raw.pmd.max_sleep_us,
        sleep_after_us,
        control_socket: raw
            .pmd
            .control_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        control_socket_mode: parse_mode(
            raw.pmd.control_socket_mode.as_deref(),
            "pmd.control_socket_mode",
            &err,
        )?,
        control_socket_owner: socket_id(
            raw.pmd.control_socket_owner.as_ref(),
            "pmd.control_socket_owner",
            host.user_id,
            "user",
            &err,
        )?,
        control_socket_group: socket_id(
            raw.pmd.control_socket_group.as_ref(),
            "pmd.control_socket_group",
            host.group_id,
            "group",
            &err,
        )?,
        keep_capabilities,
        ports,
        veths,
        macvlans,
    })
}

fn validate_cores(raw: &RawConfig, cpus: usize, err: &Errors) -> Result<Vec<usize>, ConfigError> {
    let cores = raw.pmd.cores.clone().unwrap_or_else(|| vec![cpus - 1]);
    if cores.is_empty() {
        return Err(err.at("pmd.cores", "needs at least one core"));
    }
    let mut seen = HashSet::new();
    for (i, &c) in cores.iter().enumerate() {
        if c >= cpus {
            return Err(err.at(
                format!("pmd.cores[{i}]"),
                format!(
                    "core {c} does not exist (this machine has cores 0-{})",
                    cpus - 1
                ),
            ));
        }
        if !seen.insert(c) {
            return Err(err.at(
                format!("pmd.cores[{i}]"),
                format!("core {c} is listed twice"),
            ));
        }
    }
    Ok(cores)
}

/// `pmd.metrics`: an IP address and a port (`"127.0.0.1:9477"`, `"[::1]:9477"`).
fn validate_metrics(
    text: Option<&str>,
    err: &Errors,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let addr: std::net::SocketAddr = text.parse().map_err(|_| {
        err.at(
            "pmd.metrics",
            format!("{text:?} is not an IP address and port like \"127.0.0.1:9477\""),
        )
    })?;
    if addr.port() == 0 {
        return Err(err.at("pmd.metrics", format!("{text:?} needs a port other than 0")));
    }
    Ok(Some(addr))
}

/// Permission bits written as octal ("0660"); default 0600.
fn parse_mode(text: Option<&str>, field: &str, err: &Errors) -> Result<u32, ConfigError> {
    match text {
        None => Ok(0o600),
        Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| err.at(field, format!("{s:?} is not an octal mode like \"0660\""))),
    }
}

/// A socket's owner or group: a number as is, a name looked up with `lookup`.
fn socket_id(
    spec: Option<&IdOrName>,
    field: &str,
    lookup: fn(&str) -> Option<u32>,
    what: &str,
    err: &Errors,
) -> Result<Option<u32>, ConfigError> {
    let id = match spec {
        None => return Ok(None),
        Some(IdOrName::Id(id)) => *id,
        Some(IdOrName::Name(name)) => match name.parse::<u32>() {
            Ok(id) => id,
            Err(_) if name.is_empty() => return Err(err.at(field, "is empty")),
            Err(_) => lookup(name)
                .ok_or_else(|| err.at(field, format!("no {what} named {name:?} on this host")))?,
        },
    };
    // chown(2) reads -1 as "leave unchanged".
    if id == u32::MAX {
        return Err(err.at(field, format!("{id} is not a valid {what} id")));
    }
    Ok(Some(id))
}

fn validate_ports(raw: &[RawPort], host: &Host, err: &Errors) -> Result<Vec<Port>, ConfigError> {
    let mut ports: Vec<Port> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let f = |name: &str| format!("port[{i}].{name}");
        let port = validate_port(p, &f, host, err)?;
        check_unique(&port, &ports, &f, err)?;
        ports.push(port);
    }
    Ok(ports)
}

/// A port added at runtime (`vpmd port add`): the same checks as a `[[port]]` of the
/// file, and unique among the `running` ones. Errors name the field as `port.mac`;
/// `file` names the request in them.
pub(super) fn runtime_port(
    raw: &RawPort,
    running: &[&Port],
    file: &str,
    host: &Host,
) -> Result<Port, ConfigError> {
    let err = Errors { file };
    let f = |name: &str| format!("port.{name}");
    let port = validate_port(raw, &f, host, &err)?;
    check_unique(&port, running, &f, &err)?;
    Ok(port)
}

/// `port`'s name, socket and MAC are used by none of `others`.
fn check_unique<P: std::borrow::Borrow<Port>>(
    port: &Port,
    others: &[P],
    f: &dyn Fn(&str) -> String,
    err: &Errors,
) -> Result<(), ConfigError> {
    for o in others.iter().map(std::borrow::Borrow::borrow) {
        if o.name == port.name {
            return Err(err.at(
                f("name"),
                format!("port name {:?} is used twice", port.name),
            ));
        }
        if o.socket == port.socket {
            return Err(err.at(
                f("socket"),
                format!("{} is used by another port", port.socket.display()),
            ));
        }
        if o.mac == port.mac {
            return Err(err.at(f("mac"), format!("{} is used by another port", port.mac)));
        }
    }
    Ok(())
}

/// One port's own fields; `f` names them (`port[1].mac`, `port.mac`).
fn validate_port(
    p: &RawPort,
    f: &dyn Fn(&str) -> String,
    host: &Host,
    err: &Errors,
) -> Result<Port, ConfigError> {
    {
        let name_ok = !p.name.is_empty()
            && p.name.len() <= 32
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(err.at(
                f("name"),
                format!(
                    "{:?} must be 1-32 characters of letters, digits, '-', '_' or '.'",
                    p.name
                ),
            ));
        }
        if p.socket.as_os_str().is_empty() {
            return Err(err.at(f("socket"), "is empty"));
        }
        let mac: MacAddr = p
            .mac
            .parse()
            .map_err(|e: vpmd_uplink::MacParseError| err.at(f("mac"), e.to_string()))?;
        if mac.is_multicast() || mac.is_zero() {
            return Err(err.at(f("mac"), format!("{mac} is not a unicast address")));
        }
        let mtu = match u16::try_from(p.mtu) {
            Ok(m) if (MIN_MTU..=MAX_MTU).contains(&m) => m,
            _ => {
                return Err(err.at(
                    f("mtu"),
                    format!("{} is outside {MIN_MTU}-{MAX_MTU}", p.mtu),
                ))
            }
        };
        let max_pairs = vpmd_backend::port::MAX_QUEUE_PAIRS;
        let queue_pairs = match usize::try_from(p.queues) {
            Ok(n) if (1..=max_pairs).contains(&n) => n,
            _ => {
                return Err(err.at(
                    f("queues"),
                    format!("{} is outside 1-{max_pairs}", p.queues),
                ))
            }
        };
        let queue_cores = match &p.queue_cores {
            None => Vec::new(),
            Some(list) if list.len() != queue_pairs => {
                return Err(err.at(
                    f("queue_cores"),
                    format!(
                        "names {} cores for {queue_pairs} queue pair(s): one core per pair",
                        list.len()
                    ),
                ))
            }
            Some(list) => list.iter().map(|&c| c as usize).collect(),
        };
        let socket_mode = parse_mode(p.socket_mode.as_deref(), &f("socket_mode"), err)?;
        let socket_owner = socket_id(
            p.socket_owner.as_ref(),
            &f("socket_owner"),
            host.user_id,
            "user",
            err,
        )?;
        let socket_group = socket_id(
            p.socket_group.as_ref(),
            &f("socket_group"),
            host.group_id,
            "group",
            err,
        )?;
        if p.mode == Mode::Client {
            for (set, name) in [
                (socket_owner.is_some(), "socket_owner"),
                (socket_group.is_some(), "socket_group"),
            ] {
                if set {
                    return Err(err.at(
                        f(name),
                        "applies to server-role sockets only: in the client role the \
                         frontend creates the socket",
                    ));
                }
            }
        }
        const MAX_MEMORY_MIB: u64 = 16 << 20; // 16 TiB
        if p.max_memory_mib == 0 || p.max_memory_mib > MAX_MEMORY_MIB {
            return Err(err.at(
                f("max_memory_mib"),
                format!("{} is outside 1-{MAX_MEMORY_MIB}", p.max_memory_mib),
            ));
        }
        let messages_per_sec = match u32::try_from(p.max_messages_per_sec) {
            Ok(n) if (10..=1_000_000).contains(&n) => n,
            _ => {
                return Err(err.at(
                    f("max_messages_per_sec"),
                    format!("{} is outside 10-1000000", p.max_messages_per_sec),
                ))
            }
        };
        let limits = vpmd_backend::conn_limits::ConnLimits {
            max_memory: p.max_memory_mib << 20,
            messages_per_sec,
            message_burst: messages_per_sec.saturating_mul(4).max(4096),
        };
        Ok(Port {
            limits,
            name: p.name.clone(),
            socket: p.socket.clone(),
            mode: p.mode,
            mac,
            mtu,
            queue_pairs,
            queue_cores,
            socket_mode,
            socket_owner,
            socket_group,
            allow_mac_spoofing: p.allow_mac_spoofing,
            offloads: p.offload.bits(),
        })
    }
}
