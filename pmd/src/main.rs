// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `vpmd` command: `run` the switch, or read a running one's `stats`.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use vpmd::config::{Config, Mode, DEFAULT_CONTROL_SOCKET};
use vpmd::control;
use vpmd::metrics::MetricsListener;
use vpmd::notify::Notifier;
use vpmd::privileges;
use vpmd::stats_view;
use vpmd::switch::Switch;

/// vhost-user poll-mode virtual switch: serves virtio-net queues to VMs over
/// vhost-user and moves frames between them with pinned busy-polling threads.
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
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
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
    let opened = Switch::open(&config)?;
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
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: stopping");
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
        println!(
            "  {n}: {s} ({role})\n    qemu-system-x86_64 ... \
             -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \
             -chardev {chardev} -netdev vhost-user,id={n},chardev={n} \
             -device virtio-net-pci,netdev={n},mac={mac}{mtu}",
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
