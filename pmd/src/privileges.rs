//! Least privilege: what vpmd may still do once it runs, and who may reach its sockets.
//!
//! Start-up may need capabilities: creating sockets in a directory only root may write
//! (`CAP_DAC_OVERRIDE`), handing them to another owner (`CAP_CHOWN`), and for a macvlan
//! loading and attaching the XDP program and opening AF_XDP and AF_PACKET sockets
//! (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_IPC_LOCK` or `RLIMIT_MEMLOCK` for the
//! UMEM). Once [`crate::switch::Switch::start`] returns, nothing vpmd does needs any of
//! them: accepting and serving vhost-user connections, mapping guest memory passed over the
//! socket, polling rings, AF_XDP/AF_PACKET sends and receives on sockets already open, and
//! the control socket are all unprivileged, and closing the XDP link at exit detaches the
//! program without a capability. So [`drop_capabilities`] clears every capability not
//! listed in `[pmd] keep_capabilities` (default: none) from the effective, permitted,
//! inheritable and ambient sets and, given `CAP_SETPCAP`, the bounding set, and sets
//! `PR_SET_NO_NEW_PRIVS`.
//!
//! Capabilities belong to threads, not processes: the polling, connection and control
//! threads `Switch::start` spawned hold their own copies, and `capset(2)` changes only the
//! calling thread's. So every thread drops its own, as glibc's `setuid` does: the main
//! thread directly, every other thread from a signal handler (async-signal-safe raw system
//! calls only). Then `/proc/self/task/*/status` is checked until every thread (including
//! any a connection started meanwhile from a thread that had not dropped yet) shows the
//! dropped sets.
//!
//! Also here: user and group names to ids for socket ownership (`getpwnam_r`/`getgrnam_r`,
//! so NSS sources other than /etc/passwd count).
// System calls (capget/capset, prctl, tgkill, sigaction, getpwnam_r) with no safe wrapper
// in std; each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Capability names, index = capability number (linux/capability.h).
pub const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// `CAP_SETPCAP`: needed to drop from the bounding set.
const CAP_SETPCAP: u32 = 8;
/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// How long every thread gets to drop its capabilities.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often stragglers are signalled again.
const RESIGNAL_INTERVAL: Duration = Duration::from_millis(10);

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A /proc file could not be read or parsed.
    #[error("cannot read {path}: {source}")]
    Proc {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The signal handler that makes other threads drop could not be installed.
    #[error("cannot install the capability-drop signal handler: {0}")]
    Handler(#[source] io::Error),
    /// The main thread could not drop its capabilities.
    #[error("cannot drop capabilities ({step}): {source}")]
    Drop {
        /// The step that failed.
        step: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A thread still held capabilities after the timeout.
    #[error(
        "thread {tid} still holds capabilities after {DROP_TIMEOUT:?}: {caps} \
         (first error in a thread: {first_error})"
    )]
    Straggler {
        /// Its thread id.
        tid: u32,
        /// What it holds.
        caps: String,
        /// errno of the first failed step in any thread's signal handler (0: none).
        first_error: i32,
    },
}

/// The name of capability `cap` as `cap_xxx`.
pub fn name(cap: u32) -> String {
    CAP_NAMES
        .get(cap as usize)
        .map_or_else(|| format!("cap_{cap}"), |n| format!("cap_{n}"))
}

/// The capability called `name` (`CAP_NET_ADMIN`, `cap_net_admin` or `net_admin`).
pub fn capability(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_prefix("cap_").unwrap_or(&lower);
    CAP_NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
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

    fn describe(&self) -> String {
        format!(
            "CapEff {:#x} CapPrm {:#x} CapInh {:#x} CapAmb {:#x} CapBnd {:#x} NoNewPrivs {}",
            self.effective,
            self.permitted,
            self.inheritable,
            self.ambient,
            self.bounding,
            u8::from(self.no_new_privs)
        )
    }
}

/// What [`drop_capabilities`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropReport {
    /// Capabilities the process held (main thread's permitted set) before.
    pub held: u64,
    /// Capabilities every thread still has (effective = permitted).
    pub kept: u64,
    /// Capabilities asked to keep that were not held.
    pub not_held: u64,
    /// Whether the bounding set was cut down to `kept` (needs `CAP_SETPCAP`).
    pub bounding_dropped: bool,
    /// Threads checked.
    pub threads: usize,
}

impl DropReport {
    /// One log line.
    pub fn summary(&self) -> String {
        let dropped = self.held & !self.kept;
        let mut s = format!(
            "privileges: kept {}; dropped {} held capabilities in all {} threads; ",
            names(self.kept),
            dropped.count_ones(),
            self.threads
        );
        if self.bounding_dropped {
            s += "bounding set cut to the kept ones; ";
        } else {
            s += "bounding set left as it was (no CAP_SETPCAP); ";
        }
        s += "no_new_privs set";
        s
    }
}

// What the signal handler applies; written before any thread is signalled.
static KEEP: AtomicU64 = AtomicU64::new(0);
static BOUNDING_DROP: AtomicU64 = AtomicU64::new(0);
static LAST_CAP: AtomicU32 = AtomicU32::new(40);
/// errno of the first step that failed in a signal handler (0: none).
static FIRST_ERROR: AtomicI32 = AtomicI32::new(0);

/// Drops every capability not in `keep` from every thread of this process and sets
/// `PR_SET_NO_NEW_PRIVS`, then checks each thread's `/proc` status.
pub fn drop_capabilities(keep: u64) -> Result<DropReport, PrivilegeError> {
    let last_cap = last_cap();
    let all = if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    };
    let self_status = Path::new("/proc/thread-self/status");
    let me = ThreadCaps::read(self_status).map_err(|source| PrivilegeError::Proc {
        path: self_status.display().to_string(),
        source,
    })?;
    let kept = keep & me.permitted;
    let can_bound = me.permitted & (1u64 << CAP_SETPCAP) != 0;
    let bounding_drop = if can_bound { all & !kept } else { 0 };
    KEEP.store(kept, Ordering::SeqCst);
    BOUNDING_DROP.store(bounding_drop, Ordering::SeqCst);
    LAST_CAP.store(last_cap, Ordering::SeqCst);
    FIRST_ERROR.store(0, Ordering::SeqCst);
    let signal = drop_signal();
    install_handler(signal).map_err(PrivilegeError::Handler)?;

    drop_this_thread().map_err(|(step, errno)| PrivilegeError::Drop {
        step,
        source: io::Error::from_raw_os_error(errno),
    })?;

    let done = |c: &ThreadCaps| {
        c.effective == kept
            && c.permitted == kept
            && c.inheritable == 0
            && c.ambient == 0
            && c.no_new_privs
            && c.bounding & bounding_drop == 0
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let deadline = Instant::now() + DROP_TIMEOUT;
    loop {
        let tasks = Path::new("/proc/self/task");
        let entries = std::fs::read_dir(tasks).map_err(|source| PrivilegeError::Proc {
            path: tasks.display().to_string(),
            source,
        })?;
        let mut pending = Vec::new();
        let mut threads = 0;
        for e in entries.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // A thread that ended since the listing has nothing left to drop.
            let Ok(caps) = ThreadCaps::read(&e.path().join("status")) else {
                continue;
            };
            threads += 1;
            if !done(&caps) {
                pending.push((tid, caps));
            }
        }
        if pending.is_empty() {
            return Ok(DropReport {
                held: me.permitted,
                kept,
                not_held: keep & !me.permitted,
                bounding_dropped: can_bound,
                threads,
            });
        }
        if Instant::now() > deadline {
            let (tid, caps) = pending[0];
            return Err(PrivilegeError::Straggler {
                tid,
                caps: caps.describe(),
                first_error: FIRST_ERROR.load(Ordering::SeqCst),
            });
        }
        for (tid, _) in &pending {
            // SAFETY: tgkill to a thread of our own process; the handler for `signal` is
            // installed. A thread that has just exited makes it fail with ESRCH, ignored.
            unsafe { libc::tgkill(pid, *tid as libc::pid_t, signal) };
        }
        std::thread::sleep(RESIGNAL_INTERVAL);
    }
}

/// The real-time signal that makes a thread drop its capabilities. No other part of
/// vpmd or its libraries uses real-time signals.
fn drop_signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAP_NAMES.len() as u32 - 1)
        .min(63)
}

fn install_handler(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid value (no flags, empty mask, null handler)
    // that is filled in below before use.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_drop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SA_RESTART: system calls the signal interrupts (accept, read, ...) carry on.
    sa.sa_flags = libc::SA_RESTART;
    // SAFETY: `sa.sa_mask` is a valid sigset_t owned by us.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised; the handler only makes async-signal-safe raw
    // system calls and touches atomics.
    if unsafe { libc::sigaction(signal, &sa, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn on_drop_signal(_: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above; a signal handler must leave errno as it found it.
    let saved = unsafe { *errno };
    if let Err((_, e)) = drop_this_thread() {
        let _ = FIRST_ERROR.compare_exchange(0, e, Ordering::SeqCst, Ordering::SeqCst);
    }
    // SAFETY: as above.
    unsafe { *errno = saved };
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn last_errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Drops the calling thread's capabilities to [`KEEP`]. Async-signal-safe: raw system
/// calls and atomics only, no allocation. On failure: the step and its errno.
fn drop_this_thread() -> Result<(), (&'static str, i32)> {
    let keep = KEEP.load(Ordering::SeqCst);
    let bounding_drop = BOUNDING_DROP.load(Ordering::SeqCst);
    let last_cap = LAST_CAP.load(Ordering::SeqCst);
    let mut hdr = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget for the calling thread (pid 0) with a version-3 header and room for
    // its two 32-bit halves.
    if unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(("capget", last_errno()));
    }
    // 1. Effective = permitted, so that CAP_SETPCAP (if held) is usable for step 2.
    for d in &mut data {
        d.effective = d.permitted;
        d.inheritable = 0;
    }
    // SAFETY: capset for the calling thread with sets it holds (effective = permitted).
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return Err(("capset effective", last_errno()));
    }
    // 2. The bounding set: what an exec could ever regain.
    for cap in 0..=last_cap {
        if bounding_drop & (1u64 << cap) == 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_READ) takes a capability number and no pointers.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) };
        if present == 1 {
            // SAFETY: prctl(PR_CAPBSET_DROP) takes a capability number and no pointers.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) };
            if r != 0 {
                return Err(("PR_CAPBSET_DROP", last_errno()));
            }
        }
    }
    // 3. Ambient capabilities (kept across exec); EINVAL on kernels without them.
    // SAFETY: prctl(PR_CAP_AMBIENT, CLEAR_ALL) takes no pointers.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 && last_errno() != libc::EINVAL {
        return Err(("PR_CAP_AMBIENT_CLEAR_ALL", last_errno()));
    }
    // 4. Effective = permitted = kept, inheritable empty.
    let halves = [keep as u32, (keep >> 32) as u32];
    for (d, h) in data.iter_mut().zip(halves) {
        d.effective = h & d.permitted;
        d.permitted &= h;
        d.inheritable = 0;
    }
    // SAFETY: as above; the new sets are subsets of the held ones.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return Err(("capset", last_errno()));
    }
    // 5. No exec (and no setuid binary) can ever give privileges back.
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
        return Err(("PR_SET_NO_NEW_PRIVS", last_errno()));
    }
    Ok(())
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
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut res,
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
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut res,
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
