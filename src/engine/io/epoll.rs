//! The epoll readiness backend: `epoll_create1(EPOLL_CLOEXEC)`, edge-triggered
//! `epoll_ctl` registrations, and `epoll_wait` into a preallocated event array.
//!
//! Owns: the epoll fd (an `OwnedFd`, closed on drop) and its event array. Must not:
//! read or write sockets (that is the shard's job after an event), allocate per wait,
//! or be shared between threads.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{Backend, BackendKind, Event, Events, Interest};

/// Events fetched per `epoll_wait` at most (further ones are returned by the next).
const MAX_EVENTS: usize = 1024;

/// Edge-triggered epoll; see the module docs of `engine::io` for the contract.
pub struct EpollBackend {
    epfd: OwnedFd,
    buf: Box<[libc::epoll_event]>,
}

impl std::fmt::Debug for EpollBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpollBackend")
            .field("epfd", &self.epfd.as_raw_fd())
            .finish()
    }
}

impl EpollBackend {
    /// Creates the epoll instance. Called by [`super::open`]; fails only if the kernel
    /// refuses `epoll_create1` (fd limit).
    pub fn new() -> io::Result<EpollBackend> {
        // SAFETY: plain syscall with a constant flag; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let buf = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS].into_boxed_slice();
        Ok(EpollBackend { epfd, buf })
    }

    fn ctl(
        &mut self,
        op: libc::c_int,
        fd: RawFd,
        token: u64,
        interest: Interest,
    ) -> io::Result<()> {
        let mut flags = libc::EPOLLET | libc::EPOLLRDHUP;
        if interest.readable {
            flags |= libc::EPOLLIN;
        }
        if interest.writable {
            flags |= libc::EPOLLOUT;
        }
        let mut ev = libc::epoll_event {
            events: flags as u32,
            u64: token,
        };
        // SAFETY: `epfd` is our open epoll fd; `ev` is a valid event for the call (the
        // kernel ignores it for EPOLL_CTL_DEL, where it may not be null on old kernels).
        let rc = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl Backend for EpollBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Epoll
    }

    fn register(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    fn reregister(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, Interest::default())
    }

    fn wait(&mut self, timeout_ms: Option<u32>, events: &mut Events) -> io::Result<()> {
        events.clear();
        let timeout = match timeout_ms {
            None => -1,
            Some(ms) => i32::try_from(ms).unwrap_or(i32::MAX),
        };
        let max = events.capacity().min(self.buf.len());
        // SAFETY: `buf` has room for `max` events and is exclusively borrowed.
        let rc = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.buf.as_mut_ptr(),
                max as libc::c_int,
                timeout,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(err);
        }
        for ev in &self.buf[..rc as usize] {
            let bits = ev.events as libc::c_int;
            events.push(Event {
                token: ev.u64,
                readable: bits & (libc::EPOLLIN | libc::EPOLLPRI) != 0,
                writable: bits & libc::EPOLLOUT != 0,
                hup: bits & (libc::EPOLLHUP | libc::EPOLLRDHUP) != 0,
                error: bits & libc::EPOLLERR != 0,
            });
        }
        Ok(())
    }
}
