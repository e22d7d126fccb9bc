// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `vpmd` command: `run` the switch, or read a running one's `stats`.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use vpmd::config::{Config, Mode, DEFAULT_CONTROL_SOCKET};
use vpmd::control::{self, Request};
use vpmd::metrics::MetricsListener;
use vpmd::notify::Notifier;
use vpmd::privileges;
use vpmd::stats_view;
use vpmd::switch::Switch;

/// vhost-user poll-mode virtual switch: serves virtio-net queues to VMs over
/// vhost-user and moves frames between them with pinned polling threads (which sleep
/// until a guest kicks once idle, `[pmd] sleep_after_us`).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the switch in the foreground until SIGINT or SIGTERM.
    ///
    /// Under systemd (Type=notify, configs/vpmd.service) it sends READY=1 to
    /// $NOTIFY_SOCKET once every port is listening and its threads run, and
    /// STOPPING=1 when told to stop; without $NOTIFY_SOCKET it sends nothing.
    /// With [pmd] metrics = "ADDR:PORT" it serves Prometheus metrics on GET /metrics.
    ///
    /// Without --config, runs the built-in default: ports vm0 and vm1 as a veth pair,
    /// sockets /run/vpmd/vm0.sock and /run/vpmd/vm1.sock (vpmd listens), polling on
    /// the last core, control socket /run/vpmd/control.sock. Logs go to stderr
    /// (RUST_LOG=debug|info|warn filters them); final counters go to stdout.
    /// The configuration reference is in README.md; configs/veth-pair.toml and
    /// configs/macvlan.toml are commented examples.
    Run {
        /// TOML configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only check the configuration: print what it would start, then exit
        /// (status 1 and the error, naming the field, if it is invalid).
        #[arg(long)]
        check: bool,
    },
    /// Print the counters of the running vpmd.
    ///
    /// --watch refreshes every SECS seconds (default 1) like top, with rates per
    /// second; --pmd shows each polling thread (frames, polls, busy and idle cycles
    /// and their shares, cycles per frame, the ports it serves) like OVS's
    /// dpif-netdev/pmd-stats-show, over the interval when combined with --watch.
    Stats {
        /// Print JSON (the format documented in docs/interfaces.md) instead of a table.
        #[arg(long, conflicts_with_all = ["watch", "pmd"])]
        json: bool,
        /// Refresh every SECS seconds (default 1) with rates per second, until Ctrl-C.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<f64>,
        /// Per polling thread, in the style of ovs-appctl dpif-netdev/pmd-stats-show.
        #[arg(long)]
        pmd: bool,
        /// With --watch: stop after N refreshes.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
        /// Control socket of the instance to ask.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// Show each polling thread's queues, like ovs-appctl dpif-netdev/pmd-rxq-show:
    /// its busy share and, per queue it polls (a port's TX queue pair, a macvlan
    /// shard), the frames taken from it and dropped.
    Pmd {
        #[command(flatten)]
        control: ControlArg,
    },
    /// Add, remove or list the running vpmd's ports (not written to the config
    /// file: a restart runs the file's ports only).
    Port {
        #[command(subcommand)]
        action: PortAction,
    },
    /// Pair two ports of the running vpmd, or unpair them.
    Veth {
        #[command(subcommand)]
        action: VethAction,
    },
    /// Move a port onto or off a macvlan configured at start-up (no privileges needed:
    /// the XDP program's MAC table is a BPF map whose fd vpmd kept).
    Macvlan {
        #[command(subcommand)]
        action: MacvlanAction,
    },
    /// Make the running vpmd's ports and pairs those of its config file, as SIGHUP
    /// does: ports and pairs gone from the file are removed, new ones added, changed
    /// ones restarted, ports moved onto or off macvlans. Refused, changing nothing, if
    /// a [pmd] setting changed or a [[macvlan]] was added, removed or given another
    /// uplink, mode or queues (they need a restart).
    Reload {
        #[command(flatten)]
        control: ControlArg,
    },
}

/// Which running vpmd to ask.
#[derive(Args)]
struct ControlArg {
    /// Control socket of the instance to ask.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    control: PathBuf,
}

#[derive(Subcommand)]
enum PortAction {
    /// Add a port, with the fields of a [[port]] in the config file (README
    /// "Configuration") and the same checks. It is in no veth or macvlan until
    /// `vpmd veth add` or `vpmd macvlan add-port` puts it in one.
    Add(Box<PortAdd>),
    /// Remove a port: its veth pair goes too (the peer stays, unpaired), its VM's
    /// connection is closed and its socket removed. Other ports are not disturbed.
    Del {
        /// Port name.
        name: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// List the ports, what each is attached to, and each polling thread's streams.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArg,
    },
}

/// A port's socket role.
#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    /// vpmd listens (QEMU `-chardev socket,path=...`).
    Server,
    /// vpmd connects to the VM's socket (QEMU `-chardev socket,...,server=on`).
    Client,
}

#[derive(Args)]
struct PortAdd {
    /// Port name: 1-32 of [A-Za-z0-9_.-], unique.
    name: String,
    /// vhost-user socket path (its directory is created).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// MAC address (unicast, unique); the guest reads it from config space.
    #[arg(long)]
    mac: String,
    /// Socket role [default: server].
    #[arg(long, value_enum)]
    mode: Option<RoleArg>,
    /// MTU, 68-9000 [default: 1500].
    #[arg(long)]
    mtu: Option<u64>,
    /// Queue pairs, 1-8 (more than 1: VIRTIO_NET_F_MQ) [default: 1].
    #[arg(long, value_name = "N")]
    queues: Option<u64>,
    /// The core polling each queue pair's TX queue, one per pair (e.g. 0,1)
    /// [default: dealt out to the threads with the fewest streams].
    #[arg(long, value_name = "CORES", value_delimiter = ',')]
    queue_cores: Option<Vec<u64>>,
    /// Permission bits of the socket file, octal [default: 0600].
    #[arg(long, value_name = "MODE")]
    socket_mode: Option<String>,
    /// Owner of the socket file (server role): a user name or id.
    #[arg(long, value_name = "USER")]
    socket_owner: Option<String>,
    /// Group of the socket file (server role): a group name or id.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Let the port send with other source MACs (macvlan ports).
    #[arg(long)]
    allow_mac_spoofing: bool,
    /// Most guest memory one connection may map, in MiB [default: 65536].
    #[arg(long, value_name = "MIB")]
    max_memory_mib: Option<u64>,
    /// vhost-user messages per second before vpmd reads slower [default: 1000].
    #[arg(long, value_name = "N")]
    max_messages_per_sec: Option<u64>,
    /// Offer no checksum or segmentation offloads (CSUM, GUEST_CSUM, TSO, ECN)
    /// [default: all offered].
    #[arg(long)]
    no_offload: bool,
    #[command(flatten)]
    control: ControlArg,
}

impl PortAdd {
    /// The request's `port` object: the [[port]] fields given, with the file's names.
    fn to_json(&self) -> anyhow::Result<serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("name".into(), self.name.clone().into());
        // The path as the daemon will see it, whatever its working directory.
        let socket = if self.socket.as_os_str().is_empty() {
            self.socket.clone()
        } else {
            std::path::absolute(&self.socket)
                .with_context(|| format!("--socket {}", self.socket.display()))?
        };
        m.insert(
            "socket".into(),
            socket.to_string_lossy().into_owned().into(),
        );
        m.insert("mac".into(), self.mac.clone().into());
        if let Some(r) = self.mode {
            let mode = match r {
                RoleArg::Server => "server",
                RoleArg::Client => "client",
            };
            m.insert("mode".into(), mode.into());
        }
        let mut opt = |k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        opt("mtu", self.mtu.map(Into::into));
        opt("queues", self.queues.map(Into::into));
        opt("queue_cores", self.queue_cores.clone().map(Into::into));
        opt("socket_mode", self.socket_mode.clone().map(Into::into));
        opt("socket_owner", self.socket_owner.clone().map(Into::into));
        opt("socket_group", self.socket_group.clone().map(Into::into));
        opt(
            "allow_mac_spoofing",
            self.allow_mac_spoofing.then_some(true.into()),
        );
        opt("max_memory_mib", self.max_memory_mib.map(Into::into));
        opt(
            "max_messages_per_sec",
            self.max_messages_per_sec.map(Into::into),
        );
        opt(
            "offload",
            self.no_offload
                .then(|| serde_json::json!({ "csum": false, "guest_csum": false })),
        );
        Ok(serde_json::Value::Object(m))
    }
}

#[derive(Subcommand)]
enum VethAction {
    /// Pair ports A and B (both in no veth or macvlan): frames one sends, the other receives.
    Add {
        /// One port.
        a: String,
        /// The other.
        b: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Unpair the veth pair PORT is in; both ports stay (unpolled).
    Del {
        /// Either port of the pair.
        port: String,
        #[command(flatten)]
        control: ControlArg,
    },
}

#[derive(Subcommand)]
enum MacvlanAction {
    /// Put PORT (in no veth or macvlan) on the macvlan of UPLINK.
    AddPort {
        /// The macvlan's uplink interface.
        uplink: String,
        /// The port.
        port: String,
        #[command(flatten)]
        control: ControlArg,
    },
    /// Take PORT off the macvlan of UPLINK; the port stays.
    DelPort {
        /// The macvlan's uplink interface.
        uplink: String,
        /// The port.
        port: String,
        #[command(flatten)]
        control: ControlArg,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and each of its causes once: messages do not repeat their
            // `#[source]`.
            eprintln!("vpmd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            check: true,
        } => check(config),
        Command::Run {
            config,
            check: false,
        } => run(config),
        Command::Stats {
            watch: Some(secs),
            pmd,
            count,
            control,
            ..
        } => watch(&control, secs, pmd, count),
        Command::Stats {
            json,
            watch: None,
            pmd,
            control,
            ..
        } => {
            let snap = control::request_stats(&control)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
            } else if pmd {
                print!("{}", stats_view::pmd_text(&snap));
            } else {
                print!("{}", snap.to_text());
            }
            Ok(())
        }
        Command::Pmd { control } => {
            let snap = control::request_stats(&control.control)?;
            print!("{}", stats_view::rxq_text(&snap));
            Ok(())
        }
        Command::Port {
            action: PortAction::List { json, control },
        } => {
            let list = control::request(&control.control, &Request::PortList)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", port_table(&list));
            }
            Ok(())
        }
        Command::Port {
            action: PortAction::Add(add),
        } => {
            let port = add.to_json()?;
            ask(&add.control, Request::PortAdd { port })
        }
        Command::Port {
            action: PortAction::Del { name, control },
        } => ask(&control, Request::PortDel { name }),
        Command::Veth {
            action: VethAction::Add { a, b, control },
        } => ask(&control, Request::VethAdd { ports: [a, b] }),
        Command::Veth {
            action: VethAction::Del { port, control },
        } => ask(&control, Request::VethDel { port }),
        Command::Macvlan {
            action:
                MacvlanAction::AddPort {
                    uplink,
                    port,
                    control,
                },
        } => ask(&control, Request::MacvlanAddPort { uplink, port }),
        Command::Macvlan {
            action:
                MacvlanAction::DelPort {
                    uplink,
                    port,
                    control,
                },
        } => ask(&control, Request::MacvlanDelPort { uplink, port }),
        Command::Reload { control } => ask(&control, Request::Reload),
    }
}

/// `vpmd stats --watch SECS`: a screen of rates every SECS seconds (the screen is
/// cleared when stdout is a terminal; otherwise screens follow each other).
fn watch(
    control_path: &std::path::Path,
    secs: f64,
    pmd: bool,
    count: Option<u64>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !(secs.is_finite() && (0.1..=3600.0).contains(&secs)) {
        anyhow::bail!("--watch: {secs} is outside 0.1-3600 seconds");
    }
    let interval = std::time::Duration::from_secs_f64(secs);
    let clear = std::io::stdout().is_terminal();
    let mut prev = control::request_stats(control_path)?;
    let mut taken = std::time::Instant::now();
    let mut shown = 0u64;
    while count.is_none_or(|n| shown < n) {
        std::thread::sleep(interval);
        let cur = control::request_stats(control_path)?;
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(taken).as_secs_f64();
        let d = stats_view::delta(&prev, &cur);
        let body = if pmd {
            stats_view::pmd_text(&d)
        } else {
            stats_view::rates_text(&d, elapsed)
        };
        if clear {
            print!("\x1b[H\x1b[2J");
        }
        println!(
            "vpmd stats --watch {secs}: {} over the last {elapsed:.2} s ({})",
            if pmd {
                "polling threads"
            } else {
                "rates per second"
            },
            control_path.display()
        );
        print!("{body}");
        if !clear {
            println!();
        }
        prev = cur;
        taken = now;
        shown += 1;
    }
    Ok(())
}

/// Sends a request that changes ports; prints the answer (JSON, one line).
fn ask(control: &ControlArg, request: Request) -> anyhow::Result<()> {
    let answer = control::request(&control.control, &request)?;
    println!("{answer}");
    Ok(())
}

/// `vpmd port list` for people.
fn port_table(list: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let empty = Vec::new();
    let ports = list["ports"].as_array().unwrap_or(&empty);
    let _ = writeln!(
        out,
        "{:<16} {:<5} {:<6} {:<17} {:>5}  {:<24} SOCKET",
        "PORT", "STATE", "MODE", "MAC", "MTU", "ATTACHED"
    );
    for p in ports {
        let _ = writeln!(
            out,
            "{:<16} {:<5} {:<6} {:<17} {:>5}  {:<24} {}",
            s(&p["name"]),
            s(&p["state"]),
            s(&p["mode"]),
            s(&p["mac"]),
            s(&p["mtu"]),
            s(&p["attached"]),
            s(&p["socket"])
        );
    }
    for t in list["threads"].as_array().unwrap_or(&empty) {
        let streams: Vec<String> = t["streams"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(s)
            .collect();
        let _ = writeln!(
            out,
            "pmd thread on core {}: {}",
            s(&t["core"]),
            if streams.is_empty() {
                "no streams".to_string()
            } else {
                streams.join(", ")
            }
        );
    }
    out
}

/// `vpmd run --check`: validate and describe the configuration, start nothing.
fn check(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let config = match &config_path {
        Some(p) => Config::load(p)?,
        None => Config::builtin(),
    };
    let name = |i: usize| config.ports[i].name.as_str();
    println!(
        "configuration is valid: {} ports, polling cores {:?}, control socket {}",
        config.ports.len(),
        config.cores,
        config.control_socket.display()
    );
    if let Some(addr) = config.metrics {
        println!("  metrics: http://{addr}/metrics");
    }
    if config.ports.is_empty() {
        println!("  no [[port]]: vpmd starts with none; add them with `vpmd port add`");
    }
    for p in &config.ports {
        println!(
            "  port {}: {} ({}), mac {}, mtu {}",
            p.name,
            p.socket.display(),
            match p.mode {
                Mode::Server => "vpmd listens",
                Mode::Client => "vpmd connects",
            },
            p.mac,
            p.mtu
        );
    }
    for &[a, b] in &config.veths {
        println!("  veth {} <-> {}", name(a), name(b));
    }
    for m in &config.macvlans {
        let ports: Vec<&str> = m.ports.iter().map(|&i| name(i)).collect();
        println!(
            "  macvlan on {} ({} mode, {} queue(s)): {}",
            m.uplink,
            m.mode.name(),
            m.queues,
            ports.join(", ")
        );
    }
    Ok(())
}

fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    // Installed first: a signal that arrives during start-up is kept and stops
    // vpmd as soon as start-up is done, instead of killing it half-started.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
    let config = match &config_path {
        Some(p) => Config::load(p)?,
        None => {
            log::info!("no --config given: running the built-in default (one veth pair)");
            Config::builtin()
        }
    };
    // Every port, guest memory region, eventfd and client takes descriptors: allow
    // as many as the hard limit permits, before any is opened.
    match raise_open_files_limit() {
        Ok(limit) => log::debug!("open files limit: {limit}"),
        Err(e) => log::warn!("cannot raise the open files limit: {e}"),
    }
    // systemd's notification socket, connected while privileges last; vpmd runs
    // without one too.
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        log::warn!("{:#}", anyhow::Error::from(e));
        Notifier::none()
    });
    // Bound before the drop: a port below 1024 needs CAP_NET_BIND_SERVICE.
    let metrics = config.metrics.map(MetricsListener::bind).transpose()?;
    // Everything that may need privileges, and no thread yet: sockets and their
    // owners, XDP programs, AF_XDP sockets, UMEMs.
    if config.ports.is_empty() {
        log::info!(
            "the configuration has no [[port]]: running with none; add ports with \
             `vpmd port add` and `vpmd veth add`"
        );
    }
    let mut opened = Switch::open(&config)?;
    if let Some(p) = &config_path {
        opened = opened.reloading_from(p.clone());
    }
    // Give it all up, on the one thread there is, before the first frontend can talk
    // to us: the threads started below inherit the emptied sets.
    let dropped = privileges::drop_capabilities(config.keep_capabilities)
        .context("dropping capabilities after opening the sockets and uplinks")?;
    log::info!("{}", dropped.summary());
    log::debug!(
        "privileges: dropped {}",
        privileges::names(dropped.held & !dropped.kept)
    );
    if dropped.not_held != 0 {
        log::warn!(
            "pmd.keep_capabilities: {} not held at start-up, so not kept",
            privileges::names(dropped.not_held)
        );
    }
    let switch = opened.spawn()?;
    let metrics = match metrics {
        Some(m) => {
            let m = m.serve(switch.registry())?;
            log::info!("metrics: serving http://{}/metrics", m.local_addr());
            Some(m)
        }
        None => None,
    };
    print_usage(&config);
    log::info!(
        "vpmd ready: {} ports, control socket {}",
        config.ports.len(),
        config.control_socket.display()
    );
    match notifier.ready(&format!("serving {} ports", config.ports.len())) {
        Ok(true) => log::info!("told systemd: READY=1"),
        Ok(false) => {}
        Err(e) => log::warn!("{:#}", anyhow::Error::from(e)),
    }
    for sig in signals.forever() {
        if sig == SIGHUP {
            // As `vpmd reload`: the file's ports and pairs, applied live.
            match switch.reload() {
                Ok(done) => log::info!("SIGHUP: reload: {done}"),
                Err(e) => log::error!("SIGHUP: {e}"),
            }
            continue;
        }
        log::info!("signal {sig}: stopping");
        break;
    }
    if let Err(e) = notifier.stopping() {
        log::warn!("{:#}", anyhow::Error::from(e));
    }
    if let Some(m) = metrics {
        m.stop();
    }
    let last = switch.stop();
    println!("final counters:");
    print!("{}", last.to_text());
    Ok(())
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now
/// in force.
#[allow(unsafe_code)] // getrlimit(2) and setrlimit(2) on a local struct.
fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through the pointer, which points at a
    // live local of that type for the whole call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the `rlimit` behind the pointer, a live local.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// Where each port's socket is and how to put a VM on it.
fn print_usage(config: &Config) {
    println!("vpmd is serving {} vhost-user ports:", config.ports.len());
    for p in &config.ports {
        let chardev = match p.mode {
            Mode::Server => format!("socket,id={n},path={s}", n = p.name, s = p.socket.display()),
            Mode::Client => format!(
                "socket,id={n},path={s},server=on",
                n = p.name,
                s = p.socket.display()
            ),
        };
        let mtu = if p.mtu != 1500 {
            format!(",host_mtu={}", p.mtu)
        } else {
            String::new()
        };
        // QEMU: queues=N on the netdev, mq=on on the device (the guest then uses
        // min(N, vCPUs) pairs).
        let (queues, mq) = if p.queue_pairs > 1 {
            (format!(",queues={}", p.queue_pairs), ",mq=on".to_string())
        } else {
            (String::new(), String::new())
        };
        println!(
            "  {n}: {s} ({role})\n    qemu-system-x86_64 ... \
             -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
             -chardev {chardev} -netdev vhost-user,id={n},chardev={n}{queues} \
             -device virtio-net-pci,netdev={n},mac={mac}{mtu}{mq}",
            n = p.name,
            s = p.socket.display(),
            role = match p.mode {
                Mode::Server => "vpmd listens",
                Mode::Client => "vpmd connects; QEMU must listen",
            },
            mac = p.mac,
        );
    }
    println!(
        "  counters: vpmd stats --control {}",
        config.control_socket.display()
    );
}
