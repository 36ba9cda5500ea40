//! The engine's I/O backend: the one small interface through which a shard waits for
//! socket readiness, plus the batched UDP calls and the socket constructors it uses.
//!
//! Owns: readiness notification ([`Backend`], with an epoll and an io_uring
//! implementation chosen once by [`open`]), `recvmmsg`/`sendmmsg` batching
//! ([`UdpBatch`], [`recv_batch`], [`send_batch`]), `SO_REUSEPORT` socket set-up and the
//! shard's clock read ([`monotonic_ms`]). Must not: know about calls, frames or
//! protocols, allocate per wait or per batch, block (every socket is non-blocking and
//! only [`Backend::wait`] sleeps), or be used from more than one thread per backend.
//!
//! # Readiness contract (both backends): edge-triggered
//!
//! * [`Backend::register`] arms an fd; if it is already ready, an event follows.
//! * After an event with `readable` (or `writable`) set, the caller must read (write)
//!   until the call returns `WouldBlock` (or close and deregister the fd), or until a
//!   read comes back short: a stream read returning less than the buffer, or a
//!   `recvmmsg` returning fewer datagrams than asked for (both stop only when the
//!   queue is empty, and every arrival after that raises a new event: Tokio relies on
//!   the same). Not after `hup`/`error`: then read until `WouldBlock` or EOF. Reading
//!   a bounded batch and leaving data queued without remembering it is a stall bug.
//! * Events are hints: an fd may be reported more than once in one [`Events`] list, or
//!   reported while nothing is left to read (the read then returns `WouldBlock`).
//! * `hup` means the peer closed (or shut down its write side); `error` means the
//!   socket has a pending error (`SO_ERROR`) or the backend could not watch it. Both
//!   are reported whatever the interest.
//! * Deregister an fd before closing it (io_uring keeps a reference to the file while
//!   a poll is armed, so a closed TCP socket would otherwise not send its FIN).
//!
//! Edge-triggered was chosen because it is the mode where both kernels do the least
//! work: `EPOLLET`, and io_uring multishot `POLL_ADD` (one SQE for the life of the
//! registration). On kernels without multishot poll the io_uring backend re-arms a
//! one-shot poll after every completion, which is level-triggered and therefore a
//! superset of the contract.
//!
//! # Why an enum ([`AnyBackend`]) behind a trait
//!
//! [`Backend`] is object-safe so that tests and future callers can be generic or use
//! `dyn`, but [`open`] returns the concrete enum: the shard calls `wait` once per loop
//! turn with static dispatch and no allocation, and a later step can reach
//! backend-specific features (io_uring sends) by matching on it.
//!
//! # Sends and receives
//!
//! Both backends use [`recv_batch`]/[`send_batch`] (`recvmmsg`/`sendmmsg`) after a
//! readiness event. Moving UDP sends or receives to io_uring SQEs is a possible later
//! step; it must be measured (`perf/`) against `sendmmsg` before it is adopted.

#![allow(unsafe_code)]

mod epoll;
mod udp;
mod uring;

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::Instant;

pub use epoll::EpollBackend;
pub use udp::{recv_batch, recvmmsg_dontwait, send_batch, SendOutcome, UdpBatch, DATAGRAM_MAX};
pub use uring::UringBackend;

/// Which readiness backend is running; shown in the log line at start-up and `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// `epoll` (edge-triggered).
    Epoll,
    /// `io_uring` (`POLL_ADD`, multishot where the kernel has it).
    IoUring,
}

impl BackendKind {
    /// Stable lowercase name (`"epoll"` or `"io_uring"`) for logs, metrics and `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Epoll => "epoll",
            BackendKind::IoUring => "io_uring",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the configuration asks for; resolved once per shard by [`open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendChoice {
    /// io_uring if the kernel (and seccomp, and `kernel.io_uring_disabled`) allow it,
    /// otherwise epoll with a fallback note.
    #[default]
    Auto,
    /// io_uring or an error: never a silent fallback.
    IoUring,
    /// epoll.
    Epoll,
}

/// Which readiness directions a registration asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interest {
    /// Report when there is something to read (or a connection to accept).
    pub readable: bool,
    /// Report when there is room to write (or a non-blocking connect finished).
    pub writable: bool,
}

impl Interest {
    /// Readable only: the usual interest for UDP sockets, listeners and TCP reads.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Writable only.
    pub const WRITABLE: Interest = Interest {
        readable: false,
        writable: true,
    };
    /// Both directions (a TCP connection with queued output).
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };
}

/// One readiness report from [`Backend::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Event {
    /// The token given at [`Backend::register`].
    pub token: u64,
    /// Something to read (or accept).
    pub readable: bool,
    /// Room to write.
    pub writable: bool,
    /// The peer closed or shut down its write side (`EPOLLHUP`/`EPOLLRDHUP`).
    pub hup: bool,
    /// A pending socket error, or the backend could not watch this fd (then the
    /// registration is dead: deregister and close it).
    pub error: bool,
}

/// A preallocated list of [`Event`]s filled by [`Backend::wait`]; never grows.
#[derive(Debug, Clone)]
pub struct Events {
    list: Vec<Event>,
    cap: usize,
}

impl Events {
    /// Room for up to `cap` events per wait (at least 1). Allocates once, here.
    pub fn with_capacity(cap: usize) -> Events {
        let cap = cap.max(1);
        Events {
            list: Vec::with_capacity(cap),
            cap,
        }
    }

    /// An empty list that allocates nothing, to stand in while the real one is lent
    /// out (`std::mem::replace`); never waited on.
    pub fn placeholder() -> Events {
        Events {
            list: Vec::new(),
            cap: 0,
        }
    }

    /// How many events one wait can return; more stay queued in the kernel for the next.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Number of events from the last wait.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when the last wait returned no event (timeout, EINTR or a spurious wake).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The events from the last wait.
    pub fn iter(&self) -> std::slice::Iter<'_, Event> {
        self.list.iter()
    }

    /// The events from the last wait as a slice.
    pub fn as_slice(&self) -> &[Event] {
        &self.list
    }

    /// Empties the list (done by every wait before it fills it).
    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// True when no more events fit.
    pub(crate) fn is_full(&self) -> bool {
        self.list.len() >= self.cap
    }

    /// Appends an event; the caller checks [`Events::is_full`] first. Consecutive
    /// reports for the same token are merged (cheap de-duplication).
    pub(crate) fn push(&mut self, ev: Event) {
        if let Some(last) = self.list.last_mut() {
            if last.token == ev.token {
                last.readable |= ev.readable;
                last.writable |= ev.writable;
                last.hup |= ev.hup;
                last.error |= ev.error;
                return;
            }
        }
        if self.list.len() < self.cap {
            self.list.push(ev);
        }
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
    }
}

/// The readiness interface a shard uses. One instance per shard thread; see the module
/// docs for the edge-triggered contract.
pub trait Backend {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;

    /// Starts watching `fd`, reporting its events with `token`. Called once per socket
    /// when the shard takes it. Errors: the fd is already registered (`AlreadyExists`),
    /// or the kernel refused (bad fd).
    fn register(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()>;

    /// Changes the token or interest of a registered fd (e.g. add `writable` while a
    /// TCP connection has queued output). An event follows if the fd is ready.
    fn reregister(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()>;

    /// Stops watching `fd`; no event for it is reported after this returns. Call before
    /// closing the fd. Errors with `NotFound` if it was not registered.
    fn deregister(&mut self, fd: RawFd) -> io::Result<()>;

    /// Sleeps until at least one registered fd is ready or `timeout_ms` passed
    /// (`None`: no limit, `Some(0)`: do not sleep), then fills `events` (cleared first).
    /// Returns `Ok` with zero events on timeout, on a signal (EINTR) and on spurious
    /// wake-ups; callers simply run their loop turn again.
    fn wait(&mut self, timeout_ms: Option<u32>, events: &mut Events) -> io::Result<()>;
}

/// The backend [`open`] chose: static dispatch over the two implementations (the
/// io_uring one is boxed once at open because its ring struct is large).
#[derive(Debug)]
pub enum AnyBackend {
    /// epoll.
    Epoll(EpollBackend),
    /// io_uring.
    IoUring(Box<UringBackend>),
}

impl Backend for AnyBackend {
    fn kind(&self) -> BackendKind {
        match self {
            AnyBackend::Epoll(b) => b.kind(),
            AnyBackend::IoUring(b) => b.kind(),
        }
    }
    fn register(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match self {
            AnyBackend::Epoll(b) => b.register(fd, token, interest),
            AnyBackend::IoUring(b) => b.register(fd, token, interest),
        }
    }
    fn reregister(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match self {
            AnyBackend::Epoll(b) => b.reregister(fd, token, interest),
            AnyBackend::IoUring(b) => b.reregister(fd, token, interest),
        }
    }
    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        match self {
            AnyBackend::Epoll(b) => b.deregister(fd),
            AnyBackend::IoUring(b) => b.deregister(fd),
        }
    }
    fn wait(&mut self, timeout_ms: Option<u32>, events: &mut Events) -> io::Result<()> {
        match self {
            AnyBackend::Epoll(b) => b.wait(timeout_ms, events),
            AnyBackend::IoUring(b) => b.wait(timeout_ms, events),
        }
    }
}

/// Opens the readiness backend for one shard. Called once per shard at start-up.
///
/// Returns the backend and, when `Auto` had to fall back to epoll, a one-line reason
/// for the caller to log (e.g. `io_uring refused (Operation not permitted (os error
/// 1)); using epoll`). `IoUring` that cannot be opened is an error naming the cause;
/// `Epoll` fails only if `epoll_create1` does.
pub fn open(choice: BackendChoice) -> io::Result<(AnyBackend, Option<String>)> {
    open_with(choice, UringBackend::new)
}

/// [`open`] with the io_uring constructor passed in, so tests can simulate a refusal.
fn open_with(
    choice: BackendChoice,
    uring: impl FnOnce() -> io::Result<UringBackend>,
) -> io::Result<(AnyBackend, Option<String>)> {
    match choice {
        BackendChoice::Epoll => Ok((AnyBackend::Epoll(EpollBackend::new()?), None)),
        BackendChoice::IoUring => match uring() {
            Ok(b) => Ok((AnyBackend::IoUring(Box::new(b)), None)),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("io_uring backend requested but unavailable: {e}"),
            )),
        },
        BackendChoice::Auto => match uring() {
            Ok(b) => Ok((AnyBackend::IoUring(Box::new(b)), None)),
            Err(e) => {
                let note = format!("io_uring refused ({e}); using epoll");
                Ok((AnyBackend::Epoll(EpollBackend::new()?), Some(note)))
            }
        },
    }
}

/// Milliseconds on the monotonic clock (`CLOCK_MONOTONIC` via [`Instant`]) since the
/// first call in this process. The shard reads it once per loop turn and hands it to
/// the timer wheel and the calls; never goes backwards.
pub fn monotonic_ms() -> u64 {
    u64::try_from(clock_start().elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn clock_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`, which
/// also overrides an allocator's `MADV_HUGEPAGE`). The first touch of a fresh 2 MiB
/// huge page clears all of it at once: measured on a shard thread, ~3 ms in one
/// page fault (a bridge ring slot written for the first time), which showed up as
/// a 20-40 ms hole in every call of that shard at once. With 4 KiB pages the same
/// memory faults in ~1 us steps spread over time. Called once by the engine and the
/// load generator before they allocate; returns the kernel's error if refused.
pub fn disable_huge_pages() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only; the
    // result is checked.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sleeps until the next multiple of `tick_ms` (at least 1) on the
/// [`monotonic_ms`] clock; returns the nanoseconds it slept. A paced shard calls
/// this between loop turns, so all its calls due in one tick are served in one
/// pass and every packet that arrived meanwhile is read in one batch.
pub fn sleep_to_next_tick(tick_ms: u64) -> u64 {
    let tick = tick_ms.max(1);
    let start = clock_start();
    let now = Instant::now();
    let ms = u64::try_from(now.duration_since(start).as_millis()).unwrap_or(u64::MAX);
    let target = start + std::time::Duration::from_millis((ms / tick + 1) * tick);
    std::thread::sleep(target.saturating_duration_since(now));
    u64::try_from(now.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Socket buffer size asked for on media sockets (best effort: the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A non-blocking UDP socket bound to `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`
/// (one per shard on the same port; the kernel spreads peers by 4-tuple hash) and
/// `SOCKET_BUFFER_BYTES` send/receive buffers where allowed. Called at shard start-up.
pub fn udp_socket_reuseport(addr: SocketAddr) -> io::Result<UdpSocket> {
    let fd = reuseport_socket(addr, libc::SOCK_DGRAM)?;
    set_buffer_sizes(&fd);
    bind(&fd, addr)?;
    Ok(UdpSocket::from(fd))
}

/// A non-blocking TCP listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`,
/// listening with `backlog`. Accepted sockets are not made non-blocking by the kernel:
/// call `set_nonblocking(true)` on each (or accept with `accept4(SOCK_NONBLOCK)`).
pub fn tcp_listener_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let fd = reuseport_socket(addr, libc::SOCK_STREAM)?;
    bind(&fd, addr)?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    // SAFETY: `fd` is an open socket owned by `fd` for the whole call.
    let rc = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), backlog) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

fn reuseport_socket(addr: SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall with constant arguments; the result is checked below.
    let raw = unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    Ok(fd)
}

fn set_buffer_sizes(fd: &OwnedFd) {
    let size = i32::try_from(SOCKET_BUFFER_BYTES).unwrap_or(i32::MAX);
    // Best effort: a smaller buffer than asked for is not a reason to refuse to start.
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size);
    let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size);
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is open; the option value points at a live `c_int` of the given size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> io::Result<()> {
    // SAFETY: an all-zero `sockaddr_storage` is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = udp::write_sockaddr(addr, &mut storage);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes; `fd` is open.
    let rc = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_merge_consecutive_duplicates_and_respect_capacity() {
        let mut ev = Events::with_capacity(2);
        ev.push(Event {
            token: 1,
            readable: true,
            ..Event::default()
        });
        ev.push(Event {
            token: 1,
            hup: true,
            ..Event::default()
        });
        assert_eq!(ev.len(), 1);
        assert!(ev.as_slice()[0].readable && ev.as_slice()[0].hup);
        ev.push(Event {
            token: 2,
            ..Event::default()
        });
        assert!(ev.is_full());
        ev.push(Event {
            token: 3,
            ..Event::default()
        });
        assert_eq!(ev.len(), 2);
        ev.clear();
        assert!(ev.is_empty());
        assert_eq!(ev.capacity(), 2);
    }

    #[test]
    fn monotonic_ms_does_not_go_backwards() {
        let a = monotonic_ms();
        let b = monotonic_ms();
        assert!(b >= a);
    }

    #[test]
    fn refused_io_uring_falls_back_only_for_auto() {
        let refuse = || Err(io::Error::from_raw_os_error(libc::EPERM));
        let (b, note) = open_with(BackendChoice::Auto, refuse).unwrap();
        assert_eq!(b.kind(), BackendKind::Epoll);
        let note = note.unwrap();
        assert!(note.starts_with("io_uring refused (") && note.ends_with("; using epoll"));
        assert!(!note.contains('\n'));
        let err = open_with(BackendChoice::IoUring, refuse).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err
            .to_string()
            .contains("io_uring backend requested but unavailable"));
        let (b, note) = open_with(BackendChoice::Epoll, refuse).unwrap();
        assert_eq!((b.kind(), note), (BackendKind::Epoll, None));
    }

    #[test]
    fn kind_names() {
        assert_eq!(BackendKind::Epoll.as_str(), "epoll");
        assert_eq!(BackendKind::IoUring.to_string(), "io_uring");
    }
}
