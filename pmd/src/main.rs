//! The `vpmd` command: `run` the switch, or read a running one's `stats`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use vpmd::config::{Config, Mode, DEFAULT_CONTROL_SOCKET};
use vpmd::control;
use vpmd::privileges;
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
    /// Without --config, runs the built-in default: ports vm0 and vm1 as a veth pair,
    /// sockets /run/vpmd/vm0.sock and /run/vpmd/vm1.sock (vpmd listens), polling on
    /// the last core, control socket /run/vpmd/control.sock. Logs go to stderr
    /// (RUST_LOG=debug|info|warn filters them); final counters go to stdout.
    Run {
        /// TOML configuration file (see configs/veth-pair.toml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the counters of the running vpmd.
    Stats {
        /// Print JSON (the format documented in docs/interfaces.md) instead of a table.
        #[arg(long)]
        json: bool,
        /// Control socket of the instance to ask.
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Stats { json, control } => {
            let snap = control::request_stats(&control)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snap)?);
            } else {
                print!("{}", snap.to_text());
            }
            Ok(())
        }
    }
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
    let switch = Switch::start(&config)?;
    // Everything privileged is done: sockets, chown, XDP/AF_XDP. Give it all up, in
    // every thread, before the first frontend can talk to us.
    let dropped = privileges::drop_capabilities(config.keep_capabilities)
        .context("dropping capabilities after start-up")?;
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
    print_usage(&config);
    log::info!(
        "vpmd ready: {} ports, control socket {}",
        config.ports.len(),
        config.control_socket.display()
    );
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: stopping");
    }
    let last = switch.stop();
    println!("final counters:");
    print!("{}", last.to_text());
    Ok(())
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
