// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `bpf(2)` system call, for the handful of commands the uplink needs:
//! map create / update / delete / lookup, program load (with the verifier
//! log on failure), `BPF_PROG_TEST_RUN`, `BPF_LINK_CREATE` for XDP and
//! `BPF_OBJ_GET_INFO_BY_FD` for a program's id.
//!
//! Each command has its own `#[repr(C)]` argument struct, laid out like its
//! member of `union bpf_attr` in `include/uapi/linux/bpf.h`. The kernel
//! zero-fills whatever lies past the size we pass, so each struct stops at
//! the last field we use.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::insn::Insn;

/// `enum bpf_cmd`.
mod cmd {
    pub const MAP_CREATE: u32 = 0;
    pub const MAP_LOOKUP_ELEM: u32 = 1;
    pub const MAP_UPDATE_ELEM: u32 = 2;
    pub const MAP_DELETE_ELEM: u32 = 3;
    pub const PROG_LOAD: u32 = 5;
    pub const PROG_TEST_RUN: u32 = 10;
    pub const OBJ_GET_INFO_BY_FD: u32 = 15;
    pub const LINK_CREATE: u32 = 28;
}

/// `BPF_MAP_TYPE_HASH`.
pub const MAP_TYPE_HASH: u32 = 1;
/// `BPF_MAP_TYPE_XSKMAP`: AF_XDP sockets, the target of `bpf_redirect_map`.
pub const MAP_TYPE_XSKMAP: u32 = 17;
/// `BPF_PROG_TYPE_XDP`.
pub const PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` in `enum bpf_attach_type`.
pub const ATTACH_TYPE_XDP: u32 = 37;
/// `BPF_ANY`: create or replace a map element.
pub const UPDATE_ANY: u64 = 0;

/// Size of the verifier log buffer used when a load fails.
const VERIFIER_LOG_SIZE: usize = 256 * 1024;

/// Failures of the `bpf(2)` system call, one variant per command.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("BPF_MAP_CREATE of map `{name}` failed")]
    MapCreate {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("BPF_MAP_UPDATE_ELEM on map `{name}` failed")]
    MapUpdate {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("BPF_MAP_DELETE_ELEM on map `{name}` failed")]
    MapDelete {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("BPF_MAP_LOOKUP_ELEM on map `{name}` failed")]
    MapLookup {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("map `{name}` takes {expected}-byte {what}s, got {got} bytes")]
    ElementSize {
        name: String,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("BPF_PROG_LOAD of program `{name}` failed; verifier log:\n{log}")]
    ProgLoad {
        name: String,
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("BPF_PROG_TEST_RUN failed")]
    TestRun {
        #[source]
        source: io::Error,
    },
    #[error("BPF_OBJ_GET_INFO_BY_FD failed")]
    ObjInfo {
        #[source]
        source: io::Error,
    },
    #[error("BPF_LINK_CREATE (XDP, ifindex {ifindex}, flags {flags:#x}) failed")]
    LinkCreate {
        ifindex: u32,
        flags: u32,
        #[source]
        source: io::Error,
    },
}

impl BpfError {
    /// The errno of the failed call, if it was the kernel that refused.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::MapCreate { source, .. }
            | Self::MapUpdate { source, .. }
            | Self::MapDelete { source, .. }
            | Self::MapLookup { source, .. }
            | Self::ProgLoad { source, .. }
            | Self::TestRun { source }
            | Self::ObjInfo { source }
            | Self::LinkCreate { source, .. } => source.raw_os_error(),
            Self::ElementSize { .. } => None,
        }
    }
}

/// Issues `bpf(cmd, attr, sizeof attr)`, returning the non-negative result.
///
/// # Safety
/// `attr` must be the argument struct of `cmd`, and every address stored in
/// it must point to memory valid for the kernel to read (inputs) or write
/// (outputs) for the length stored next to it, for the duration of the call.
unsafe fn sys_bpf<A>(cmd: u32, attr: &mut A) -> io::Result<i64> {
    // SAFETY: `attr` is a live, exclusively borrowed struct of
    // `size_of::<A>()` bytes; the caller vouches for the pointers inside it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            libc::c_long::from(cmd),
            std::ptr::from_mut::<A>(attr),
            size_of::<A>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Wraps a file descriptor the kernel just returned.
fn owned_fd(ret: i64) -> OwnedFd {
    // SAFETY: the bpf(2) commands that create objects return a new file
    // descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(ret as i32) }
}

/// Copies `name` into a NUL-terminated 16-byte object name (`BPF_OBJ_NAME_LEN`),
/// keeping only the characters the kernel accepts.
fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let allowed = name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.');
    for (slot, byte) in out.iter_mut().take(15).zip(allowed) {
        *slot = byte;
    }
    out
}

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A BPF map: its file descriptor and the element sizes the kernel expects,
/// so that every call hands the kernel buffers of exactly those sizes.
#[derive(Debug)]
pub struct BpfMap {
    fd: OwnedFd,
    name: String,
    key_size: usize,
    value_size: usize,
}

impl BpfMap {
    /// `BPF_MAP_CREATE`.
    pub fn create(
        name: &str,
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    ) -> Result<Self, BpfError> {
        let mut attr = MapCreateAttr {
            map_type,
            key_size,
            value_size,
            max_entries,
            map_name: object_name(name),
            ..Default::default()
        };
        // SAFETY: MapCreateAttr holds no pointers.
        let ret = unsafe { sys_bpf(cmd::MAP_CREATE, &mut attr) }.map_err(|source| {
            BpfError::MapCreate {
                name: name.to_owned(),
                source,
            }
        })?;
        Ok(Self {
            fd: owned_fd(ret),
            name: name.to_owned(),
            key_size: key_size as usize,
            value_size: value_size as usize,
        })
    }

    /// The name given at creation (as shown by `bpftool map`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, what: &'static str, expected: usize, got: usize) -> Result<(), BpfError> {
        if expected == got {
            Ok(())
        } else {
            Err(BpfError::ElementSize {
                name: self.name.clone(),
                what,
                expected,
                got,
            })
        }
    }

    fn elem_attr(&self, key: &[u8], value: u64, flags: u64) -> MapElemAttr {
        MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value,
            flags,
        }
    }

    /// `BPF_MAP_UPDATE_ELEM`: sets `key` to `value` (`flags`: [`UPDATE_ANY`], ...).
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<(), BpfError> {
        self.check("key", self.key_size, key.len())?;
        self.check("value", self.value_size, value.len())?;
        let mut attr = self.elem_attr(key, value.as_ptr() as u64, flags);
        // SAFETY: key and value point to buffers of exactly the map's key and
        // value sizes (checked above), which the kernel only reads.
        unsafe { sys_bpf(cmd::MAP_UPDATE_ELEM, &mut attr) }
            .map(drop)
            .map_err(|source| BpfError::MapUpdate {
                name: self.name.clone(),
                source,
            })
    }

    /// `BPF_MAP_DELETE_ELEM`: returns whether the key was present.
    pub fn delete(&self, key: &[u8]) -> Result<bool, BpfError> {
        self.check("key", self.key_size, key.len())?;
        let mut attr = self.elem_attr(key, 0, 0);
        // SAFETY: key points to a buffer of exactly the map's key size,
        // which the kernel only reads.
        match unsafe { sys_bpf(cmd::MAP_DELETE_ELEM, &mut attr) } {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(BpfError::MapDelete {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// `BPF_MAP_LOOKUP_ELEM`: copies the value of `key` into `value` and
    /// returns true, or returns false if the key is absent.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        self.check("key", self.key_size, key.len())?;
        self.check("value", self.value_size, value.len())?;
        let mut attr = self.elem_attr(key, value.as_mut_ptr() as u64, 0);
        // SAFETY: key is readable and value writable for exactly the map's
        // key and value sizes (checked above).
        match unsafe { sys_bpf(cmd::MAP_LOOKUP_ELEM, &mut attr) } {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(BpfError::MapLookup {
                name: self.name.clone(),
                source,
            }),
        }
    }
}

impl AsFd for BpfMap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `BPF_F_XDP_HAS_FRAGS`: the XDP program copes with frames in several buffers
/// (it reads only the first), so the kernel lets it run on frames above a page.
pub const PROG_F_XDP_HAS_FRAGS: u32 = 1 << 5;

/// `BPF_PROG_LOAD` with `prog_flags` (0, or [`PROG_F_XDP_HAS_FRAGS`]). On
/// failure the load is repeated with the verifier log enabled, and the log is
/// returned in the error.
pub fn prog_load(
    name: &str,
    (prog_type, expected_attach_type): (u32, u32),
    prog_flags: u32,
    insns: &[Insn],
    license: &CStr,
) -> Result<OwnedFd, BpfError> {
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: object_name(name),
        prog_flags,
        expected_attach_type,
        ..Default::default()
    };
    // SAFETY: insns points to insn_cnt instructions and license to a
    // NUL-terminated string, both borrowed for the whole call; no log buffer.
    let first = unsafe { sys_bpf(cmd::PROG_LOAD, &mut attr) };
    let source = match first {
        Ok(fd) => return Ok(owned_fd(fd)),
        Err(e) => e,
    };
    // Load again, this time asking the verifier to explain itself.
    let mut log = vec![0u8; VERIFIER_LOG_SIZE];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    // SAFETY: as above, plus log_buf points to log_size writable bytes.
    let retry = unsafe { sys_bpf(cmd::PROG_LOAD, &mut attr) };
    if let Ok(fd) = retry {
        // Loaded the second time (a transient failure): keep it.
        return Ok(owned_fd(fd));
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    Err(BpfError::ProgLoad {
        name: name.to_owned(),
        log: String::from_utf8_lossy(&log[..end]).into_owned(),
        source,
    })
}

/// `struct xdp_md`: the context an XDP program reads; also the optional
/// context of a test run (`data`/`data_end` there are offsets into the input,
/// `data` being the length of metadata in front of the frame).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct XdpMd {
    pub data: u32,
    pub data_end: u32,
    pub data_meta: u32,
    pub ingress_ifindex: u32,
    pub rx_queue_index: u32,
    pub egress_ifindex: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
}

/// `BPF_PROG_TEST_RUN`: runs the program once on `data` (with an optional
/// `struct xdp_md` context) and returns its return value. Nothing is
/// redirected or transmitted: the kernel only reports the verdict.
pub fn prog_test_run(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: Option<&XdpMd>,
) -> Result<u32, BpfError> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_in: data.as_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = size_of::<XdpMd>() as u32;
        attr.ctx_in = std::ptr::from_ref::<XdpMd>(ctx) as u64;
    }
    // SAFETY: data_in and ctx_in point to data_size_in / ctx_size_in
    // readable bytes borrowed for the call; no output buffers are given.
    unsafe { sys_bpf(cmd::PROG_TEST_RUN, &mut attr) }
        .map_err(|source| BpfError::TestRun { source })?;
    Ok(attr.retval)
}

#[repr(C)]
#[derive(Default)]
struct ObjInfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`; the kernel fills only as much as we ask.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a program: its system-wide id (the id that
/// `bpftool prog` and `ip link` show).
pub fn prog_id(prog: BorrowedFd<'_>) -> Result<u32, BpfError> {
    let mut info = ProgInfoHead::default();
    let mut attr = ObjInfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: size_of::<ProgInfoHead>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: info points to info_len writable bytes that outlive the call.
    unsafe { sys_bpf(cmd::OBJ_GET_INFO_BY_FD, &mut attr) }
        .map_err(|source| BpfError::ObjInfo { source })?;
    Ok(info.id)
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// `BPF_LINK_CREATE` with attach type `BPF_XDP`: attaches `prog` to the
/// interface `ifindex` in the mode given by `flags` (`XDP_FLAGS_DRV_MODE` or
/// `XDP_FLAGS_SKB_MODE`). The program stays attached exactly as long as the
/// returned link descriptor is open, so it is detached when the process
/// exits, however it exits.
pub fn link_create_xdp(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    flags: u32,
) -> Result<OwnedFd, BpfError> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: ATTACH_TYPE_XDP,
        flags,
    };
    // SAFETY: LinkCreateAttr holds no pointers.
    let ret =
        unsafe { sys_bpf(cmd::LINK_CREATE, &mut attr) }.map_err(|source| BpfError::LinkCreate {
            ifindex,
            flags,
            source,
        })?;
    Ok(owned_fd(ret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_truncated_and_filtered() {
        assert_eq!(&object_name("vpmd_macs")[..10], b"vpmd_macs\0");
        let long = object_name("a-very-long-name-that-is-cut");
        assert_eq!(long[15], 0);
        assert_eq!(&long[..15], b"averylongnameth");
    }

    #[test]
    fn argument_structs_match_the_kernel_layout() {
        // Offsets of the last field we pass, from include/uapi/linux/bpf.h.
        assert_eq!(size_of::<MapElemAttr>(), 32);
        assert_eq!(size_of::<ProgLoadAttr>(), 72);
        assert_eq!(size_of::<TestRunAttr>(), 72);
        assert_eq!(size_of::<LinkCreateAttr>(), 16);
        assert_eq!(size_of::<XdpMd>(), 24);
    }
}
