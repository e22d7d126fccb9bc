// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver against a reference backend: DPDK's net_vhost in testpmd, io forwarding
//! between two vhost-user ports. Frames sent on frontend A must come out of frontend B and
//! the reverse, exactly, in order.
//!
//! Needs `dpdk-testpmd`, 2 MiB hugepages (`echo 1024 > /proc/sys/vm/nr_hugepages`) and
//! hugetlbfs on /dev/hugepages. Run: `cargo test -p vpmd-bench --test dpdk_testpmd -- --ignored`;
//! `tests/system/bench_modes.sh` (run by `scripts/run-system-tests.sh`) runs them when DPDK
//! is installed. DPDK's net vhost does not answer GET_CONFIG, so the config space is not
//! read here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vpmd_bench::transfer::{spread_sizes, transfer, warm_up, TransferSpec};
use vpmd_bench::virtio_net::DRIVER_FEATURES;
use vpmd_bench::{FrontendOptions, NetFrontend};

/// One testpmd at a time: each busy-polls a core, and a two-core machine has two.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

/// testpmd, stopped with SIGTERM (then reaped) however the test ends; its work dir and
/// DPDK runtime dir are removed.
struct TestPmd {
    child: Child,
    dir: PathBuf,
    prefix: String,
}

impl TestPmd {
    fn start(dir: &Path) -> TestPmd {
        let sock = |n: &str| dir.join(n).display().to_string();
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "vpmdbench{}.{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let child = Command::new("dpdk-testpmd")
            .args([
                "-l",
                "0,1",
                "--main-lcore",
                "0",
                "--no-pci",
                "--huge-unlink",
            ])
            .arg(format!("--file-prefix={prefix}"))
            .arg("--vdev")
            .arg(format!("net_vhost0,iface={}", sock("a.sock")))
            .arg("--vdev")
            .arg(format!("net_vhost1,iface={}", sock("b.sock")))
            .args([
                "--",
                "--forward-mode=io",
                "--auto-start",
                "--total-num-mbufs=8192",
            ])
            // Non-interactive testpmd exits on EOF of stdin: keep it open.
            .stdin(Stdio::piped())
            .stdout(Stdio::from(
                std::fs::File::create(dir.join("testpmd.log")).unwrap(),
            ))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dpdk-testpmd (is DPDK installed?)");
        TestPmd {
            child,
            dir: dir.to_owned(),
            prefix,
        }
    }
}

impl Drop for TestPmd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }
}

fn options(dir: &Path, name: &str, features: u64) -> FrontendOptions {
    let mut o = FrontendOptions::new(dir.join(name));
    o.features = features;
    o.read_config = false;
    o.connect_timeout = Duration::from_secs(30);
    o
}

#[test]
#[ignore = "needs dpdk-testpmd and hugepages"]
fn frames_cross_dpdk_vhost_both_ways() {
    both_ways("all", DRIVER_FEATURES);
}

#[test]
#[ignore = "needs dpdk-testpmd and hugepages"]
fn frames_cross_dpdk_vhost_without_event_idx_or_mrg_rxbuf() {
    let off = (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_NET_F_MRG_RXBUF);
    both_ways("plain", DRIVER_FEATURES & !off);
}

fn both_ways(tag: &str, features: u64) {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("vpmd-bench-dpdk-{tag}.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _pmd = TestPmd::start(&dir);

    let mut a = NetFrontend::connect(&options(&dir, "a.sock", features)).expect("connect A");
    let mut b = NetFrontend::connect(&options(&dir, "b.sock", features)).expect("connect B");
    for f in [&a, &b] {
        let info = f.info();
        eprintln!(
            "features {:#x} of {:#x}, protocol {:?}, queues {:?}, hdr {}",
            info.negotiated.features,
            info.negotiated.offered,
            info.negotiated.protocol,
            info.negotiated.queue_num,
            info.layout.hdr_len
        );
        assert_eq!(info.negotiated.features & !info.negotiated.offered, 0);
        assert_eq!(info.negotiated.features, info.negotiated.offered & features);
    }

    let settle = Duration::from_millis(200);
    let up = Duration::from_secs(10);
    assert!(
        warm_up(&mut a, &mut b, MAC_A, MAC_B, up, settle),
        "A->B never forwarded"
    );
    assert!(
        warm_up(&mut b, &mut a, MAC_B, MAC_A, up, settle),
        "B->A never forwarded"
    );

    let mut spec = TransferSpec {
        count: 1000,
        sizes: spread_sizes(60, 1514, 97),
        dst: MAC_B,
        src: MAC_A,
        first_seq: 0,
        window: 128,
        idle_timeout: Duration::from_secs(5),
    };
    let r = transfer(&mut a, &mut b, &spec).expect("A -> B");
    assert_eq!((r.frames, r.bytes), (spec.count, spec.total_bytes()));
    eprintln!(
        "A->B: {} frames, {} bytes in {:?}",
        r.frames, r.bytes, r.elapsed
    );

    (spec.dst, spec.src, spec.first_seq) = (MAC_A, MAC_B, 1_000_000);
    let r = transfer(&mut b, &mut a, &spec).expect("B -> A");
    assert_eq!((r.frames, r.bytes), (spec.count, spec.total_bytes()));
    eprintln!(
        "B->A: {} frames, {} bytes in {:?}",
        r.frames, r.bytes, r.elapsed
    );

    for f in [&a, &b] {
        assert_eq!(f.stats().bad_used, 0);
        assert_eq!(f.stats().rx.malformed, 0);
    }
    a.disconnect().expect("disconnect A");
    b.disconnect().expect("disconnect B");
}

#[test]
#[ignore = "needs dpdk-testpmd and hugepages"]
fn frame_spans_small_rx_buffers_through_dpdk() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("vpmd-bench-dpdk-mrg.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _pmd = TestPmd::start(&dir);

    let mut a = NetFrontend::connect(&options(&dir, "a.sock", DRIVER_FEATURES)).expect("connect A");
    let mut ob = options(&dir, "b.sock", DRIVER_FEATURES);
    ob.rx_buf_size = 512;
    let mut b = NetFrontend::connect(&ob).expect("connect B");
    assert!(b.info().layout.mrg_rxbuf, "DPDK offers MRG_RXBUF");
    let settle = Duration::from_millis(200);
    assert!(warm_up(
        &mut a,
        &mut b,
        MAC_A,
        MAC_B,
        Duration::from_secs(10),
        settle
    ));

    let spec = TransferSpec {
        count: 50,
        sizes: vec![1500, 1514, 500, 501, 1000],
        dst: MAC_B,
        src: MAC_A,
        first_seq: 0,
        window: 16,
        idle_timeout: Duration::from_secs(5),
    };
    let before = b.stats().rx.merged;
    transfer(&mut a, &mut b, &spec).expect("A -> B over 512-byte buffers");
    assert!(b.stats().rx.merged - before >= 40, "{:?}", b.stats());
}
