// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What the control socket and the metrics listener share: a bounded set of
//! clients, each answered on a short-lived thread of its own, where a newcomer
//! beyond the limit cuts the *oldest* off (so a client that connects and sends
//! nothing can never lock the others out); and the accepting thread, stopped
//! and joined when its server is.

use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A connected stream that can be cut off from another thread.
pub trait Client: Send + Sized {
    /// A second handle on the same connection.
    fn handle(&self) -> Option<Self>;
    /// Ends the connection both ways: its thread's reads and writes fail at once.
    fn cut_off(&self);
    /// Bounds the next writes.
    fn set_write_timeout(&self, t: Duration) -> std::io::Result<()>;
    /// Bounds the next reads.
    fn set_read_timeout(&self, t: Duration) -> std::io::Result<()>;
}

/// Both kinds of stream the servers answer on have the same three methods.
macro_rules! impl_client {
    ($($ty:ty),*) => {$(
        impl Client for $ty {
            fn handle(&self) -> Option<Self> {
                self.try_clone().ok()
            }
            fn cut_off(&self) {
                let _ = self.shutdown(Shutdown::Both);
            }
            fn set_write_timeout(&self, t: Duration) -> std::io::Result<()> {
                <$ty>::set_write_timeout(self, Some(t))
            }
            fn set_read_timeout(&self, t: Duration) -> std::io::Result<()> {
                <$ty>::set_read_timeout(self, Some(t))
            }
        }
    )*};
}
impl_client!(UnixStream, TcpStream);

/// What [`read_head`] read.
pub enum Head {
    /// Up to where `end_at` said the head ends.
    Found(String),
    /// All the client sent before it closed its side.
    Closed(String),
    /// `max` bytes and no end.
    TooLong,
}

/// Reads a request head of at most `max` bytes from `stream`, each read bounded by
/// the time left until `end`; `end_at` finds where the head ends in the bytes so far.
pub fn read_head<S: Client>(
    stream: &S,
    end: Instant,
    max: usize,
    end_at: impl Fn(&[u8]) -> Option<usize>,
) -> std::io::Result<Head>
where
    for<'a> &'a S: std::io::Read,
{
    use std::io::Read as _;
    let mut reader: &S = stream;
    let mut buf = vec![0u8; max];
    let mut len = 0;
    while len < max {
        stream.set_read_timeout(left(end)?)?;
        let n = match reader.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        len += n;
        if let Some(at) = end_at(&buf[..len]) {
            return Ok(Head::Found(
                String::from_utf8_lossy(&buf[..at]).into_owned(),
            ));
        }
    }
    if len == max {
        return Ok(Head::TooLong);
    }
    Ok(Head::Closed(
        String::from_utf8_lossy(&buf[..len]).into_owned(),
    ))
}

/// The clients being answered, oldest first.
pub struct Clients<S> {
    next: AtomicU64,
    open: Mutex<VecDeque<(u64, S)>>,
}

impl<S> Default for Clients<S> {
    fn default() -> Self {
        Clients {
            next: AtomicU64::new(0),
            open: Mutex::new(VecDeque::new()),
        }
    }
}

/// One client's place in [`Clients`], given back when dropped (its thread ended,
/// or never started).
pub struct Slot<S: Client> {
    clients: Arc<Clients<S>>,
    id: u64,
}

impl<S: Client> Slot<S> {
    /// Takes a place for `stream`; with `limit` taken already, the oldest client is
    /// cut off first. `what` names the server in the debug line that says so.
    pub fn take(clients: &Arc<Clients<S>>, stream: &S, limit: usize, what: &str) -> Self {
        let id = clients.next.fetch_add(1, Ordering::Relaxed);
        let mut open = clients.open.lock().unwrap_or_else(PoisonError::into_inner);
        while open.len() >= limit {
            let Some((_, oldest)) = open.pop_front() else {
                break;
            };
            oldest.cut_off();
            log::debug!("{what}: {limit} clients at once; the oldest cut off");
        }
        if let Some(handle) = stream.handle() {
            open.push_back((id, handle));
        }
        Slot {
            clients: clients.clone(),
            id,
        }
    }
}

impl<S: Client> Drop for Slot<S> {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.retain(|(id, _)| *id != self.id);
    }
}

/// A server's accepting thread and the flag that stops it.
pub struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// The thread `thread`, which polls `stop`.
    pub fn new(stop: Arc<AtomicBool>, thread: JoinHandle<()>) -> Self {
        Acceptor {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops accepting and waits for the thread. Clients being answered finish
    /// (or reach their deadline) on their own threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often a non-blocking accept loop looks for a new client (and the stop flag).
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// What answers one client of an [`accept_loop`].
pub type Answer<S> = Arc<dyn Fn(&S) -> std::io::Result<()> + Send + Sync>;

/// Accepts clients with `accept` (a non-blocking accept giving the stream and a
/// peer description) until `stop` is set, and answers each with `answer` on a
/// thread named `thread_name`, at most `limit` at once (the oldest cut off). `what`
/// names the server in log lines.
pub fn accept_loop<S: Client + 'static>(
    what: &'static str,
    thread_name: &str,
    limit: usize,
    stop: &AtomicBool,
    mut accept: impl FnMut() -> std::io::Result<(S, String)>,
    answer: Answer<S>,
) {
    let clients = Arc::new(Clients::<S>::default());
    while !stop.load(Ordering::Acquire) {
        match accept() {
            Ok((stream, peer)) => {
                let slot = Slot::take(&clients, &stream, limit, what);
                let answer = answer.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name(thread_name.into())
                        .spawn(move || {
                            let _slot = slot;
                            if let Err(e) = answer(&stream) {
                                log::debug!("{what}: request{peer} failed: {e}");
                            }
                        });
                if let Err(e) = spawned {
                    log::warn!("{what}: cannot start a client thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL_INTERVAL);
            }
            Err(e) => {
                log::warn!("{what}: accept failed: {e}");
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// The time left until `end`, or a timeout error once it has passed.
pub fn left(end: Instant) -> std::io::Result<Duration> {
    match end.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client too slow: deadline passed",
        )),
    }
}

/// Writes all of `bytes` to a client, each write limited to the time left until `end`.
pub fn write_all_by<S: Client>(stream: &S, mut bytes: &[u8], end: Instant) -> std::io::Result<()>
where
    for<'a> &'a S: std::io::Write,
{
    use std::io::Write as _;
    while !bytes.is_empty() {
        stream.set_write_timeout(left(end)?)?;
        let mut w = stream;
        match w.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
