// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vpmd-bench: drive vhost-user virtio-net ports from the VM side, to test and benchmark
//! vhost-user switches (vpmd, DPDK's net_vhost in testpmd, OVS-DPDK).
//!
//! Modes (each stops by itself; human-readable output, `--json` for scripts):
//! `txonly` generator, `rxonly` checking sink, `loopback` zero-copy io forwarding over two
//! ports (the throughput test), `latency` histogram over two ports, `xdp-txonly` generator
//! on a kernel interface (AF_XDP, for macvlan uplinks); plus `probe` (what a
//! device negotiates) and `pair` (a checked transfer from A to B).
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use vpmd_bench::modes::{self, latency, loopback, ring_loop, rxonly, txonly, xdp_txonly, Global};
use vpmd_bench::transfer::{spread_sizes, transfer, warm_up, TransferSpec};
use vpmd_bench::{FrontendOptions, MacAddr, NetFrontend};

#[derive(Parser)]
#[command(
    version,
    about = "vhost-user virtio-net traffic generator, sink, loopback and latency meter",
    long_about = "Drives vhost-user virtio-net ports from the VM side (like DPDK's \
                  virtio-user): memfd guest memory, split virtqueues, cloud-hypervisor's \
                  setup order. Every mode stops by itself and prints a report; --json \
                  prints it as one JSON object on stdout.\n\n\
                  Examples:\n  \
                  vpmd-bench rxonly /run/vpmd/vm1.sock --count 100000 &\n  \
                  vpmd-bench txonly /run/vpmd/vm0.sock --count 100000 --rate 50000\n  \
                  vpmd-bench loopback /run/vpmd/vm0.sock /run/vpmd/vm1.sock --size 64 --duration 10\n  \
                  vpmd-bench latency /run/vpmd/vm0.sock /run/vpmd/vm1.sock --rate 10000"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Skip GET_CONFIG (DPDK's net_vhost does not answer it).
    #[arg(long, global = true)]
    no_config: bool,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate test frames on one port (Ethernet/IPv4/UDP, seq + checksum in each).
    Txonly(txonly::TxOnlyArgs),
    /// Receive and check test frames on one port: loss, reordering, corruption.
    Rxonly(rxonly::RxOnlyArgs),
    /// Inject a burst on two ports, then forward each port's RX to the other's TX
    /// without copying (testpmd `start tx_first` + io forwarding); Mpps per direction.
    Loopback(loopback::LoopbackArgs),
    /// The backend alone: TX rings filled once and republished, RX buffers given back,
    /// only indexes moved (the frontend costs next to nothing); the backend's capacity.
    RingLoop(ring_loop::RingLoopArgs),
    /// Timestamped frames from A to B at a fixed rate: p50/p99/p99.9/max in microseconds.
    Latency(latency::LatencyArgs),
    /// Generate test frames on a kernel interface through AF_XDP (e.g. the namespace end
    /// of a macvlan uplink's veth), to a list of destination MACs in turn.
    XdpTxonly(xdp_txonly::XdpTxOnlyArgs),
    /// Connect, print features, MAC and MTU, disconnect.
    Probe {
        /// vhost-user socket.
        socket: PathBuf,
    },
    /// Send frames of mixed sizes from port A, check they all arrive on port B in order.
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

fn print<R: Serialize + std::fmt::Display>(json: bool, r: &R) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{r}");
    }
    Ok(())
}

fn connect(socket: PathBuf, no_config: bool) -> anyhow::Result<NetFrontend> {
    let mut o = FrontendOptions::new(socket);
    o.read_config = !no_config;
    o.connect_timeout = Duration::from_secs(30);
    NetFrontend::connect(&o).map_err(anyhow::Error::from)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and each of its causes once: messages do not repeat their
            // `#[source]`.
            eprintln!("vpmd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let g = Global {
        no_config: cli.no_config,
    };
    modes::install_stop_handler();
    match cli.cmd {
        Cmd::Txonly(a) => print(cli.json, &txonly::run(&a, &g).context("txonly")?),
        Cmd::Rxonly(a) => print(cli.json, &rxonly::run(&a, &g).context("rxonly")?),
        Cmd::Loopback(a) => print(cli.json, &loopback::run(&a, &g).context("loopback")?),
        Cmd::RingLoop(a) => print(cli.json, &ring_loop::run(&a, &g).context("ring-loop")?),
        Cmd::Latency(a) => print(cli.json, &latency::run(&a, &g).context("latency")?),
        Cmd::XdpTxonly(a) => print(cli.json, &xdp_txonly::run(&a).context("xdp-txonly")?),
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
                    MacAddr(c.mac),
                    c.mtu,
                    c.status
                );
            }
            f.disconnect()?;
            Ok(())
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
            Ok(())
        }
    }
}
