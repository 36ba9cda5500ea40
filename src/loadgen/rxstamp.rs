//! Kernel receive timestamps for the load generator's sockets.
//!
//! Owns: turning `SO_TIMESTAMPNS` on for a socket, the receive calls that return the
//! kernel's arrival time beside the bytes (`recvmmsg` for an RTP leg, `recvmsg` for an
//! AudioSocket leg), and the mapping of those `CLOCK_REALTIME` stamps onto the
//! driver's monotonic microsecond clock ([`StampClock`]).
//!
//! Why: the inter-arrival of voxd's frames is what the timing SLO judges. Stamped by
//! the kernel when the packet or segment reached the socket, it no longer depends on
//! when the load generator's own loop got round to reading (which, with a paced loop
//! that reads every socket once per 1 ms tick, would add up to 1 ms of quantisation,
//! and, when the load generator falls behind, its own lateness).
//!
//! Must not: allocate per receive, block (every call uses `MSG_DONTWAIT`), or keep
//! pointers into its buffers between calls (the message headers are built on the
//! stack for each call, so the types stay `Send`).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

/// Datagrams per `recvmmsg` on one RTP leg (a short batch means the socket is empty).
pub const UDP_BATCH: usize = 4;
/// Largest datagram kept (RTP of 20 ms G.711 is 172 bytes).
const UDP_SLOT: usize = 2048;
/// Control buffer per message, in u64 so that it is aligned for `cmsghdr`
/// (`CMSG_SPACE(sizeof(struct timespec))` is 32 bytes on 64-bit Linux).
const CTRL_WORDS: usize = 8;

/// Asks the kernel to stamp every packet/segment this socket receives.
pub fn enable(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a
    // valid c_int that outlives the call, and its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Maps kernel `CLOCK_REALTIME` stamps onto the driver's clock, read once per loop
/// turn: `arrival = now_us - (realtime_now - stamp)`, never after `now_us`.
#[derive(Debug, Clone, Copy)]
pub struct StampClock {
    now_us: u64,
    real_now_ns: i128,
}

impl StampClock {
    /// Pairs the driver's `now_us` with the realtime clock read at the same moment.
    pub fn at(now_us: u64) -> StampClock {
        StampClock {
            now_us,
            real_now_ns: realtime_ns(),
        }
    }

    /// For tests: a fixed pairing.
    pub fn fixed(now_us: u64, real_now_ns: i128) -> StampClock {
        StampClock {
            now_us,
            real_now_ns,
        }
    }

    /// The driver time at which a packet stamped `stamp_ns` arrived; `now_us` when
    /// there is no stamp. A stamp from the future (clock stepped) counts as now.
    pub fn arrival_us(&self, stamp_ns: Option<i128>) -> u64 {
        match stamp_ns {
            Some(s) => {
                let ago_us = ((self.real_now_ns - s).max(0) / 1_000) as u64;
                self.now_us.saturating_sub(ago_us)
            }
            None => self.now_us,
        }
    }
}

fn realtime_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ns(&ts)
}

fn ns(ts: &libc::timespec) -> i128 {
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The `SCM_TIMESTAMPNS` stamp in a received message's control data, if any.
///
/// # Safety
/// `hdr.msg_control`/`msg_controllen` must describe control data the kernel filled
/// in by the call that returned `hdr`, still alive and not modified since.
unsafe fn stamp_of(hdr: &libc::msghdr) -> Option<i128> {
    // SAFETY: per this function's contract, the control buffer is valid; the CMSG_*
    // macros only walk inside `msg_control .. msg_control + msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ns(&ts));
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
        None
    }
}

/// Up to [`UDP_BATCH`] datagrams of one RTP leg with their kernel stamps.
pub struct StampedUdp {
    bufs: Box<[[u8; UDP_SLOT]; UDP_BATCH]>,
    ctrl: [[u64; CTRL_WORDS]; UDP_BATCH],
    lens: [usize; UDP_BATCH],
    stamps: [Option<i128>; UDP_BATCH],
    len: usize,
}

impl std::fmt::Debug for StampedUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampedUdp")
            .field("len", &self.len)
            .finish()
    }
}

impl Default for StampedUdp {
    fn default() -> Self {
        Self::new()
    }
}

impl StampedUdp {
    /// An empty batch (the only allocation: the datagram buffers, once).
    pub fn new() -> StampedUdp {
        StampedUdp {
            bufs: Box::new([[0; UDP_SLOT]; UDP_BATCH]),
            ctrl: [[0; CTRL_WORDS]; UDP_BATCH],
            lens: [0; UDP_BATCH],
            stamps: [None; UDP_BATCH],
            len: 0,
        }
    }

    /// Datagram `i` of the last receive and its kernel stamp.
    pub fn get(&self, i: usize) -> (&[u8], Option<i128>) {
        (&self.bufs[i][..self.lens[i]], self.stamps[i])
    }

    /// Receives what one `recvmmsg(MSG_DONTWAIT)` returns (at most [`UDP_BATCH`]);
    /// `Ok(0)` when nothing is queued. EINTR is retried; other errors (a pending ICMP
    /// error on the connected socket) are returned and the socket stays usable.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.len = 0;
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut iovs: [libc::iovec; UDP_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; UDP_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..UDP_BATCH {
            iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = UDP_SLOT;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_control = self.ctrl[i].as_mut_ptr().cast();
            hdrs[i].msg_hdr.msg_controllen = std::mem::size_of_val(&self.ctrl[i]) as _;
        }
        // SAFETY: `hdrs` holds UDP_BATCH initialised headers whose iovecs and
        // control buffers point into `self` (borrowed mutably for the call) and into
        // `iovs` on this stack frame, all sized as declared.
        let n = unsafe { crate::engine::io::recvmmsg_dontwait(fd, &mut hdrs) }?;
        for (i, hdr) in hdrs.iter().enumerate().take(n.min(UDP_BATCH)) {
            self.lens[i] = (hdr.msg_len as usize).min(UDP_SLOT);
            // SAFETY: the kernel filled header i's control data in this call; the
            // buffer (`self.ctrl[i]`) has not been touched since.
            self.stamps[i] = unsafe { stamp_of(&hdr.msg_hdr) };
        }
        self.len = n.min(UDP_BATCH);
        Ok(self.len)
    }
}

/// One non-blocking `recvmsg` on a stream socket into `buf`: the bytes read and the
/// kernel stamp of the last segment they came from. `Ok((0, _))` is EOF; EAGAIN is
/// returned as `ErrorKind::WouldBlock` (like `Read::read`).
pub fn recv_stream(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<i128>)> {
    let mut ctrl = [0u64; CTRL_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = ctrl.as_mut_ptr().cast();
    hdr.msg_controllen = std::mem::size_of_val(&ctrl) as _;
    loop {
        // SAFETY: `hdr` points at `iov` (describing `buf`, borrowed mutably) and at
        // `ctrl`, both alive for the call and sized as declared.
        let rc = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_DONTWAIT) };
        if rc >= 0 {
            // SAFETY: the kernel filled `ctrl` in this call.
            let stamp = unsafe { stamp_of(&hdr) };
            return Ok((rc as usize, stamp));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;

    /// Waits until the kernel stamps received packets. The first `SO_TIMESTAMP*`
    /// socket of the whole system turns stamping on through a deferred work item
    /// (`net_enable_timestamp`), so packets that arrive in the moment after the
    /// first `enable` carry no stamp (the load generator then uses its own clock);
    /// a test that expects stamps must not race that switch. Call it after enabling
    /// the test's own socket, which keeps stamping on once this probe is dropped.
    fn until_stamping_is_on() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(rx.as_raw_fd()).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut b = StampedUdp::new();
        for _ in 0..5000 {
            tx.send_to(&[0; 8], rx.local_addr().unwrap()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
            let n = b.recv(rx.as_raw_fd()).unwrap();
            if (0..n).any(|i| b.get(i).1.is_some()) {
                return;
            }
        }
        panic!("the kernel never stamped a received datagram in 5 s");
    }

    #[test]
    fn arrival_is_now_minus_the_age_of_the_stamp() {
        let c = StampClock::fixed(50_000, 1_000_000_000_000);
        assert_eq!(c.arrival_us(None), 50_000);
        assert_eq!(c.arrival_us(Some(1_000_000_000_000 - 3_000_000)), 47_000);
        // From the future (clock stepped back): now.
        assert_eq!(c.arrival_us(Some(1_000_000_000_000 + 9_000_000)), 50_000);
        // Older than the driver's clock: saturates at 0.
        assert_eq!(c.arrival_us(Some(0)), 0);
    }

    #[test]
    fn udp_datagrams_come_back_with_a_stamp_before_now() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable(rx.as_raw_fd()).unwrap();
        until_stamping_is_on();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = realtime_ns();
        for i in 0..6u8 {
            tx.send_to(&[i; 172], rx.local_addr().unwrap()).unwrap();
        }
        let mut b = StampedUdp::new();
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let n = b.recv(rx.as_raw_fd()).unwrap();
            for i in 0..n {
                let (data, stamp) = b.get(i);
                let stamp = stamp.expect("SO_TIMESTAMPNS gives every datagram a stamp");
                assert!(stamp >= before - 1_000_000 && stamp <= realtime_ns());
                seen.push(data[0]);
                assert_eq!(data.len(), 172);
            }
            if seen.len() == 6 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(b.recv(rx.as_raw_fd()).unwrap(), 0, "empty socket: Ok(0)");
    }

    #[test]
    fn stream_reads_carry_the_stamp_of_their_segment() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        enable(s.as_raw_fd()).unwrap();
        until_stamping_is_on();
        let mut buf = [0u8; 1024];
        let e = recv_stream(s.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let before = realtime_ns();
        c.write_all(&[7; 323]).unwrap();
        let mut got = 0;
        for _ in 0..1000 {
            match recv_stream(s.as_raw_fd(), &mut buf[got..]) {
                Ok((n, stamp)) => {
                    assert!(n > 0);
                    let stamp = stamp.expect("a stamped TCP read");
                    assert!(stamp >= before - 1_000_000 && stamp <= realtime_ns());
                    got += n;
                    if got == 323 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, 323);
        drop(c);
        let mut eof = false;
        for _ in 0..1000 {
            match recv_stream(s.as_raw_fd(), &mut buf) {
                Ok((0, _)) => {
                    eof = true;
                    break;
                }
                Ok(_) => panic!("no more bytes were sent"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        assert!(eof);
    }
}
