// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The XDP programs, hand-assembled, and loading them with their maps.
//!
//! # MAC filter (macvlan bridge/VEPA/private modes)
//!
//! Unicast frames for a VM port (destination MAC in the [`MacTable`]) go to
//! the AF_XDP socket of the frame's RX queue; everything else returns
//! `XDP_PASS` and reaches the kernel stack untouched, as Linux macvlan's
//! `RX_HANDLER_PASS`. That includes broadcast and multicast: XDP cannot
//! clone a frame, and the host's own stack on the uplink needs them (ARP,
//! IPv6 neighbour discovery). The VM ports get their copies from the
//! group tap ([`crate::packet_tap`]), an AF_PACKET socket that sees the
//! frames once the kernel has them.
//!
//! ```text
//!  0: r6 = r1                      ; keep ctx: calls clobber r1-r5
//!  1: r2 = *(u32 *)(r6 + 0)        ; r2 = ctx->data
//!  2: r3 = *(u32 *)(r6 + 4)        ; r3 = ctx->data_end
//!  3: r4 = r2
//!  4: r4 += 6                      ; r4 = end of the destination MAC
//!  5: if r4 > r3 goto pass         ; shorter than a MAC: not ours
//!  6: r4 = *(u8 *)(r2 + 0)         ; first byte of the destination
//!  7: if r4 & 0x1 goto pass        ; group bit: broadcast/multicast, for
//!                                 ;   the host stack (and the group tap)
//!  8: r4 = *(u16 *)(r2 + 0)        ; copy the destination MAC into the
//!  9: *(u16 *)(r10 - 8) = r4       ;   6-byte key at fp-8, in halfwords
//! 10: r4 = *(u16 *)(r2 + 2)        ;   (aligned even where the packet
//! 11: *(u16 *)(r10 - 6) = r4       ;   starts 2 bytes off a word)
//! 12: r4 = *(u16 *)(r2 + 4)
//! 13: *(u16 *)(r10 - 4) = r4
//! 14: r1 = map[mac_table] ll       ; (two slots)
//! 16: r2 = r10
//! 17: r2 += -8                     ; r2 = &key
//! 18: call bpf_map_lookup_elem
//! 19: if r0 == 0 goto pass         ; not a VM port's MAC
//! redirect:                       ; a VM port's unicast frame
//! 20: r1 = map[xsk_map] ll         ; (two slots)
//! 22: r2 = *(u32 *)(r6 + 16)       ; r2 = ctx->rx_queue_index
//! 23: r3 = XDP_PASS                ; action if that queue has no socket
//! 24: call bpf_redirect_map        ; XDP_REDIRECT, or XDP_PASS
//! 25: exit
//! pass:
//! 26: r0 = XDP_PASS
//! 27: exit
//! ```
//!
//! # Passthru (macvlan passthru mode: one VM owns the interface)
//!
//! ```text
//!  0: r2 = *(u32 *)(r1 + 16)       ; r2 = ctx->rx_queue_index
//!  1: r1 = map[xsk_map] ll         ; (two slots)
//!  3: r3 = XDP_PASS                ; action if that queue has no socket
//!  4: call bpf_redirect_map
//!  5: exit
//! ```

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::bpf::{self, BpfError, XdpMd, ATTACH_TYPE_XDP, PROG_TYPE_XDP};
use crate::insn::{helper, Insn, Size, R0, R1, R10, R2, R3, R4, R6};
use crate::maps::{MacTable, MapError, XskMap};

/// Program type and expected attach type of every program here.
const XDP: (u32, u32) = (PROG_TYPE_XDP, ATTACH_TYPE_XDP);

/// XDP verdicts (`enum xdp_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAction {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    /// A value outside `enum xdp_action`.
    Other(u32),
}

impl XdpAction {
    /// `XDP_PASS`.
    pub const PASS: i32 = 2;

    pub fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Aborted,
            1 => Self::Drop,
            2 => Self::Pass,
            3 => Self::Tx,
            4 => Self::Redirect,
            other => Self::Other(other),
        }
    }
}

/// Which frames the program takes from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedirectPolicy {
    /// Unicast frames to a MAC in the [`MacTable`]. Broadcast and multicast
    /// are passed to the kernel (see [`crate::packet_tap`] for the VMs' copy).
    #[default]
    MacFilter,
    /// Every frame (macvlan passthru).
    Passthru,
}

/// The programs' licence, as the kernel records it. The kernel reads it
/// only to decide whether GPL-only helpers may be called; ours call none.
pub const LICENSE: &std::ffi::CStr = c"Apache-2.0 OR BSD-3-Clause";

/// Offsets in `struct xdp_md`.
const CTX_DATA: i16 = 0;
const CTX_DATA_END: i16 = 4;
const CTX_RX_QUEUE_INDEX: i16 = 16;
/// Stack offset of the MAC table key.
const KEY: i16 = -8;

/// Index of the `pass:` label in [`mac_filter_listing`].
const PASS: usize = 26;

/// The MAC filter program (see the module documentation for the listing).
pub fn mac_filter_listing(mac_table_fd: i32, xsk_map_fd: i32) -> [Insn; 28] {
    use Insn as I;
    let to = Insn::jump_offset;
    let [macs, macs_hi] = I::load_map_fd(R1, mac_table_fd);
    let [xsks, xsks_hi] = I::load_map_fd(R1, xsk_map_fd);
    [
        /*  0 */ I::mov64_reg(R6, R1),
        /*  1 */ I::load(Size::Word, R2, R6, CTX_DATA),
        /*  2 */ I::load(Size::Word, R3, R6, CTX_DATA_END),
        /*  3 */ I::mov64_reg(R4, R2),
        /*  4 */ I::add64_imm(R4, 6),
        /*  5 */ I::jgt_reg(R4, R3, to(5, PASS)),
        /*  6 */ I::load(Size::Byte, R4, R2, 0),
        /*  7 */ I::jset_imm(R4, 1, to(7, PASS)),
        /*  8 */ I::load(Size::Half, R4, R2, 0),
        /*  9 */ I::store(Size::Half, R10, KEY, R4),
        /* 10 */ I::load(Size::Half, R4, R2, 2),
        /* 11 */ I::store(Size::Half, R10, KEY + 2, R4),
        /* 12 */ I::load(Size::Half, R4, R2, 4),
        /* 13 */ I::store(Size::Half, R10, KEY + 4, R4),
        /* 14 */ macs,
        /* 15 */ macs_hi,
        /* 16 */ I::mov64_reg(R2, R10),
        /* 17 */ I::add64_imm(R2, i32::from(KEY)),
        /* 18 */ I::call(helper::MAP_LOOKUP_ELEM),
        /* 19 */ I::jeq_imm(R0, 0, to(19, PASS)),
        /* 20 */ xsks, // redirect:
        /* 21 */ xsks_hi,
        /* 22 */ I::load(Size::Word, R2, R6, CTX_RX_QUEUE_INDEX),
        /* 23 */ I::mov64_imm(R3, XdpAction::PASS),
        /* 24 */ I::call(helper::REDIRECT_MAP),
        /* 25 */ I::exit(),
        /* 26 */ I::mov64_imm(R0, XdpAction::PASS), // pass:
        /* 27 */ I::exit(),
    ]
}

/// The passthru program (see the module documentation for the listing).
pub fn passthru_listing(xsk_map_fd: i32) -> [Insn; 6] {
    use Insn as I;
    let [xsks, xsks_hi] = I::load_map_fd(R1, xsk_map_fd);
    [
        /* 0 */ I::load(Size::Word, R2, R1, CTX_RX_QUEUE_INDEX),
        /* 1 */ xsks,
        /* 2 */ xsks_hi,
        /* 3 */ I::mov64_imm(R3, XdpAction::PASS),
        /* 4 */ I::call(helper::REDIRECT_MAP),
        /* 5 */ I::exit(),
    ]
}

/// Failures of loading the program and its maps.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Maps(#[from] MapError),
    /// The verifier log is in the source's message.
    #[error("loading the XDP program failed")]
    Load(#[source] BpfError),
    #[error("reading the loaded program's id failed")]
    Id(#[source] BpfError),
    #[error("test run of the XDP program failed")]
    TestRun(#[source] BpfError),
}

/// A loaded XDP program with its two maps, not yet attached anywhere
/// (see [`crate::attach::XdpLink`]). The maps live as long as the program
/// does, and the kernel keeps the maps alive while the program is attached.
#[derive(Debug)]
pub struct XdpProgram {
    prog: OwnedFd,
    id: u32,
    /// Loaded with `BPF_F_XDP_HAS_FRAGS`.
    frags: bool,
    policy: RedirectPolicy,
    mac_table: MacTable,
    xsk_map: XskMap,
}

impl XdpProgram {
    /// Creates the maps (a MAC table of `mac_capacity` entries, an XSK map
    /// for RX queues `0..queue_slots`) and loads the program for `policy`.
    pub fn load(
        policy: RedirectPolicy,
        mac_capacity: u32,
        queue_slots: u32,
    ) -> Result<Self, ProgramError> {
        let mac_table = MacTable::create(mac_capacity)?;
        let xsk_map = XskMap::create(queue_slots)?;
        let (name, insns): (&str, Vec<Insn>) = match policy {
            RedirectPolicy::MacFilter => (
                "vpmd_macfilter",
                mac_filter_listing(mac_table.raw_fd(), xsk_map.raw_fd()).to_vec(),
            ),
            RedirectPolicy::Passthru => {
                ("vpmd_passthru", passthru_listing(xsk_map.raw_fd()).to_vec())
            }
        };
        // Frags-aware where the kernel knows the flag (5.18+): it reads only the
        // Ethernet header, in the first buffer, and an interface may then carry
        // frames above a page (a veth refuses native XDP beyond ~3500 bytes of
        // MTU otherwise).
        let (prog, frags) = match bpf::prog_load(
            name,
            XDP,
            bpf::PROG_F_XDP_HAS_FRAGS,
            &insns,
            LICENSE,
        ) {
            Ok(prog) => (prog, true),
            Err(frags_refused) => {
                let prog =
                    bpf::prog_load(name, XDP, 0, &insns, LICENSE).map_err(ProgramError::Load)?;
                log::info!("{frags_refused}; loaded {name} without BPF_F_XDP_HAS_FRAGS (frames up to a page)");
                (prog, false)
            }
        };
        let id = bpf::prog_id(prog.as_fd()).map_err(ProgramError::Id)?;
        Ok(Self {
            prog,
            id,
            frags,
            policy,
            mac_table,
            xsk_map,
        })
    }

    /// The system-wide program id (as `bpftool prog` and `ip link` show it).
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn policy(&self) -> RedirectPolicy {
        self.policy
    }

    /// Whether the program was loaded frags-aware (`BPF_F_XDP_HAS_FRAGS`), so
    /// that it runs on frames of several buffers (jumbo MTUs).
    pub fn frags(&self) -> bool {
        self.frags
    }

    /// The VM ports' MAC addresses (unused by the passthru program).
    pub fn mac_table(&self) -> &MacTable {
        &self.mac_table
    }

    /// RX queue → AF_XDP socket.
    pub fn xsk_map(&self) -> &XskMap {
        &self.xsk_map
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN` (RX queue
    /// 0, no device) and returns its verdict. For tests and diagnostics.
    pub fn test_run(&self, frame: &[u8]) -> Result<XdpAction, ProgramError> {
        bpf::prog_test_run(self.prog.as_fd(), frame, None)
            .map(XdpAction::from_raw)
            .map_err(ProgramError::TestRun)
    }

    /// As [`Self::test_run`], with an explicit `struct xdp_md` context.
    pub fn test_run_with_ctx(&self, data: &[u8], ctx: &XdpMd) -> Result<XdpAction, ProgramError> {
        bpf::prog_test_run(self.prog.as_fd(), data, Some(ctx))
            .map(XdpAction::from_raw)
            .map_err(ProgramError::TestRun)
    }
}

impl AsFd for XdpProgram {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    /// Index of the `redirect:` label in [`mac_filter_listing`] (reached
    /// by falling through from a MAC table hit; no jump leads there).
    const REDIRECT: usize = 20;
    const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x65, 0x43, 0x21];

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: needs root (CAP_BPF, CAP_NET_ADMIN)");
        }
        root
    }

    /// An AF_XDP socket, unbound: enough for `bpf_redirect_map` to find a
    /// socket in the slot (the test run reports the verdict and redirects
    /// nothing).
    fn unbound_xsk() -> OwnedFd {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(
            fd >= 0,
            "socket(AF_XDP): {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a new descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn frame(dst: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&OTHER_MAC);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        f
    }

    fn run_on(prog: &XdpProgram, data: &[u8]) -> XdpAction {
        prog.test_run(data).expect("test run")
    }

    #[test]
    fn listing_jumps_land_on_their_labels() {
        let listing = mac_filter_listing(3, 4);
        let targets: Vec<usize> = listing
            .iter()
            .enumerate()
            .filter(|(_, i)| i.is_jump())
            .map(|(at, i)| (at as isize + 1 + i.off as isize) as usize)
            .collect();
        assert_eq!(targets, vec![PASS, PASS, PASS], "every jump leads to pass");
        assert_eq!(listing[PASS], Insn::mov64_imm(R0, XdpAction::PASS));
        assert_eq!(listing[REDIRECT], Insn::load_map_fd(R1, 4)[0]);
        assert_eq!(
            listing[REDIRECT - 1],
            Insn::jeq_imm(R0, 0, 6),
            "a hit falls through"
        );
        // Both exits are preceded by a verdict in r0.
        assert_eq!(listing[24], Insn::call(helper::REDIRECT_MAP));
        assert_eq!(listing.iter().filter(|i| **i == Insn::exit()).count(), 2);
    }

    #[test]
    fn mac_filter_verdicts() {
        if !is_root() {
            return;
        }
        let prog = XdpProgram::load(RedirectPolicy::MacFilter, 16, 4).expect("load");
        assert!(prog.id() > 0);
        prog.mac_table().insert(VM_MAC, 1).expect("insert mac");
        assert_eq!(prog.mac_table().get(VM_MAC).unwrap(), Some(1));
        let run = |dst| prog.test_run(&frame(dst)).expect("test run");

        // No socket in slot 0 yet: bpf_redirect_map falls back to XDP_PASS,
        // so nothing is lost while sockets are being set up.
        assert_eq!(run(VM_MAC), XdpAction::Pass);
        assert_eq!(run([0xff; 6]), XdpAction::Pass);

        let xsk = unbound_xsk();
        prog.xsk_map()
            .insert(0, xsk.as_fd())
            .expect("insert socket");
        assert_eq!(run(VM_MAC), XdpAction::Redirect, "known VM MAC");
        // Group frames stay with the kernel (the host stack needs them; the
        // VMs get theirs from the group tap).
        assert_eq!(run([0xff; 6]), XdpAction::Pass, "broadcast");
        assert_eq!(
            run([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]),
            XdpAction::Pass,
            "IPv4 multicast"
        );
        assert_eq!(
            run([0x33, 0x33, 0x00, 0x00, 0x00, 0x01]),
            XdpAction::Pass,
            "IPv6 multicast"
        );
        assert_eq!(run(OTHER_MAC), XdpAction::Pass, "unknown unicast");
        // A group MAC in the table changes nothing: the group bit is tested
        // before the lookup.
        let group = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];
        prog.mac_table().insert(group, 2).expect("insert group mac");
        assert_eq!(run(group), XdpAction::Pass, "group MAC in the table");
        assert!(prog.mac_table().remove(group).expect("remove group mac"));

        // The shortest frame the test run takes (14 bytes; shorter ones are
        // run in crate::sim): all of it is a header, the verdict holds.
        assert_eq!(run_on(&prog, &frame(VM_MAC)[..14]), XdpAction::Redirect);
        assert_eq!(run_on(&prog, &frame(OTHER_MAC)[..14]), XdpAction::Pass);

        // Removed while loaded: the next frame passes.
        assert!(prog.mac_table().remove(VM_MAC).expect("remove"));
        assert!(!prog.mac_table().remove(VM_MAC).expect("remove again"));
        assert_eq!(prog.mac_table().get(VM_MAC).unwrap(), None);
        assert_eq!(run(VM_MAC), XdpAction::Pass, "removed MAC");
        assert_eq!(run([0xff; 6]), XdpAction::Pass);

        // Emptying the socket slot turns redirects back into passes.
        prog.mac_table()
            .insert(VM_MAC, 1)
            .expect("insert mac again");
        assert_eq!(run(VM_MAC), XdpAction::Redirect);
        assert!(prog.xsk_map().remove(0).expect("remove socket"));
        assert_eq!(run(VM_MAC), XdpAction::Pass, "no socket in the slot");
    }

    #[test]
    fn passthru_redirects_everything() {
        if !is_root() {
            return;
        }
        let prog = XdpProgram::load(RedirectPolicy::Passthru, 16, 1).expect("load");
        assert_eq!(
            prog.test_run(&frame(OTHER_MAC)).unwrap(),
            XdpAction::Pass,
            "no socket yet"
        );
        let xsk = unbound_xsk();
        prog.xsk_map()
            .insert(0, xsk.as_fd())
            .expect("insert socket");
        for dst in [OTHER_MAC, VM_MAC, [0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1]] {
            assert_eq!(prog.test_run(&frame(dst)).unwrap(), XdpAction::Redirect);
        }
    }

    #[test]
    fn verifier_log_is_returned_on_failure() {
        if !is_root() {
            return;
        }
        // A program that exits without setting r0.
        let bad = [Insn::exit()];
        let err =
            bpf::prog_load("vpmd_bad", XDP, 0, &bad, LICENSE).expect_err("verifier must refuse");
        let text = err.to_string();
        assert!(text.contains("BPF_PROG_LOAD"), "{text}");
        assert!(text.contains("R0 !read_ok"), "verifier log missing: {text}");
    }

    #[test]
    fn verifier_refuses_the_listing_without_its_bounds_check() {
        if !is_root() {
            return;
        }
        let prog = XdpProgram::load(RedirectPolicy::MacFilter, 16, 1).expect("load");
        let mut listing = mac_filter_listing(prog.mac_table().raw_fd(), prog.xsk_map().raw_fd());
        listing[5] = Insn::add64_imm(R4, 0); // a no-op in its place
        let err = bpf::prog_load("vpmd_nocheck", XDP, 0, &listing, LICENSE)
            .expect_err("unchecked packet access must be refused");
        assert!(
            err.to_string().contains("invalid access to packet"),
            "{err}"
        );
    }

    #[test]
    fn map_element_sizes_are_checked() {
        if !is_root() {
            return;
        }
        let map = bpf::BpfMap::create("vpmd_t", bpf::MAP_TYPE_HASH, 6, 4, 4).unwrap();
        let err = map.update(&[0; 8], &[0; 4], bpf::UPDATE_ANY).unwrap_err();
        assert!(matches!(
            err,
            BpfError::ElementSize {
                expected: 6,
                got: 8,
                ..
            }
        ));
    }
}
