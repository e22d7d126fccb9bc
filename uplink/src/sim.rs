// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A user-space interpreter for the eBPF instructions this crate emits, for
//! tests only: it runs the XDP listings on inputs that the kernel's
//! `BPF_PROG_TEST_RUN` refuses (it wants at least an Ethernet header, 14
//! bytes, after any metadata), such as frames shorter than a MAC address.
//!
//! Memory is one flat address space of a few regions; any access outside
//! them is an error, standing in for what the verifier would have refused.
//! Helpers are modelled on their kernel behaviour: `bpf_map_lookup_elem`
//! on the MAC table, `bpf_redirect_map` on the XSK map (`XDP_REDIRECT` if
//! the slot has a socket, else the action in the low bits of `flags`).

use crate::insn::{helper, Insn};

/// Descriptor the listings are built with for the MAC table.
pub const MAC_TABLE_FD: i32 = 3;
/// Descriptor the listings are built with for the XSK map.
pub const XSK_MAP_FD: i32 = 4;

const CTX_BASE: u64 = 0x1000;
const PACKET_BASE: u64 = 0x10000;
const STACK_TOP: u64 = 0x20000;
const STACK_SIZE: u64 = 512;
const MAP_HANDLE_BASE: u64 = 0x30000;
const LOOKUP_VALUE: u64 = 0x40000;

/// What the program sees.
pub struct Input<'a> {
    pub frame: &'a [u8],
    pub rx_queue_index: u32,
    /// Keys of the MAC table.
    pub macs: &'a [[u8; 6]],
    /// RX queues whose XSK map slot holds a socket.
    pub sockets: &'a [u32],
}

struct Memory {
    ctx: [u8; 24],
    packet: Vec<u8>,
    stack: [u8; STACK_SIZE as usize],
}

impl Memory {
    fn region(&mut self, addr: u64, len: u64) -> Result<&mut [u8], String> {
        let within = |base: u64, size: u64| addr >= base && addr + len <= base + size;
        let (bytes, base): (&mut [u8], u64) = if within(CTX_BASE, 24) {
            (&mut self.ctx, CTX_BASE)
        } else if within(PACKET_BASE, self.packet.len() as u64) {
            (&mut self.packet, PACKET_BASE)
        } else if within(STACK_TOP - STACK_SIZE, STACK_SIZE) {
            (&mut self.stack, STACK_TOP - STACK_SIZE)
        } else {
            return Err(format!(
                "access of {len} bytes at {addr:#x} is out of bounds"
            ));
        };
        let start = (addr - base) as usize;
        Ok(&mut bytes[start..start + len as usize])
    }

    fn load(&mut self, addr: u64, len: u64) -> Result<u64, String> {
        let bytes = self.region(addr, len)?;
        let mut value = [0u8; 8];
        value[..bytes.len()].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(value))
    }

    fn store(&mut self, addr: u64, len: u64, value: u64) -> Result<(), String> {
        let bytes = self.region(addr, len)?;
        bytes.copy_from_slice(&value.to_le_bytes()[..len as usize]);
        Ok(())
    }
}

/// Runs `listing` on `input`; returns r0 at `exit`.
pub fn run(listing: &[Insn], input: &Input<'_>) -> Result<u64, String> {
    let mut ctx = [0u8; 24];
    let data_end = PACKET_BASE + input.frame.len() as u64;
    ctx[0..4].copy_from_slice(&(PACKET_BASE as u32).to_le_bytes());
    ctx[4..8].copy_from_slice(&(data_end as u32).to_le_bytes());
    ctx[16..20].copy_from_slice(&input.rx_queue_index.to_le_bytes());
    let mut mem = Memory {
        ctx,
        packet: input.frame.to_vec(),
        stack: [0; STACK_SIZE as usize],
    };
    let mut reg = [0u64; 11];
    reg[1] = CTX_BASE;
    reg[10] = STACK_TOP;
    let mut pc = 0usize;
    for _ in 0..4096 {
        let i = *listing
            .get(pc)
            .ok_or(format!("fell off the program at {pc}"))?;
        let (dst, src) = (i.dst() as usize, i.src() as usize);
        let imm = i64::from(i.imm) as u64;
        let size = |code: u8| match code & 0x18 {
            0x00 => 4,
            0x08 => 2,
            0x10 => 1,
            _ => 8,
        };
        let mut next = pc + 1;
        match i.code {
            0xbf => reg[dst] = reg[src],
            0xb7 => reg[dst] = imm,
            0x07 => reg[dst] = reg[dst].wrapping_add(imm),
            0x18 => {
                // ld_imm64 with a map descriptor: a handle for the helpers.
                reg[dst] = MAP_HANDLE_BASE + i.imm as u64;
                next = pc + 2;
            }
            code if code & 0xe7 == 0x61 => {
                reg[dst] = mem.load(reg[src].wrapping_add(i64::from(i.off) as u64), size(code))?;
            }
            code if code & 0xe7 == 0x63 => mem.store(
                reg[dst].wrapping_add(i64::from(i.off) as u64),
                size(code),
                reg[src],
            )?,
            0x2d | 0x15 | 0x45 => {
                let taken = match i.code {
                    0x2d => reg[dst] > reg[src],
                    0x15 => reg[dst] == imm,
                    _ => reg[dst] & imm != 0,
                };
                if taken {
                    next = (pc as isize + 1 + i.off as isize) as usize;
                }
            }
            0x85 => {
                reg[0] = call(i.imm, &reg, &mut mem, input)?;
                reg[1..6].fill(0xdead_beef); // clobbered by the call
            }
            0x95 => return Ok(reg[0]),
            code => return Err(format!("opcode {code:#x} at {pc} is not modelled")),
        }
        pc = next;
    }
    Err("no exit after 4096 steps".into())
}

fn call(
    helper_id: i32,
    reg: &[u64; 11],
    mem: &mut Memory,
    input: &Input<'_>,
) -> Result<u64, String> {
    match helper_id {
        helper::MAP_LOOKUP_ELEM => {
            if reg[1] != MAP_HANDLE_BASE + MAC_TABLE_FD as u64 {
                return Err("lookup in an unexpected map".into());
            }
            let mut key = [0u8; 6];
            for (k, byte) in key.iter_mut().enumerate() {
                *byte = mem.load(reg[2] + k as u64, 1)? as u8;
            }
            Ok(if input.macs.contains(&key) {
                LOOKUP_VALUE
            } else {
                0
            })
        }
        helper::REDIRECT_MAP => {
            if reg[1] != MAP_HANDLE_BASE + XSK_MAP_FD as u64 {
                return Err("redirect through an unexpected map".into());
            }
            let queue = reg[2] as u32;
            Ok(if input.sockets.contains(&queue) {
                4
            } else {
                reg[3] & 0x3
            })
        }
        other => Err(format!("helper {other} is not modelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::{mac_filter_listing, passthru_listing};

    const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const PASS: u64 = 2;
    const REDIRECT: u64 = 4;

    fn verdict(frame: &[u8], queue: u32, sockets: &[u32]) -> u64 {
        let listing = mac_filter_listing(MAC_TABLE_FD, XSK_MAP_FD);
        let input = Input {
            frame,
            rx_queue_index: queue,
            macs: &[VM_MAC],
            sockets,
        };
        run(&listing, &input).expect("program runs within bounds")
    }

    fn frame_to(dst: [u8; 6], len: usize) -> Vec<u8> {
        let mut f = vec![0xabu8; len];
        let n = len.min(6);
        f[..n].copy_from_slice(&dst[..n]);
        f
    }

    #[test]
    fn frames_shorter_than_a_mac_pass() {
        for len in 0..6 {
            assert_eq!(
                verdict(&frame_to(VM_MAC, len), 0, &[0]),
                PASS,
                "{len}-byte VM frame"
            );
            assert_eq!(
                verdict(&frame_to([0xff; 6], len), 0, &[0]),
                PASS,
                "{len}-byte broadcast"
            );
        }
        for len in 6..=14 {
            assert_eq!(
                verdict(&frame_to(VM_MAC, len), 0, &[0]),
                REDIRECT,
                "{len}-byte VM frame"
            );
            assert_eq!(
                verdict(&frame_to([0xff; 6], len), 0, &[0]),
                PASS,
                "{len}-byte broadcast"
            );
        }
    }

    #[test]
    fn verdicts_follow_the_mac_table_and_the_queue() {
        let other = [0x52, 0x54, 0, 0, 0, 9];
        assert_eq!(verdict(&frame_to(VM_MAC, 60), 0, &[0]), REDIRECT);
        assert_eq!(verdict(&frame_to(other, 60), 0, &[0]), PASS);
        // Group frames are the kernel's (and the group tap's), whatever the
        // table holds: the group bit is tested before the lookup.
        for group in [
            [0xff; 6],
            [0x01, 0, 0x5e, 0, 0, 1],
            [0x33, 0x33, 0, 0, 0, 1],
        ] {
            assert_eq!(verdict(&frame_to(group, 60), 0, &[0]), PASS);
            let input = Input {
                frame: &frame_to(group, 60),
                rx_queue_index: 0,
                macs: &[group],
                sockets: &[0],
            };
            let listing = mac_filter_listing(MAC_TABLE_FD, XSK_MAP_FD);
            assert_eq!(
                run(&listing, &input).unwrap(),
                PASS,
                "group MAC in the table"
            );
        }
        // Keyed by the frame's own RX queue: no socket there, no redirect.
        assert_eq!(verdict(&frame_to(VM_MAC, 60), 1, &[0]), PASS);
        assert_eq!(verdict(&frame_to(VM_MAC, 60), 1, &[0, 1]), REDIRECT);
    }

    #[test]
    fn passthru_takes_every_frame_of_a_bound_queue() {
        let listing = passthru_listing(XSK_MAP_FD);
        for (frame, sockets, expect) in [
            (&[][..], &[0u32][..], REDIRECT),
            (&[1u8; 60][..], &[], PASS),
        ] {
            let input = Input {
                frame,
                rx_queue_index: 0,
                macs: &[],
                sockets,
            };
            assert_eq!(run(&listing, &input).unwrap(), expect);
        }
    }

    #[test]
    fn out_of_bounds_reads_are_caught() {
        // Without the bounds check (insn 5 turned into a no-op)
        // a short frame is read past its end: the kernel's verifier refuses
        // such a program; the simulator reports the access.
        let mut listing = mac_filter_listing(MAC_TABLE_FD, XSK_MAP_FD);
        listing[5] = Insn::add64_imm(crate::insn::R4, 0);
        let input = Input {
            frame: &[0x52, 0x54],
            rx_queue_index: 0,
            macs: &[VM_MAC],
            sockets: &[0],
        };
        assert!(run(&listing, &input).unwrap_err().contains("out of bounds"));
    }
}
