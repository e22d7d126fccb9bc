// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Opening a macvlan's uplink at start-up and building its shards (one stream per
//! AF_XDP queue), with errors an operator can act on.

use std::path::Path;
use std::sync::Arc;

use vpmd_backend::migration::Announce;
use vpmd_backend::port::VirtioNetPort;
use vpmd_uplink::program::RedirectPolicy;
use vpmd_uplink::{Uplink, UplinkConfig, UplinkError};

use crate::config::{Macvlan, MacvlanMode, Port};
use crate::counters::{PortCounters, PortTally};
use crate::fwd::macvlan::checksum::UplinkChecksums;
use crate::fwd::macvlan::decide::MacvlanTable;
use crate::fwd::macvlan::{MacvlanShard, UplinkEndpoint};
use crate::fwd::{Stream, VhostEndpoint, L2_OVERHEAD};
use crate::stats::{PortEntry, PortKind, UplinkInfo};

/// Why a macvlan's uplink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UplinkSetupError {
    /// The interface has RX queues no socket would read.
    #[error(
        "uplink {ifname} has {have} RX queues but its [[macvlan]] has queues = {want}: frames \
         arriving on the other queues would never reach the VMs; set queues = {have}, or \
         reduce the device's queues (ethtool -L {ifname} combined {want})"
    )]
    Queues {
        /// Interface.
        ifname: String,
        /// Its RX queues.
        have: u32,
        /// Configured.
        want: u32,
    },
    /// AF_XDP or the XDP program could not be set up (the error names the uplink).
    #[error(transparent)]
    Open(Box<UplinkError>),
    /// A VM's MAC could not be added to the program's table.
    #[error("uplink {ifname}: cannot add MAC {mac} of port {port}")]
    Mac {
        /// Interface.
        ifname: String,
        /// Port.
        port: String,
        /// Its MAC.
        mac: String,
        /// Cause.
        #[source]
        source: Box<vpmd_uplink::MapError>,
    },
}

/// A macvlan ready to run: the uplink (keeps the XDP program attached while it
/// lives), its streams and its stats entry.
pub struct OpenedMacvlan {
    /// The uplink; drop it only after the polling threads have stopped.
    pub uplink: Uplink,
    /// One shard per AF_XDP queue.
    pub shards: Vec<Box<dyn Stream>>,
    /// The uplink's counters, for stats.
    pub entry: PortEntry,
    /// The macvlan's VM ports as the stats know them, to keep current.
    pub port_list: crate::stats::SharedNames,
    /// Where its ports announce their MACs after a live migration (None: the
    /// AF_PACKET socket could not be made; logged).
    pub announcer: Option<Arc<dyn Announce>>,
}

/// A VM port's announcements after a live migration (SEND_RARP) go out of its
/// macvlan's uplink.
struct UplinkAnnounce(vpmd_uplink::announce::Announcer);

impl Announce for UplinkAnnounce {
    fn announce(&self, mac: [u8; 6]) -> std::io::Result<()> {
        self.0.send_rarp(mac)
    }

    fn describe(&self) -> String {
        format!("uplink {}", self.0.ifname())
    }
}

/// An announcer on `ifname`, or None (logged: migrations then rely on the guests
/// announcing themselves).
fn announcer(ifname: &str) -> Option<Arc<dyn Announce>> {
    match vpmd_uplink::announce::Announcer::open(ifname) {
        Ok(a) => Some(Arc::new(UplinkAnnounce(a))),
        Err(e) => {
            log::warn!(
                "uplink {ifname}: cannot announce migrated VMs: {}",
                vpmd_backend::report::Chain(&e)
            );
            None
        }
    }
}

fn sys_net(ifname: &str, what: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(ifname).join(what))
        .ok()
        .map(|s| s.trim().to_string())
}

fn rx_queue_count(ifname: &str) -> Option<u32> {
    let dir = std::fs::read_dir(Path::new("/sys/class/net").join(ifname).join("queues")).ok()?;
    let n = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    u32::try_from(n).ok()
}

/// Opens `m`'s uplink and builds its shards over `ports` (all configured ports).
pub fn open(
    m: &Macvlan,
    ports: &[Port],
    vhost: &[Arc<VirtioNetPort>],
    counters: &[Arc<PortCounters>],
) -> Result<OpenedMacvlan, UplinkSetupError> {
    let ifname = m.uplink.clone();
    if let Some(have) = rx_queue_count(&ifname) {
        if have > m.queues {
            return Err(UplinkSetupError::Queues {
                ifname,
                have,
                want: m.queues,
            });
        }
    }
    let mut cfg = UplinkConfig::new(&ifname);
    cfg.queues = (0..m.queues).collect();
    cfg.policy = match m.mode {
        MacvlanMode::Passthru => RedirectPolicy::Passthru,
        _ => RedirectPolicy::MacFilter,
    };
    let mut uplink = Uplink::open(&cfg).map_err(|e| UplinkSetupError::Open(Box::new(e)))?;
    let table = uplink.mac_table();
    for (i, &p) in m.ports.iter().enumerate() {
        table
            .insert(ports[p].mac.0, i as u32)
            .map_err(|source| UplinkSetupError::Mac {
                ifname: ifname.clone(),
                port: ports[p].name.clone(),
                mac: ports[p].mac.to_string(),
                source: Box::new(source),
            })?;
    }
    let checksums = m.uplink_checksums.resolve(&ifname);
    let mut info = UplinkInfo {
        xdp: uplink.attach_mode().to_string(),
        socket_mode: uplink.bind_mode().to_string(),
        queues: m.queues,
        macvlan_mode: m.mode.name().to_string(),
        checksums: checksums.name().to_string(),
        max_frame: 0,
        multi_buffer: uplink.multi_buffer(),
        tx_checksum_offload: false,
        ports: Vec::new(),
        port_list: crate::stats::SharedNames::new(
            m.ports.iter().map(|&p| ports[p].name.clone()).collect(),
        ),
        xsk_kernel: None,
        sockets: Default::default(),
    };
    log::info!(
        "uplink {ifname}: {} XDP, {} AF_XDP sockets on {} queue(s), macvlan mode {}, \
         TCP/UDP checksums from it: {}{}, ports {}",
        info.xdp,
        info.socket_mode,
        m.queues,
        info.macvlan_mode,
        info.checksums,
        if checksums == UplinkChecksums::Trust {
            " (a NIC delivers them complete)"
        } else {
            " (a virtual interface: a peer's stack may leave them partial; vpmd completes them)"
        },
        m.ports
            .iter()
            .map(|&p| ports[p].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let decide = Arc::new(MacvlanTable::new(
        m.mode,
        &m.ports
            .iter()
            .map(|&p| (ports[p].mac.0, ports[p].allow_mac_spoofing))
            .collect::<Vec<_>>(),
    ));
    let uplink_counters = Arc::new(PortCounters::default());
    let mtu: u32 = sys_net(&ifname, "mtu")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut shards: Vec<Box<dyn Stream>> = Vec::new();
    let mut tap = uplink.take_group_tap();
    let sockets = uplink.take_sockets();
    // For stats: XDP_STATISTICS through duplicates; a socket that cannot be
    // duplicated (no descriptor left) just leaves the kernel's figures out.
    let stat_fds: Option<Vec<_>> = sockets
        .iter()
        .map(|s| std::os::fd::AsFd::as_fd(s).try_clone_to_owned().ok())
        .collect();
    info.sockets = crate::stats::XskStatsSource::new(stat_fds.unwrap_or_default());
    for (q, socket) in sockets.into_iter().enumerate() {
        let (rx, tx) = socket.split();
        // Frames of several chunks where the sockets are multi-buffer (jumbo MTUs).
        let max_frame = (mtu + L2_OVERHEAD).min(tx.max_frame() as u32);
        info.max_frame = max_frame;
        info.tx_checksum_offload = tx.checksum_offload();
        let vms = m
            .ports
            .iter()
            .map(|&p| VhostEndpoint::new(vhost[p].clone(), &counters[p]))
            .collect();
        let pairs: Vec<usize> = m.ports.iter().map(|&p| vhost[p].queue_pairs()).collect();
        let own = crate::fwd::macvlan::ports::owned_queues(&pairs, m.queues as usize, q);
        log::info!(
            "macvlan on {ifname}: shard {ifname}/q{q} polls AF_XDP queue {q} and the TX queues of {}",
            crate::fwd::macvlan::ports::describe(
                &own,
                |i| ports[m.ports[i]].name.as_str(),
                |i| pairs[i]
            )
        );
        shards.push(Box::new(MacvlanShard::new(
            format!("{ifname}/q{q}"),
            decide.clone(),
            (rx, tx),
            tap.take(),
            UplinkEndpoint {
                counters: uplink_counters.writer(),
                tally: PortTally::default(),
                max_frame,
                queue: (q, m.queues as usize),
                checksums,
            },
            vms,
            own,
        )));
    }
    log::info!(
        "uplink {ifname}: MTU {mtu}, frames up to {} bytes each way{}; checksums out of it {}",
        info.max_frame,
        if info.multi_buffer {
            " (AF_XDP multi-buffer: frames larger than a UMEM chunk in several)"
        } else {
            " (one UMEM chunk per frame: the kernel refused XDP_USE_SG)"
        },
        if info.tx_checksum_offload {
            "left to the kernel or NIC (AF_XDP transmit metadata)"
        } else {
            "filled in by vpmd (the kernel refused AF_XDP transmit metadata)"
        }
    );
    let port_list = info.port_list.clone();
    let announcer = announcer(&ifname);
    for &p in &m.ports {
        vhost[p].set_announcer(announcer.clone());
    }
    Ok(OpenedMacvlan {
        uplink,
        shards,
        port_list,
        announcer,
        entry: PortEntry {
            name: ifname,
            kind: PortKind::Uplink(info),
            counters: uplink_counters,
        },
    })
}
