//! vpmd-bench: drive vhost-user virtio-net ports from the VM side.
//!
//! `vpmd-bench probe SOCKET` prints what the device negotiates; `vpmd-bench pair A B` sends
//! checked frames from A to B and reports the rate (a first, single-threaded generator).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vpmd_bench::transfer::{spread_sizes, transfer, warm_up, TransferSpec};
use vpmd_bench::{format_mac, FrontendOptions, NetFrontend};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Skip GET_CONFIG (DPDK's net vhost does not answer it).
    #[arg(long, global = true)]
    no_config: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect, print features, MAC and MTU, disconnect.
    Probe {
        /// vhost-user socket.
        socket: PathBuf,
    },
    /// Send frames from port A, check they all arrive on port B in order.
    Pair {
        /// Sending port's socket.
        a: PathBuf,
        /// Receiving port's socket.
        b: PathBuf,
        /// Frames to send.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Smallest frame.
        #[arg(long, default_value_t = 60)]
        min_size: usize,
        /// Largest frame.
        #[arg(long, default_value_t = 1514)]
        max_size: usize,
    },
}

fn connect(socket: PathBuf, no_config: bool) -> anyhow::Result<NetFrontend> {
    let mut o = FrontendOptions::new(socket);
    o.read_config = !no_config;
    NetFrontend::connect(&o).map_err(anyhow::Error::from)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Probe { socket } => {
            let f = connect(socket, cli.no_config)?;
            let n = f.info().negotiated;
            println!("features {:#x} (offered {:#x})", n.features, n.offered);
            println!(
                "protocol features {:?}, queues {:?}",
                n.protocol, n.queue_num
            );
            if let Some(c) = f.info().config {
                println!(
                    "mac {} mtu {} status {:#x}",
                    format_mac(&c.mac),
                    c.mtu,
                    c.status
                );
            }
            f.disconnect()?;
        }
        Cmd::Pair {
            a,
            b,
            count,
            min_size,
            max_size,
        } => {
            let mut fa = connect(a, cli.no_config)?;
            let mut fb = connect(b, cli.no_config)?;
            let spec = TransferSpec {
                count,
                sizes: spread_sizes(min_size, max_size.max(min_size), 101),
                dst: fb.mac().unwrap_or([0x52, 0x54, 0, 0, 0, 2]),
                src: fa.mac().unwrap_or([0x52, 0x54, 0, 0, 0, 1]),
                first_seq: 0,
                window: 128,
                idle_timeout: Duration::from_secs(5),
            };
            // A switch may drop until both ends are up: wait until one frame makes it.
            let (up, settle) = (Duration::from_secs(10), Duration::from_millis(100));
            if !warm_up(&mut fa, &mut fb, spec.src, spec.dst, up, settle) {
                anyhow::bail!("no frame got from A to B within {up:?}");
            }
            let r = transfer(&mut fa, &mut fb, &spec).context("transfer")?;
            let secs = r.elapsed.as_secs_f64();
            println!(
                "{} frames, {} bytes in {:.3} s: {:.3} Mpps, {:.3} Gbit/s",
                r.frames,
                r.bytes,
                secs,
                r.frames as f64 / secs / 1e6,
                r.bytes as f64 * 8.0 / secs / 1e9
            );
        }
    }
    Ok(())
}
