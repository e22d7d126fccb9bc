// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Least privilege: what vpmd may still do once it runs, and who may reach its sockets.
//!
//! Start-up may need capabilities: creating sockets in a directory only root may write
//! (`CAP_DAC_OVERRIDE`), handing them to another owner (`CAP_CHOWN`), and for a macvlan
//! loading and attaching the XDP program and opening AF_XDP and AF_PACKET sockets
//! (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_IPC_LOCK` or `RLIMIT_MEMLOCK` for the
//! UMEM). All of that is done by [`crate::switch::Switch::open`], and nothing vpmd does
//! afterwards needs any of them: accepting and serving vhost-user connections, mapping
//! guest memory passed over the socket, polling rings, AF_XDP/AF_PACKET sends and
//! receives on sockets already open, and the control socket are all unprivileged, and
//! closing the XDP link at exit detaches the program without a capability.
//!
//! So between `open` and [`crate::switch::Opened::spawn`], [`drop_capabilities`] clears
//! every capability not listed in `[pmd] keep_capabilities` (default: none) from the
//! effective, permitted, inheritable and ambient sets and, given `CAP_SETPCAP`, the
//! bounding set, and sets `PR_SET_NO_NEW_PRIVS`. Capabilities belong to threads, but
//! vpmd has one thread then, and every thread started after copies its sets: one call
//! on the main thread covers them all. It refuses to run with more than one thread.
//!
//! Also here: user and group names to ids for socket ownership (`getpwnam_r`/`getgrnam_r`,
//! so NSS sources other than /etc/passwd count).
// prctl(PR_SET_NO_NEW_PRIVS) and getpwnam_r/getgrnam_r have no safe wrapper in std or
// `caps`; each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// vpmd had started a thread already, which would keep its own capabilities.
    #[error("{0} threads running: capabilities must be dropped before any is started")]
    Threads(usize),
    /// The threads could not be counted.
    #[error("cannot list this process's threads")]
    Tasks(#[source] io::Error),
    /// A step of the drop failed.
    #[error("cannot drop capabilities ({step})")]
    Drop {
        /// The step that failed.
        step: &'static str,
        /// Cause.
        #[source]
        source: caps::errors::CapsError,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
}

/// The name of capability `cap` as `cap_xxx`.
pub fn name(cap: u32) -> String {
    caps::all()
        .into_iter()
        .find(|c| u32::from(c.index()) == cap)
        .map_or_else(
            || format!("cap_{cap}"),
            |c| c.to_string().to_ascii_lowercase(),
        )
}

/// The capability called `name` (`CAP_NET_ADMIN`, `cap_net_admin` or `net_admin`).
pub fn capability(name: &str) -> Option<u32> {
    Capability::from_str(&caps::to_canonical(name))
        .ok()
        .map(|c| u32::from(c.index()))
}

/// The capabilities in `mask` as `cap_a,cap_b`, or `none`.
pub fn names(mask: u64) -> String {
    if mask == 0 {
        return "none".into();
    }
    (0..64)
        .filter(|c| mask & (1u64 << c) != 0)
        .map(name)
        .collect::<Vec<_>>()
        .join(",")
}

/// One thread's capability sets and no_new_privs flag, as `/proc/.../status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThreadCaps {
    /// CapInh.
    pub inheritable: u64,
    /// CapPrm.
    pub permitted: u64,
    /// CapEff.
    pub effective: u64,
    /// CapBnd.
    pub bounding: u64,
    /// CapAmb.
    pub ambient: u64,
    /// NoNewPrivs.
    pub no_new_privs: bool,
}

impl ThreadCaps {
    /// Reads a `/proc/<pid>/status` or `/proc/<pid>/task/<tid>/status` file.
    pub fn read(path: &Path) -> io::Result<ThreadCaps> {
        let text = std::fs::read_to_string(path)?;
        Self::parse(&text)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Cap*/NoNewPrivs lines"))
    }

    /// Parses the text of a status file.
    pub fn parse(text: &str) -> Option<ThreadCaps> {
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim_start_matches(':').trim())
        };
        let hex = |key: &str| field(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        Some(ThreadCaps {
            inheritable: hex("CapInh")?,
            permitted: hex("CapPrm")?,
            effective: hex("CapEff")?,
            bounding: hex("CapBnd")?,
            ambient: hex("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }
}

/// What [`drop_capabilities`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropReport {
    /// Capabilities the process held (its permitted set) before.
    pub held: u64,
    /// Capabilities it still has (effective = permitted).
    pub kept: u64,
    /// Capabilities asked to keep that were not held.
    pub not_held: u64,
    /// Whether the bounding set was cut down to `kept` (needs `CAP_SETPCAP`).
    pub bounding_dropped: bool,
}

impl DropReport {
    /// One log line.
    pub fn summary(&self) -> String {
        let bounding = if self.bounding_dropped {
            "bounding set cut to the kept ones"
        } else {
            "bounding set left as it was (no CAP_SETPCAP)"
        };
        format!(
            "privileges: kept {}; dropped {} held capabilities before starting any thread; \
             {bounding}; no_new_privs set",
            names(self.kept),
            (self.held & !self.kept).count_ones(),
        )
    }
}

fn mask(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Drops every capability not in `keep` and sets `PR_SET_NO_NEW_PRIVS`, for the
/// calling thread, which must be the process's only one: threads started afterwards
/// inherit its sets.
pub fn drop_capabilities(keep: u64) -> Result<DropReport, PrivilegeError> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map_err(PrivilegeError::Tasks)?
        .count();
    if threads != 1 {
        return Err(PrivilegeError::Threads(threads));
    }
    let step = |step| move |source| PrivilegeError::Drop { step, source };
    let held = caps::read(None, CapSet::Permitted).map_err(step("reading the permitted set"))?;
    let kept: CapsHashSet = held
        .iter()
        .filter(|c| keep & c.bitmask() != 0)
        .copied()
        .collect();
    // Effective = permitted first, so that CAP_SETPCAP, if held, is usable for the
    // bounding set: what an exec could ever regain.
    caps::set(None, CapSet::Effective, &held).map_err(step("raising the effective set"))?;
    let bounding_dropped = held.contains(&Capability::CAP_SETPCAP);
    if bounding_dropped {
        for c in caps::all().difference(&kept) {
            if caps::has_cap(None, CapSet::Bounding, *c)
                .map_err(step("reading the bounding set"))?
            {
                caps::drop(None, CapSet::Bounding, *c).map_err(step("the bounding set"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(step("the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(step("the inheritable set"))?;
    // Effective before permitted: effective may never exceed permitted.
    caps::set(None, CapSet::Effective, &kept).map_err(step("the effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(step("the permitted set"))?;
    // No exec (and no setuid binary) can ever give privileges back.
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(PrivilegeError::NoNewPrivs(io::Error::last_os_error()));
    }
    Ok(DropReport {
        held: mask(&held),
        kept: mask(&kept),
        not_held: keep & !mask(&held),
        bounding_dropped,
    })
}

/// Whether a passwd/group lookup found an entry.
enum Lookup {
    Found(u32),
    Missing,
}

/// The uid of user `name`, through NSS; `None` if there is no such user.
pub fn user_id(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    lookup(|buf| {
        // SAFETY: a zeroed passwd is a valid out-parameter.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, `buf`
        // is writable for its length, `pw` and `res` are ours.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &raw mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &raw mut res,
            )
        };
        (rc, (!res.is_null()).then_some(pw.pw_uid))
    })
}

/// The gid of group `name`, through NSS; `None` if there is no such group.
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    lookup(|buf| {
        // SAFETY: a zeroed group is a valid out-parameter.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut res: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in `user_id`.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &raw mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &raw mut res,
            )
        };
        (rc, (!res.is_null()).then_some(gr.gr_gid))
    })
}

/// Runs a `get*nam_r` call with a buffer that grows while it reports ERANGE.
fn lookup(
    mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<u32>),
) -> io::Result<Option<u32>> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        let found = match call(&mut buf) {
            (0, Some(id)) => Lookup::Found(id),
            // Not found is rc 0 with no result, or one of these from some NSS modules.
            (0, None) | (libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM, _) => {
                Lookup::Missing
            }
            (libc::ERANGE, _) if size < (1 << 20) => {
                size *= 4;
                continue;
            }
            (rc, _) => return Err(io::Error::from_raw_os_error(rc)),
        };
        return Ok(match found {
            Lookup::Found(id) => Some(id),
            Lookup::Missing => None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(capability("CAP_NET_ADMIN"), Some(12));
        assert_eq!(capability("net_raw"), Some(13));
        assert_eq!(capability("Cap_Bpf"), Some(39));
        assert_eq!(capability("cap_flying"), None);
        assert_eq!(names(0), "none");
        assert_eq!(names((1 << 12) | (1 << 39)), "cap_net_admin,cap_bpf");
    }

    #[test]
    fn parses_status() {
        let text = "Name:\tvpmd\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                    CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n\
                    CapAmb:\t0000000000000000\nNoNewPrivs:\t0\nSeccomp:\t0\n";
        let c = ThreadCaps::parse(text).unwrap();
        assert_eq!(c.permitted, 0x1ff_ffff_ffff);
        assert_eq!((c.inheritable, c.ambient, c.no_new_privs), (0, 0, false));
        assert!(ThreadCaps::parse("Name:\tx\n").is_none());
    }

    #[test]
    fn looks_up_root() {
        assert_eq!(user_id("root").unwrap(), Some(0));
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(user_id("no-such-user-vpmd").unwrap(), None);
        assert_eq!(group_id("no-such-group-vpmd").unwrap(), None);
    }
}
