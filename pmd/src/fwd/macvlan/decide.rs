// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Where a macvlan frame goes: the whole forwarding decision, with no rings in sight.
//!
//! Modelled on Linux's macvlan (`macvlan_handle_frame`, `macvlan_queue_xmit`):
//!
//! | from \ to | VM by destination MAC | every other VM (group frames) | the uplink |
//! |---|---|---|---|
//! | uplink, any mode but passthru | unicast to a VM's MAC | broadcast/multicast, except to the VM the frame came from | - |
//! | uplink, passthru | every frame to the one VM | - | - |
//! | VM, bridge | unicast to a VM's MAC | broadcast/multicast | unicast to other MACs, and broadcast/multicast |
//! | VM, private / vepa / passthru | - | - | everything |
//!
//! A VM may send only with its own MAC as source unless its port allows spoofing;
//! other frames are dropped as `spoofed`. Unicast to a MAC no VM has, arriving
//! from the uplink, reaches no VM (the XDP program keeps those for the host).

use vpmd_uplink::MacAddr;

use crate::config::MacvlanMode;
use crate::counters::DropReason;

/// A MAC address as an integer (the six bytes, big-endian, in the low 48 bits):
/// one compare instead of six.
pub type MacKey = u64;

/// The key of a MAC.
#[inline]
pub fn mac_key(mac: &[u8; 6]) -> MacKey {
    MacAddr(*mac).to_u64()
}

/// Whether a MAC is broadcast or multicast (the group bit).
#[inline]
pub fn is_group(mac: &[u8; 6]) -> bool {
    MacAddr(*mac).is_multicast()
}

/// Where a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// The uplink (the outside world).
    Uplink,
    /// VM port number `i` of this macvlan.
    Vm(usize),
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Destinations {
    /// Bit `i`: VM port `i` of this macvlan.
    pub vms: u64,
    /// Out of the uplink.
    pub uplink: bool,
    /// Several copies (a flooded group frame): a copy that fails is counted at its
    /// destination, not as a drop of the frame.
    pub flood: bool,
}

/// The VM ports of one macvlan, as the decision needs them.
#[derive(Debug, Clone)]
pub struct MacvlanTable {
    mode: MacvlanMode,
    /// MAC of VM port `i`.
    macs: Vec<MacKey>,
    /// Whether VM port `i` may send with another source MAC.
    spoofing_allowed: Vec<bool>,
    /// Bits of every VM port.
    all: u64,
}

impl MacvlanTable {
    /// A table of `ports` (MAC, spoofing allowed), at most 64.
    pub fn new(mode: MacvlanMode, ports: &[([u8; 6], bool)]) -> Self {
        assert!(
            ports.len() <= 64,
            "config validation caps macvlan ports at 64"
        );
        MacvlanTable {
            mode,
            macs: ports.iter().map(|(m, _)| mac_key(m)).collect(),
            spoofing_allowed: ports.iter().map(|(_, s)| *s).collect(),
            all: if ports.len() == 64 {
                u64::MAX
            } else {
                (1u64 << ports.len()) - 1
            },
        }
    }

    /// The forwarding mode.
    pub fn mode(&self) -> MacvlanMode {
        self.mode
    }

    /// Number of VM ports.
    pub fn len(&self) -> usize {
        self.macs.len()
    }

    /// Whether there are no VM ports.
    pub fn is_empty(&self) -> bool {
        self.macs.is_empty()
    }

    /// The VM port with this MAC.
    #[inline]
    pub fn lookup(&self, mac: MacKey) -> Option<usize> {
        self.macs.iter().position(|&m| m == mac)
    }

    /// Decides where a frame with these Ethernet addresses goes.
    #[inline]
    pub fn decide(
        &self,
        from: Ingress,
        dst: &[u8; 6],
        src: &[u8; 6],
    ) -> Result<Destinations, DropReason> {
        match from {
            Ingress::Uplink => self.decide_uplink_frame(dst, src),
            Ingress::Vm(i) => self.decide_vm_frame(i, dst, src),
        }
    }

    fn decide_uplink_frame(
        &self,
        dst: &[u8; 6],
        src: &[u8; 6],
    ) -> Result<Destinations, DropReason> {
        if self.mode == MacvlanMode::Passthru {
            return Ok(Destinations {
                vms: self.all,
                ..Default::default()
            });
        }
        if is_group(dst) {
            // Never hand a VM its own group frame back (a VEPA switch reflects them).
            let sender = self.lookup(mac_key(src)).map_or(0, |i| 1u64 << i);
            let vms = self.all & !sender;
            if vms == 0 {
                return Err(DropReason::NoDestination);
            }
            return Ok(Destinations {
                vms,
                uplink: false,
                flood: true,
            });
        }
        match self.lookup(mac_key(dst)) {
            Some(i) => Ok(Destinations {
                vms: 1 << i,
                ..Default::default()
            }),
            None => Err(DropReason::NoDestination),
        }
    }

    fn decide_vm_frame(
        &self,
        i: usize,
        dst: &[u8; 6],
        src: &[u8; 6],
    ) -> Result<Destinations, DropReason> {
        if !self.spoofing_allowed[i] && mac_key(src) != self.macs[i] {
            return Err(DropReason::Spoofed);
        }
        let out = Destinations {
            uplink: true,
            ..Default::default()
        };
        if self.mode != MacvlanMode::Bridge {
            return Ok(out);
        }
        if is_group(dst) {
            return Ok(Destinations {
                vms: self.all & !(1u64 << i),
                uplink: true,
                flood: true,
            });
        }
        match self.lookup(mac_key(dst)) {
            Some(j) => Ok(Destinations {
                vms: 1 << j,
                ..Default::default()
            }),
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0a];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0b];
    const C: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x0c];
    const OUTSIDE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    const BCAST: [u8; 6] = [0xff; 6];
    const MCAST: [u8; 6] = [0x01, 0x00, 0x5e, 0, 0, 0x01];

    fn table(mode: MacvlanMode) -> MacvlanTable {
        // C may spoof.
        MacvlanTable::new(mode, &[(A, false), (B, false), (C, true)])
    }

    fn to_vms(vms: u64) -> Result<Destinations, DropReason> {
        Ok(Destinations {
            vms,
            ..Default::default()
        })
    }

    fn flood(vms: u64, uplink: bool) -> Result<Destinations, DropReason> {
        Ok(Destinations {
            vms,
            uplink,
            flood: true,
        })
    }

    fn out() -> Result<Destinations, DropReason> {
        Ok(Destinations {
            uplink: true,
            ..Default::default()
        })
    }

    #[test]
    fn bridge_mode() {
        let t = table(MacvlanMode::Bridge);
        let vm0 = Ingress::Vm(0);
        assert_eq!(t.decide(vm0, &B, &A), to_vms(0b010), "unicast to a VM");
        assert_eq!(t.decide(vm0, &OUTSIDE, &A), out(), "to the outside");
        assert_eq!(t.decide(vm0, &BCAST, &A), flood(0b110, true), "broadcast");
        assert_eq!(t.decide(vm0, &MCAST, &A), flood(0b110, true), "multicast");
        assert_eq!(t.decide(vm0, &B, &OUTSIDE), Err(DropReason::Spoofed));
        assert_eq!(
            t.decide(Ingress::Vm(2), &A, &OUTSIDE),
            to_vms(0b001),
            "C may spoof"
        );
    }

    #[test]
    fn private_vepa_and_passthru_send_everything_out() {
        for mode in [MacvlanMode::Private, MacvlanMode::Vepa] {
            let t = table(mode);
            for dst in [B, OUTSIDE, BCAST, MCAST] {
                assert_eq!(
                    t.decide(Ingress::Vm(0), &dst, &A),
                    out(),
                    "{mode:?} {dst:?}"
                );
            }
            assert_eq!(t.decide(Ingress::Vm(0), &B, &C), Err(DropReason::Spoofed));
        }
        let t = MacvlanTable::new(MacvlanMode::Passthru, &[(A, false)]);
        assert_eq!(t.decide(Ingress::Vm(0), &BCAST, &A), out());
        assert_eq!(
            t.decide(Ingress::Vm(0), &OUTSIDE, &B),
            Err(DropReason::Spoofed)
        );
    }

    #[test]
    fn from_the_uplink() {
        for mode in [MacvlanMode::Bridge, MacvlanMode::Private, MacvlanMode::Vepa] {
            let t = table(mode);
            let up = Ingress::Uplink;
            assert_eq!(t.decide(up, &B, &OUTSIDE), to_vms(0b010), "unicast to a VM");
            assert_eq!(
                t.decide(up, &OUTSIDE, &A),
                Err(DropReason::NoDestination),
                "unknown"
            );
            assert_eq!(
                t.decide(up, &BCAST, &OUTSIDE),
                flood(0b111, false),
                "broadcast"
            );
            assert_eq!(
                t.decide(up, &MCAST, &OUTSIDE),
                flood(0b111, false),
                "multicast"
            );
            assert_eq!(
                t.decide(up, &BCAST, &B),
                flood(0b101, false),
                "reflected: not to B"
            );
        }
        let t = MacvlanTable::new(MacvlanMode::Passthru, &[(A, false)]);
        assert_eq!(
            t.decide(Ingress::Uplink, &OUTSIDE, &B),
            to_vms(1),
            "passthru: all"
        );
        let lone = MacvlanTable::new(MacvlanMode::Vepa, &[(A, false)]);
        assert_eq!(
            lone.decide(Ingress::Uplink, &BCAST, &A),
            Err(DropReason::NoDestination),
            "a lone VM's own reflected broadcast"
        );
    }

    #[test]
    fn keys_and_group_bit() {
        assert_eq!(mac_key(&[0, 0, 0, 0, 1, 2]), 0x0102);
        assert_ne!(mac_key(&A), mac_key(&B));
        assert!(is_group(&BCAST) && is_group(&MCAST) && !is_group(&A));
        let full: Vec<([u8; 6], bool)> = (0..64u8).map(|i| ([2, 0, 0, 0, 0, i], false)).collect();
        let t = MacvlanTable::new(MacvlanMode::Bridge, &full);
        assert_eq!(
            t.decide(Ingress::Vm(63), &BCAST, &full[63].0).unwrap().vms,
            u64::MAX >> 1
        );
    }
}
