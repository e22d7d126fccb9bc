//! vpmd's configuration: TOML in, a validated [`Config`] out.
//!
//! Every error names the file and the field (`port[1].mac`) and says what is wrong.
//! [`Config::builtin`] is what `vpmd run` uses without `--config`.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/vpmd/control.sock";
/// Largest MTU a port may have (jumbo frames).
pub const MAX_MTU: u16 = 9000;
/// Smallest MTU a port may have (IPv4 minimum).
pub const MIN_MTU: u16 = 68;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// Config file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{file}: {source}")]
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

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (want six hex bytes like 52:54:00:00:00:01)"
            ));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16)
                .ok()
                .filter(|_| p.len() == 2)
                .ok_or_else(|| format!("{s:?} is not a MAC address (bad byte {p:?})"))?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

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

/// `[pmd]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PmdConfig {
    /// Cores the polling threads are pinned to, one thread each. Default: the last core.
    pub cores: Option<Vec<usize>>,
    /// Control socket for `vpmd stats`.
    pub control_socket: Option<PathBuf>,
}

/// `[[port]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Unique port name.
    pub name: String,
    /// vhost-user socket path.
    pub socket: PathBuf,
    /// Socket role.
    #[serde(default)]
    pub mode: Mode,
    /// MAC address shown to the guest.
    pub mac: String,
    /// MTU shown to the guest.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Permission bits of the socket file in the server role (octal string), default "0600".
    #[serde(default)]
    pub socket_mode: Option<String>,
}

fn default_mtu() -> u16 {
    1500
}

/// `[[veth]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VethConfig {
    /// The two ports of the pair.
    pub ports: [String; 2],
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    pmd: PmdConfig,
    #[serde(default, rename = "port")]
    ports: Vec<PortConfig>,
    #[serde(default, rename = "veth")]
    veths: Vec<VethConfig>,
}

/// A validated port.
#[derive(Debug, Clone)]
pub struct Port {
    /// Name.
    pub name: String,
    /// Socket path.
    pub socket: PathBuf,
    /// Role.
    pub mode: Mode,
    /// MAC.
    pub mac: Mac,
    /// MTU.
    pub mtu: u16,
    /// Socket permission bits.
    pub socket_mode: u32,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Polling cores.
    pub cores: Vec<usize>,
    /// Control socket.
    pub control_socket: PathBuf,
    /// Ports, in file order.
    pub ports: Vec<Port>,
    /// veth pairs as indices into `ports`.
    pub veths: Vec<[usize; 2]>,
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
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            file: PathBuf::from(file),
            source,
        })?;
        validate(raw, file, num_cpus())
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn validate(raw: RawConfig, file: &str, cpus: usize) -> Result<Config, ConfigError> {
    let bad = |field: String, reason: String| ConfigError::Invalid {
        file: file.to_string(),
        field,
        reason,
    };
    let cores = raw.pmd.cores.clone().unwrap_or_else(|| vec![cpus - 1]);
    if cores.is_empty() {
        return Err(bad("pmd.cores".into(), "needs at least one core".into()));
    }
    let mut seen_cores = HashSet::new();
    for (i, &c) in cores.iter().enumerate() {
        if c >= cpus {
            return Err(bad(
                format!("pmd.cores[{i}]"),
                format!(
                    "core {c} does not exist (this machine has cores 0-{})",
                    cpus - 1
                ),
            ));
        }
        if !seen_cores.insert(c) {
            return Err(bad(
                format!("pmd.cores[{i}]"),
                format!("core {c} is listed twice"),
            ));
        }
    }
    if raw.ports.is_empty() {
        return Err(bad("port".into(), "no [[port]] is configured".into()));
    }
    let mut ports = Vec::new();
    let (mut names, mut sockets, mut macs) = (HashSet::new(), HashSet::new(), HashSet::new());
    for (i, p) in raw.ports.iter().enumerate() {
        let f = |name: &str| format!("port[{i}].{name}");
        if p.name.is_empty()
            || p.name.len() > 32
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                f("name"),
                format!(
                    "{:?} must be 1-32 characters of letters, digits, '-', '_' or '.'",
                    p.name
                ),
            ));
        }
        if !names.insert(p.name.clone()) {
            return Err(bad(
                f("name"),
                format!("port name {:?} is used twice", p.name),
            ));
        }
        if p.socket.as_os_str().is_empty() {
            return Err(bad(f("socket"), "is empty".into()));
        }
        if !sockets.insert(p.socket.clone()) {
            return Err(bad(
                f("socket"),
                format!("{} is used by another port", p.socket.display()),
            ));
        }
        let mac: Mac = p.mac.parse().map_err(|e| bad(f("mac"), e))?;
        if mac.0[0] & 1 != 0 || mac.0 == [0; 6] {
            return Err(bad(f("mac"), format!("{mac} is not a unicast address")));
        }
        if !macs.insert(mac) {
            return Err(bad(f("mac"), format!("{mac} is used by another port")));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&p.mtu) {
            return Err(bad(
                f("mtu"),
                format!("{} is outside {MIN_MTU}-{MAX_MTU}", p.mtu),
            ));
        }
        let socket_mode = match &p.socket_mode {
            None => 0o600,
            Some(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    bad(
                        f("socket_mode"),
                        format!("{s:?} is not an octal mode like \"0660\""),
                    )
                })?,
        };
        ports.push(Port {
            name: p.name.clone(),
            socket: p.socket.clone(),
            mode: p.mode,
            mac,
            mtu: p.mtu,
            socket_mode,
        });
    }
    let mut wired: Vec<Option<usize>> = vec![None; ports.len()];
    let mut veths = Vec::new();
    for (i, v) in raw.veths.iter().enumerate() {
        let mut pair = [0usize; 2];
        for (j, name) in v.ports.iter().enumerate() {
            let field = format!("veth[{i}].ports[{j}]");
            let idx = ports
                .iter()
                .position(|p| &p.name == name)
                .ok_or_else(|| bad(field.clone(), format!("no [[port]] is named {name:?}")))?;
            if let Some(other) = wired[idx] {
                return Err(bad(
                    field,
                    format!("port {name:?} already belongs to veth[{other}]"),
                ));
            }
            wired[idx] = Some(i);
            pair[j] = idx;
        }
        veths.push(pair);
    }
    if let Some(i) = wired.iter().position(Option::is_none) {
        return Err(bad(
            format!("port[{i}]"),
            format!(
                "port {:?} is not part of any [[veth]]: its frames would go nowhere",
                ports[i].name
            ),
        ));
    }
    Ok(Config {
        cores,
        control_socket: raw
            .pmd
            .control_socket
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        ports,
        veths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        validate(raw, "t.toml", 2).map_err(|e| e.to_string())
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

    #[test]
    fn builtin_and_example_parse() {
        let c = Config::builtin();
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.veths, vec![[0, 1]]);
        let c = parse(PAIR).unwrap();
        assert_eq!(c.ports[1].mode, Mode::Client);
        assert_eq!(c.ports[1].mtu, 9000);
        assert_eq!(c.ports[0].socket_mode, 0o600);
        let example = include_str!("../../configs/veth-pair.toml");
        Config::parse(example, "veth-pair.toml").unwrap();
    }

    #[test]
    fn errors_name_the_field() {
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
        ];
        for (text, field) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(field), "{err:?} should name {field}");
        }
    }
}
