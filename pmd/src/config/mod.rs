// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vpmd's configuration: TOML in, a validated [`Config`] out.
//!
//! - this file: the file's shape (serde, `deny_unknown_fields`) and the validated types;
//! - [`validate`]: the checks, each error naming the file and the field (`port[1].mac`).
//!
//! [`Config::builtin`] is what `vpmd run` uses without `--config`.

#[cfg(test)]
mod request_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_ops;
mod validate;

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vpmd/control.sock";
/// Largest MTU a port may have (jumbo frames).
pub const MAX_MTU: u16 = 9000;
/// Smallest MTU a port may have (IPv4 minimum).
pub const MIN_MTU: u16 = 68;
/// Most VM ports one macvlan uplink serves (a 64-bit destination mask per frame).
pub const MAX_MACVLAN_PORTS: usize = 64;
/// Most AF_XDP queues one uplink may use.
pub const MAX_UPLINK_QUEUES: u32 = 64;
/// Longest idle sleep a polling thread may be given (`pmd.max_sleep_us`).
pub const MAX_SLEEP_US: u32 = 10_000;
/// Idle time after which a polling thread sleeps until a guest kicks, by default
/// (`pmd.sleep_after_us`): a pause in traffic longer than this costs one wake-up.
pub const DEFAULT_SLEEP_AFTER_US: u32 = 1_000;
/// Largest `pmd.sleep_after_us` (10 s).
pub const MAX_SLEEP_AFTER_US: u32 = 10_000_000;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read")]
    Read {
        /// Config file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{file}")]
    Parse {
        /// Config file.
        file: PathBuf,
        /// Cause (names the field and position).
        #[source]
        source: toml::de::Error,
    },
    /// A field has a value vpmd cannot use.
    #[error("{file}: {field}: {reason}")]
    Invalid {
        /// Config file.
        file: String,
        /// The field, e.g. `port[1].mac`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// A port's MAC address: the workspace's one MAC type.
pub use vpmd_uplink::MacAddr;

/// Socket role of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// vpmd listens on the socket.
    #[default]
    Server,
    /// vpmd connects to a socket the frontend listens on.
    Client,
}

/// How a macvlan forwards between its VM ports, as Linux macvlan's modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    /// VM-to-VM frames go straight across; group frames go to the other VMs and out.
    #[default]
    Bridge,
    /// No VM-to-VM traffic at all; everything goes out of the uplink.
    Private,
    /// Everything goes out of the uplink; what comes back is delivered by MAC.
    Vepa,
    /// One VM port owns the uplink: every frame in both directions.
    Passthru,
}

impl MacvlanMode {
    /// The name used in the config file and logs.
    pub fn name(self) -> &'static str {
        match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        }
    }
}

/// `[pmd]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPmd {
    cores: Option<Vec<usize>>,
    control_socket: Option<PathBuf>,
    control_socket_mode: Option<String>,
    control_socket_owner: Option<IdOrName>,
    control_socket_group: Option<IdOrName>,
    keep_capabilities: Option<Vec<String>>,
    #[serde(default)]
    max_sleep_us: u32,
    sleep_after_us: Option<u32>,
    metrics: Option<String>,
}

/// A user or group: a numeric id, or a name looked up on this host.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum IdOrName {
    Id(u32),
    Name(String),
}

/// `[[port]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    name: String,
    socket: PathBuf,
    #[serde(default)]
    mode: Mode,
    mac: String,
    // Wider than the MTU can be, so that an out-of-range value gets our error
    // naming the field rather than serde's "expected u16".
    #[serde(default = "default_mtu")]
    mtu: u64,
    /// Queue pairs (VIRTIO_NET_F_MQ when above 1).
    #[serde(default = "default_queue_pairs")]
    queues: u64,
    /// The core polling each queue pair's TX queue (like OVS's pmd-rxq-affinity).
    #[serde(default)]
    queue_cores: Option<Vec<u64>>,
    #[serde(default)]
    socket_mode: Option<String>,
    #[serde(default)]
    socket_owner: Option<IdOrName>,
    #[serde(default)]
    socket_group: Option<IdOrName>,
    #[serde(default)]
    allow_mac_spoofing: bool,
    #[serde(default = "default_max_memory_mib")]
    max_memory_mib: u64,
    #[serde(default = "default_max_messages_per_sec")]
    max_messages_per_sec: u64,
    #[serde(default)]
    offload: RawOffload,
}

/// `offload = { ... }` of a `[[port]]`: the virtio-net offloads the port offers,
/// all on by default. Switching `csum` off switches the HOST_TSO/ECN offloads off
/// too, `guest_csum` the GUEST_TSO/ECN ones (the spec makes them depend on it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(clippy::struct_excessive_bools)] // One switch per virtio feature bit.
struct RawOffload {
    #[serde(default = "yes")]
    csum: bool,
    #[serde(default = "yes")]
    guest_csum: bool,
    #[serde(default = "yes")]
    host_tso4: bool,
    #[serde(default = "yes")]
    host_tso6: bool,
    #[serde(default = "yes")]
    guest_tso4: bool,
    #[serde(default = "yes")]
    guest_tso6: bool,
    #[serde(default = "yes")]
    host_ecn: bool,
    #[serde(default = "yes")]
    guest_ecn: bool,
}

impl Default for RawOffload {
    fn default() -> Self {
        RawOffload {
            csum: true,
            guest_csum: true,
            host_tso4: true,
            host_tso6: true,
            guest_tso4: true,
            guest_tso6: true,
            host_ecn: true,
            guest_ecn: true,
        }
    }
}

impl RawOffload {
    /// The virtio feature bits switched on, closed under their dependencies.
    fn bits(&self) -> u64 {
        use virtio_bindings::virtio_net as n;
        let switches = [
            (self.csum, n::VIRTIO_NET_F_CSUM),
            (self.guest_csum, n::VIRTIO_NET_F_GUEST_CSUM),
            (self.host_tso4, n::VIRTIO_NET_F_HOST_TSO4),
            (self.host_tso6, n::VIRTIO_NET_F_HOST_TSO6),
            (self.guest_tso4, n::VIRTIO_NET_F_GUEST_TSO4),
            (self.guest_tso6, n::VIRTIO_NET_F_GUEST_TSO6),
            (self.host_ecn, n::VIRTIO_NET_F_HOST_ECN),
            (self.guest_ecn, n::VIRTIO_NET_F_GUEST_ECN),
        ];
        let wanted = switches
            .iter()
            .filter(|(on, _)| *on)
            .fold(0u64, |acc, (_, bit)| acc | (1 << bit));
        vpmd_backend::features::offload_closure(wanted)
    }
}

fn yes() -> bool {
    true
}

fn default_mtu() -> u64 {
    1500
}

fn default_queue_pairs() -> u64 {
    1
}

fn default_max_memory_mib() -> u64 {
    vpmd_backend::conn_limits::ConnLimits::DEFAULT.max_memory >> 20
}

fn default_max_messages_per_sec() -> u64 {
    u64::from(vpmd_backend::conn_limits::ConnLimits::DEFAULT.messages_per_sec)
}

/// `[[veth]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVeth {
    ports: [String; 2],
}

/// `[[macvlan]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMacvlan {
    uplink: String,
    #[serde(default = "default_queues")]
    queues: u32,
    #[serde(default)]
    mode: MacvlanMode,
    ports: Vec<String>,
    #[serde(default)]
    uplink_checksums: crate::fwd::macvlan::checksum::UplinkChecksums,
}

fn default_queues() -> u32 {
    1
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    pmd: RawPmd,
    #[serde(default, rename = "port")]
    ports: Vec<RawPort>,
    #[serde(default, rename = "veth")]
    veths: Vec<RawVeth>,
    #[serde(default, rename = "macvlan")]
    macvlans: Vec<RawMacvlan>,
}

/// A validated port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Name.
    pub name: String,
    /// Socket path.
    pub socket: PathBuf,
    /// Role.
    pub mode: Mode,
    /// MAC.
    pub mac: MacAddr,
    /// MTU.
    pub mtu: u16,
    /// Queue pairs offered (`queues`; 1: no VIRTIO_NET_F_MQ).
    pub queue_pairs: usize,
    /// The core (one of `pmd.cores`) whose thread polls queue pair `n`'s TX queue
    /// (`queue_cores`); empty: dealt out automatically.
    pub queue_cores: Vec<usize>,
    /// Socket permission bits.
    pub socket_mode: u32,
    /// Owner (uid) the socket file is given (server role); `None`: vpmd's user.
    pub socket_owner: Option<u32>,
    /// Group (gid) the socket file is given (server role); `None`: vpmd's group.
    pub socket_group: Option<u32>,
    /// May send with a source MAC other than its own (macvlan ports).
    pub allow_mac_spoofing: bool,
    /// What each frontend connection may map and send (max_memory_mib,
    /// max_messages_per_sec).
    pub limits: vpmd_backend::conn_limits::ConnLimits,
    /// The offload feature bits offered (`offload = { ... }`).
    pub offloads: u64,
}

/// A validated macvlan: VM ports hanging off one uplink interface.
#[derive(Debug, Clone)]
pub struct Macvlan {
    /// The kernel interface read and written through AF_XDP.
    pub uplink: String,
    /// AF_XDP sockets (uplink RX queues 0..queues).
    pub queues: u32,
    /// Forwarding mode.
    pub mode: MacvlanMode,
    /// What is done with the TCP/UDP checksums of frames from the uplink.
    pub uplink_checksums: crate::fwd::macvlan::checksum::UplinkChecksums,
    /// Its VM ports, as indices into [`Config::ports`].
    pub ports: Vec<usize>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Polling cores.
    pub cores: Vec<usize>,
    /// Control socket.
    pub control_socket: PathBuf,
    /// Control socket permission bits (default 0600).
    pub control_socket_mode: u32,
    /// Control socket owner (uid); `None`: vpmd's user.
    pub control_socket_owner: Option<u32>,
    /// Control socket group (gid); `None`: vpmd's group.
    pub control_socket_group: Option<u32>,
    /// Capabilities kept after start-up (bit n = capability n); default none.
    pub keep_capabilities: u64,
    /// Longest sleep of an idle polling thread, in microseconds (0: busy-poll).
    pub max_sleep_us: u32,
    /// Idle time after which a polling thread sleeps until a guest kicks, in
    /// microseconds (0: never, busy-poll as DPDK and OVS do).
    pub sleep_after_us: u32,
    /// Where Prometheus metrics are served (`GET /metrics`); `None`: nowhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Ports, in file order.
    pub ports: Vec<Port>,
    /// veth pairs as indices into `ports`.
    pub veths: Vec<[usize; 2]>,
    /// macvlans.
    pub macvlans: Vec<Macvlan>,
}

/// The configuration `vpmd run` uses without `--config`.
pub const BUILTIN: &str = r#"
[[port]]
name = "vm0"
socket = "/run/vpmd/vm0.sock"
mode = "server"
mac = "52:54:00:00:00:01"
mtu = 1500

[[port]]
name = "vm1"
socket = "/run/vpmd/vm1.sock"
mode = "server"
mac = "52:54:00:00:00:02"
mtu = 1500

[[veth]]
ports = ["vm0", "vm1"]
"#;

/// What validation needs to know about the machine.
pub struct Host {
    /// Number of CPUs.
    pub cpus: usize,
    /// Whether a kernel network interface of this name exists.
    pub interface_exists: fn(&str) -> bool,
    /// The uid of a user name, if there is such a user.
    pub user_id: fn(&str) -> Option<u32>,
    /// The gid of a group name, if there is such a group.
    pub group_id: fn(&str) -> Option<u32>,
}

impl Host {
    /// This machine.
    pub fn this() -> Host {
        Host {
            cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            interface_exists: |name| {
                !name.is_empty()
                    && !name.contains('/')
                    && Path::new("/sys/class/net").join(name).exists()
            },
            user_id: |name| crate::privileges::user_id(name).ok().flatten(),
            group_id: |name| crate::privileges::group_id(name).ok().flatten(),
        }
    }
}

/// What names a runtime request in its errors (`request: port.mac: ...`).
pub const REQUEST: &str = "request";

impl Port {
    /// A port sent at runtime (`vpmd port add`): a JSON object of the `[[port]]`
    /// fields, with the file's defaults, unknown fields refused, and the same checks,
    /// errors naming the field as `port.mac`; unique among the `running` ports.
    pub fn from_request(value: serde_json::Value, running: &[&Port]) -> Result<Port, ConfigError> {
        Self::from_request_for(value, running, &Host::this())
    }

    fn from_request_for(
        value: serde_json::Value,
        running: &[&Port],
        host: &Host,
    ) -> Result<Port, ConfigError> {
        let raw: RawPort = serde_json::from_value(value).map_err(|e| ConfigError::Invalid {
            file: REQUEST.to_string(),
            field: "port".to_string(),
            reason: e.to_string(),
        })?;
        validate::runtime_port(&raw, running, REQUEST, host)
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The built-in default.
    pub fn builtin() -> Config {
        Self::parse(BUILTIN, "<built-in>").expect("the built-in configuration is valid")
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Self::parse_for(text, file, &Host::this())
    }

    fn parse_for(text: &str, file: &str, host: &Host) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            file: PathBuf::from(file),
            source,
        })?;
        validate::validate(raw, file, host)
    }
}
