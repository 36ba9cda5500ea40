//! Batched UDP I/O: [`UdpBatch`] (preallocated `mmsghdr`/`iovec`/`sockaddr_storage`
//! arrays and datagram slots), [`recv_batch`] (`recvmmsg`) and [`send_batch`]
//! (`sendmmsg`). Used by both readiness backends after an event.
//!
//! Owns: the only `recvmmsg`/`sendmmsg` calls of the engine and the address
//! conversions they need. Must not: allocate after [`UdpBatch::new`], block (every call
//! passes `MSG_DONTWAIT`), or interpret payloads.

#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

/// Largest datagram a [`UdpBatch::new`] slot holds (Ethernet MTU). Bigger datagrams
/// are received truncated and flagged by [`UdpBatch::is_truncated`].
pub const DATAGRAM_MAX: usize = 1500;

/// Preallocated storage for up to `capacity` datagrams with their peer addresses: the
/// receive buffer of [`recv_batch`] and the send queue of [`send_batch`]. Built once
/// per shard; no allocation per batch. One batch is either being received into or
/// being filled for sending, not both at once.
pub struct UdpBatch {
    slot_len: usize,
    cap: usize,
    len: usize,
    bufs: Box<[u8]>,
    lens: Box<[usize]>,
    truncated: Box<[bool]>,
    addrs: Box<[SocketAddr]>,
    // The kernel-facing arrays. `hdrs[i]` points at `iovs[i]` and `names[i]`, and
    // `iovs[i]` at slot `i` of `bufs`. Boxed slices never move when the batch moves, so
    // the pointers stay valid for the batch's life; they are refreshed before each call
    // anyway (cheap) so no code path can observe a stale one.
    iovs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` point only into heap memory owned by
// the same `UdpBatch` (`bufs`, `iovs`, `names`); moving the batch to another thread
// moves that ownership with it, and `&UdpBatch` exposes no way to write through them.
unsafe impl Send for UdpBatch {}

impl std::fmt::Debug for UdpBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpBatch")
            .field("capacity", &self.cap)
            .field("slot_len", &self.slot_len)
            .field("len", &self.len)
            .finish()
    }
}

const UNSPECIFIED: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

impl UdpBatch {
    /// Room for `n` datagrams (at least 1) of up to [`DATAGRAM_MAX`] bytes each.
    pub fn new(n: usize) -> UdpBatch {
        UdpBatch::with_slot_len(n, DATAGRAM_MAX)
    }

    /// Room for `n` datagrams (at least 1) of up to `slot_len` bytes (at least 1) each.
    pub fn with_slot_len(n: usize, slot_len: usize) -> UdpBatch {
        let cap = n.clamp(1, 1024); // sendmmsg/recvmmsg cap vlen at UIO_MAXIOV (1024)
        let slot_len = slot_len.max(1);
        // SAFETY: all-zero is a valid value of these plain C structs (null pointers,
        // zero lengths); the pointers are set by `refresh_pointers` before any use.
        let zero_iov: libc::iovec = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut batch = UdpBatch {
            slot_len,
            cap,
            len: 0,
            bufs: vec![0u8; cap * slot_len].into_boxed_slice(),
            lens: vec![0usize; cap].into_boxed_slice(),
            truncated: vec![false; cap].into_boxed_slice(),
            addrs: vec![UNSPECIFIED; cap].into_boxed_slice(),
            iovs: vec![zero_iov; cap].into_boxed_slice(),
            names: vec![zero_name; cap].into_boxed_slice(),
            hdrs: vec![zero_hdr; cap].into_boxed_slice(),
        };
        batch.refresh_pointers();
        batch
    }

    fn refresh_pointers(&mut self) {
        let base = self.bufs.as_mut_ptr();
        for i in 0..self.cap {
            // `wrapping_add` keeps this safe code; `i * slot_len` is within `bufs`.
            self.iovs[i].iov_base = base.wrapping_add(i * self.slot_len).cast();
            self.iovs[i].iov_len = self.slot_len;
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Maximum number of datagrams.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Bytes per datagram slot.
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// After [`recv_batch`]: datagrams received. While sending: datagrams queued and
    /// not yet sent.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no datagram is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when [`UdpBatch::push`] would refuse: flush with [`send_batch`] first.
    pub fn is_full(&self) -> bool {
        self.len == self.cap
    }

    /// Datagram `i` (`i < len()`): its bytes and its peer (source after a receive,
    /// destination while queued for sending). Panics if `i >= len()`.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        assert!(i < self.len, "UdpBatch::get({i}) with len {}", self.len);
        let start = i * self.slot_len;
        (&self.bufs[start..start + self.lens[i]], self.addrs[i])
    }

    /// True if received datagram `i` was longer than a slot and was cut (drop it).
    pub fn is_truncated(&self, i: usize) -> bool {
        i < self.len && self.truncated[i]
    }

    /// Forgets every held datagram (received or queued); keeps the storage.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Queues a copy of `payload` for `dest`. Returns false (and queues nothing) when
    /// the batch is full or `payload` is longer than a slot.
    pub fn push(&mut self, payload: &[u8], dest: SocketAddr) -> bool {
        if self.is_full() || payload.len() > self.slot_len {
            return false;
        }
        let i = self.len;
        let start = i * self.slot_len;
        self.bufs[start..start + payload.len()].copy_from_slice(payload);
        self.lens[i] = payload.len();
        self.truncated[i] = false;
        self.addrs[i] = dest;
        self.len += 1;
        true
    }

    /// Drops the first `n` queued datagrams, moving the rest to the front (rare path:
    /// only after a partial send).
    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        let rest = self.len - n;
        for j in 0..rest {
            let from = (n + j) * self.slot_len;
            let len = self.lens[n + j];
            self.bufs.copy_within(from..from + len, j * self.slot_len);
            self.lens[j] = len;
            self.addrs[j] = self.addrs[n + j];
        }
        self.len = rest;
    }
}

/// Writes `addr` into `storage`, returning the length to pass to the kernel.
pub(crate) fn write_sockaddr(
    addr: SocketAddr,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: `sockaddr_storage` is larger than and suitably aligned for
            // `sockaddr_in`; we write a fully initialised value into it.
            unsafe {
                let sin = (storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.write(libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                });
            }
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: `sockaddr_storage` is larger than and suitably aligned for
            // `sockaddr_in6`; we write a fully initialised value into it.
            unsafe {
                let sin6 = (storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                sin6.write(libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                });
            }
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads the address the kernel wrote into `storage`; `None` for other families.
fn read_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a `sockaddr_in`; the storage is
            // larger than and aligned for it.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a `sockaddr_in6`; the storage is
            // larger than and aligned for it.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One `recvmmsg(MSG_DONTWAIT)` into `hdrs`: the number of messages received,
/// `Ok(0)` when nothing is queued (EAGAIN). EINTR is retried; other errors are
/// returned. Shared by [`recv_batch`] and the load generator's stamped receive.
///
/// # Safety
/// Every header in `hdrs` must describe buffers (iovecs, names, control data) that
/// are valid, writable and sized as declared, and not used elsewhere during the call.
pub unsafe fn recvmmsg_dontwait(fd: RawFd, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    loop {
        // SAFETY: per this function's contract the headers and what they point at
        // are valid for the kernel to write; a null timeout is allowed.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(err),
        }
    }
}

/// Receives up to `batch.capacity()` datagrams with one `recvmmsg(MSG_DONTWAIT)`,
/// replacing whatever the batch held. Called after a readable event, repeatedly until
/// it returns `Ok(0)` (the edge-triggered contract).
///
/// Returns the number received (`batch.len()`); `Ok(0)` when nothing is queued
/// (EAGAIN). EINTR is retried. Datagrams from a non-IP family (impossible on an
/// IPv4/IPv6 socket) are skipped. Other errors (e.g. a pending ICMP error on a
/// connected socket) are returned; the socket stays usable.
pub fn recv_batch(sock: &UdpSocket, batch: &mut UdpBatch) -> io::Result<usize> {
    batch.len = 0;
    batch.refresh_pointers();
    let cap = batch.cap;
    // SAFETY: `hdrs[..cap]` are initialised `mmsghdr`s whose iovecs and names point
    // into buffers owned by `batch` and sized as declared (refreshed just above);
    // `batch` is borrowed mutably for the call so nothing else touches them.
    let n = unsafe { recvmmsg_dontwait(sock.as_raw_fd(), &mut batch.hdrs[..cap]) }?;
    // Compact in place: slot k of the kernel arrays -> entry `kept`.
    let mut kept = 0;
    for k in 0..n.min(batch.cap) {
        let Some(addr) = read_sockaddr(&batch.names[k]) else {
            continue;
        };
        let got = batch.hdrs[k].msg_len as usize;
        let trunc = batch.hdrs[k].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let len = got.min(batch.slot_len);
        if kept != k {
            let from = k * batch.slot_len;
            batch
                .bufs
                .copy_within(from..from + len, kept * batch.slot_len);
        }
        batch.lens[kept] = len;
        batch.truncated[kept] = trunc;
        batch.addrs[kept] = addr;
        kept += 1;
    }
    batch.len = kept;
    Ok(kept)
}

/// What [`send_batch`] did.
#[derive(Debug, Default)]
pub struct SendOutcome {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Datagrams dropped because the kernel refused that datagram (bad or unreachable
    /// destination, too big, firewall): counted, never retried, never blocking the
    /// datagrams behind them.
    pub dropped: usize,
    /// The last per-datagram error, for the log and the metric label.
    pub last_error: Option<io::Error>,
    /// True when the socket buffer was full (EAGAIN): the unsent datagrams are still
    /// queued at the front of the batch, in order.
    pub would_block: bool,
}

/// Sends every datagram queued in `batch` with `sendmmsg(MSG_DONTWAIT)`, looping on
/// partial sends. Called once per shard loop turn (and whenever the batch is full).
///
/// Policy:
/// * Everything sent: the batch is empty afterwards.
/// * EAGAIN (socket buffer full): stop; the datagrams not sent stay queued, in order,
///   at the front of the batch, and `would_block` is set. The caller either registers
///   writable interest and calls again on the event, or (real-time audio being useless
///   late) clears the batch and counts the loss.
/// * EINTR: retried.
/// * An error that belongs to one datagram (destination unreachable, refused, too big,
///   not permitted, invalid address): that datagram is dropped and counted; the rest
///   are still sent. One bad peer never blocks another call's audio.
/// * An error that means the socket itself is unusable (`EBADF`, `ENOTSOCK`, `EFAULT`,
///   `EOPNOTSUPP`, `EDESTADDRREQ`) is returned as `Err`; the batch keeps the unsent
///   datagrams.
pub fn send_batch(sock: &UdpSocket, batch: &mut UdpBatch) -> io::Result<SendOutcome> {
    let mut out = SendOutcome::default();
    let fd = sock.as_raw_fd();
    let total = batch.len;
    // Fill the kernel arrays for every queued datagram.
    batch.refresh_pointers();
    for i in 0..total {
        batch.iovs[i].iov_len = batch.lens[i];
        let addr = batch.addrs[i];
        let namelen = write_sockaddr(addr, &mut batch.names[i]);
        batch.hdrs[i].msg_hdr.msg_namelen = namelen;
    }
    let mut done = 0; // datagrams at the front that are sent or dropped
    let mut result = Ok(());
    while done < total {
        // SAFETY: entries `done..total` of `hdrs` are initialised `mmsghdr`s whose
        // iovecs and names point into buffers owned by `batch` with the lengths set
        // above; `batch` is borrowed mutably for the call.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                batch.hdrs.as_mut_ptr().add(done),
                (total - done) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc >= 0 {
            let n = rc as usize;
            out.sent += n;
            done += n;
            if n == 0 {
                // Not expected from Linux; avoid spinning.
                out.would_block = true;
                break;
            }
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(e) if e == libc::EAGAIN || e == libc::EWOULDBLOCK => {
                out.would_block = true;
                break;
            }
            Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EOPNOTSUPP)
            | Some(libc::EDESTADDRREQ) => {
                result = Err(err);
                break;
            }
            _ => {
                out.dropped += 1;
                out.last_error = Some(err);
                done += 1;
            }
        }
    }
    batch.drop_front(done);
    result.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn push_until_full_then_clear() {
        let mut b = UdpBatch::new(4);
        assert!(b.is_empty());
        for i in 0..4u8 {
            assert!(b.push(&[i; 10], addr(1000 + u16::from(i))));
        }
        assert!(b.is_full());
        assert!(!b.push(&[9], addr(1)));
        assert_eq!(b.len(), 4);
        let (p, a) = b.get(2);
        assert_eq!(p, &[2u8; 10]);
        assert_eq!(a, addr(1002));
        b.clear();
        assert!(b.is_empty() && !b.is_full());
        assert!(b.push(&[7; 3], addr(5)));
        assert_eq!(b.get(0), (&[7u8; 3][..], addr(5)));
    }

    #[test]
    fn push_refuses_oversize_payload() {
        let mut b = UdpBatch::new(2);
        assert!(!b.push(&[0; DATAGRAM_MAX + 1], addr(1)));
        assert!(b.push(&[0; DATAGRAM_MAX], addr(1)));
        assert_eq!(b.get(0).0.len(), DATAGRAM_MAX);
    }

    #[test]
    fn drop_front_keeps_order() {
        let mut b = UdpBatch::with_slot_len(4, 8);
        for i in 0..4u8 {
            assert!(b.push(&vec![i; usize::from(i) + 1], addr(u16::from(i))));
        }
        b.drop_front(1);
        assert_eq!(b.len(), 3);
        for j in 0..3 {
            let i = j as u8 + 1;
            assert_eq!(
                b.get(j),
                (&vec![i; usize::from(i) + 1][..], addr(u16::from(i)))
            );
        }
        assert!(b.push(&[9], addr(9)));
        assert!(b.is_full());
    }

    #[test]
    fn sockaddr_round_trip() {
        let v6: SocketAddr = "[::1]:5004".parse().unwrap();
        for a in [addr(18080), v6] {
            // SAFETY: all-zero `sockaddr_storage` is valid.
            let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            write_sockaddr(a, &mut s);
            assert_eq!(read_sockaddr(&s), Some(a));
        }
    }

    #[test]
    #[should_panic]
    fn get_out_of_range_panics() {
        let b = UdpBatch::new(1);
        let _ = b.get(0);
    }
}
