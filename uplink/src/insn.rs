// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! eBPF instruction encoding: just the instructions the uplink's programs
//! use, as constructors that read like the assembly in the listings
//! (see `Documentation/bpf/standardization/instruction-set.rst`).
//!
//! An instruction is 8 bytes: opcode, destination and source register
//! (4 bits each), a signed 16-bit offset and a signed 32-bit immediate.
//! Jump offsets count instructions from the one after the jump.

/// One 8-byte eBPF instruction, as `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// Destination register in the low nibble and source register in the
    /// high nibble on little-endian machines (bitfield order of the C struct).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// An eBPF register. R0 holds return values, R1-R5 arguments (clobbered by
/// helper calls), R6-R9 survive calls, R10 is the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reg(u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R6: Reg = Reg(6);
pub const R10: Reg = Reg(10);

/// Width of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 8 bits (`BPF_B`).
    Byte,
    /// 16 bits (`BPF_H`).
    Half,
    /// 32 bits (`BPF_W`).
    Word,
}

impl Size {
    const fn bits(self) -> u8 {
        match self {
            Size::Word => 0x00,
            Size::Half => 0x08,
            Size::Byte => 0x10,
        }
    }
}

/// Helper function ids (`enum bpf_func_id`).
pub mod helper {
    /// `void *bpf_map_lookup_elem(map, key)`.
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    /// `long bpf_redirect_map(map, key, flags)`: the low bits of `flags` are
    /// the action returned when the map has no entry at `key`.
    pub const REDIRECT_MAP: i32 = 51;
}

// Instruction classes.
const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_STX: u8 = 0x03;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
// Modes and sources.
const MODE_IMM: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const SIZE_DW: u8 = 0x18;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
// ALU operations.
const ALU_ADD: u8 = 0x00;
const ALU_MOV: u8 = 0xb0;
// Jump operations.
const JMP_JEQ: u8 = 0x10;
const JMP_JGT: u8 = 0x20;
const JMP_JSET: u8 = 0x40;
const JMP_CALL: u8 = 0x80;
const JMP_EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by file descriptor.
const PSEUDO_MAP_FD: Reg = Reg(1);

const fn regs(dst: Reg, src: Reg) -> u8 {
    if cfg!(target_endian = "little") {
        (src.0 << 4) | dst.0
    } else {
        (dst.0 << 4) | src.0
    }
}

const fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: regs(dst, src),
        off,
        imm,
    }
}

impl Insn {
    /// `dst = src` (64-bit).
    pub const fn mov64_reg(dst: Reg, src: Reg) -> Self {
        insn(CLASS_ALU64 | ALU_MOV | SRC_X, dst, src, 0, 0)
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub const fn mov64_imm(dst: Reg, imm: i32) -> Self {
        insn(CLASS_ALU64 | ALU_MOV | SRC_K, dst, R0, 0, imm)
    }

    /// `dst += imm` (64-bit).
    pub const fn add64_imm(dst: Reg, imm: i32) -> Self {
        insn(CLASS_ALU64 | ALU_ADD | SRC_K, dst, R0, 0, imm)
    }

    /// `dst = *(size *)(src + off)`.
    pub const fn load(size: Size, dst: Reg, src: Reg, off: i16) -> Self {
        insn(CLASS_LDX | MODE_MEM | size.bits(), dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub const fn store(size: Size, dst: Reg, off: i16, src: Reg) -> Self {
        insn(CLASS_STX | MODE_MEM | size.bits(), dst, src, off, 0)
    }

    /// `if dst > src goto +off` (unsigned).
    pub const fn jgt_reg(dst: Reg, src: Reg, off: i16) -> Self {
        insn(CLASS_JMP | JMP_JGT | SRC_X, dst, src, off, 0)
    }

    /// `if dst == imm goto +off`.
    pub const fn jeq_imm(dst: Reg, imm: i32, off: i16) -> Self {
        insn(CLASS_JMP | JMP_JEQ | SRC_K, dst, R0, off, imm)
    }

    /// `if dst & imm goto +off`.
    pub const fn jset_imm(dst: Reg, imm: i32, off: i16) -> Self {
        insn(CLASS_JMP | JMP_JSET | SRC_K, dst, R0, off, imm)
    }

    /// `call helper` (arguments in R1-R5, result in R0).
    pub const fn call(helper: i32) -> Self {
        insn(CLASS_JMP | JMP_CALL, R0, R0, 0, helper)
    }

    /// `exit`, returning R0.
    pub const fn exit() -> Self {
        insn(CLASS_JMP | JMP_EXIT, R0, R0, 0, 0)
    }

    /// `dst = map` (`ld_imm64` with `BPF_PSEUDO_MAP_FD`): two instruction
    /// slots; the verifier replaces the descriptor with the map's address.
    pub const fn load_map_fd(dst: Reg, map_fd: i32) -> [Self; 2] {
        [
            insn(CLASS_LD | MODE_IMM | SIZE_DW, dst, PSEUDO_MAP_FD, 0, map_fd),
            insn(0, R0, R0, 0, 0),
        ]
    }

    /// For a jump at `at` to land on `target`: the offset to encode.
    pub const fn jump_offset(at: usize, target: usize) -> i16 {
        (target as isize - at as isize - 1) as i16
    }

    /// True if this is a jump (conditional or not; not call or exit).
    pub fn is_jump(&self) -> bool {
        let op = self.code & 0xf0;
        self.code & 0x07 == CLASS_JMP && op != JMP_CALL && op != JMP_EXIT
    }

    /// Source register field.
    pub fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0x0f
        }
    }

    /// Destination register field.
    pub fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0x0f
        } else {
            self.regs >> 4
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(i: Insn) -> [u8; 8] {
        let mut out = [0u8; 8];
        out[0] = i.code;
        out[1] = i.regs;
        out[2..4].copy_from_slice(&i.off.to_le_bytes());
        out[4..8].copy_from_slice(&i.imm.to_le_bytes());
        out
    }

    #[test]
    fn encodings_match_the_reference_assembler() {
        // Byte sequences as llvm-objdump prints them for the same assembly.
        assert_eq!(
            bytes(Insn::mov64_reg(R6, R1)),
            [0xbf, 0x16, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::mov64_imm(R0, 2)),
            [0xb7, 0x00, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::load(Size::Word, R2, R6, 4)),
            [0x61, 0x62, 4, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::load(Size::Byte, R4, R2, 0)),
            [0x71, 0x24, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::store(Size::Half, R10, -8, R4)),
            [0x6b, 0x4a, 0xf8, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::add64_imm(R2, -8)),
            [0x07, 0x02, 0, 0, 0xf8, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            bytes(Insn::jgt_reg(R4, R3, 20)),
            [0x2d, 0x34, 20, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::jset_imm(R4, 1, 12)),
            [0x45, 0x04, 12, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            bytes(Insn::jeq_imm(R0, 0, 6)),
            [0x15, 0x00, 6, 0, 0, 0, 0, 0]
        );
        assert_eq!(bytes(Insn::call(51)), [0x85, 0, 0, 0, 51, 0, 0, 0]);
        assert_eq!(bytes(Insn::exit()), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        let [lo, hi] = Insn::load_map_fd(R1, 7);
        assert_eq!(bytes(lo), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(bytes(hi), [0; 8]);
    }

    #[test]
    fn jump_offsets_count_from_the_next_instruction() {
        assert_eq!(Insn::jump_offset(5, 6), 0);
        assert_eq!(Insn::jump_offset(5, 26), 20);
        assert!(Insn::jeq_imm(R0, 0, 1).is_jump());
        assert!(!Insn::call(1).is_jump());
        assert!(!Insn::exit().is_jump());
    }
}
