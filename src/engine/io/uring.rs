//! The io_uring readiness backend (the `io-uring` crate): `POLL_ADD` per registered fd
//! (multishot where the kernel has it, re-armed one-shot otherwise), `wait` as one
//! `io_uring_enter` that submits pending SQEs plus a `TIMEOUT` SQE and waits for one
//! completion, completions turned into the same [`Events`] as epoll.
//!
//! Owns: the ring, the fd -> (token, interest, generation) table and the start-up probe
//! (`NOP` round trip, opcode probe). Must not: read or write sockets (sends and receives
//! stay on `recvmmsg`/`sendmmsg`; moving them to SQEs is a later step that must be
//! measured first), allocate per wait (the tables grow only when a higher fd is
//! registered), or be shared between threads.
//!
//! Stale completions are harmless by construction: every poll SQE carries the fd and a
//! per-fd generation in its `user_data`; a completion whose generation is not the
//! fd's current one (removed, re-registered, or the fd number reused) is ignored.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use super::{Backend, BackendKind, Event, Events, Interest};

const SQ_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = 4096;

const TAG_POLL: u64 = 1;
const TAG_TIMEOUT: u64 = 2;
const TAG_REMOVE: u64 = 3;
const TAG_NOP: u64 = 4;
const GEN_MASK: u32 = 0x00ff_ffff;

fn user_data(tag: u64, gen: u32, fd: RawFd) -> u64 {
    (tag << 56) | (u64::from(gen & GEN_MASK) << 32) | u64::from(fd as u32)
}

fn split_user_data(ud: u64) -> (u64, u32, RawFd) {
    (ud >> 56, ((ud >> 32) as u32) & GEN_MASK, ud as u32 as RawFd)
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    active: bool,
    needs_arm: bool,
    /// The armed poll was submitted as multishot (an EINVAL then means "no multishot").
    multishot: bool,
    token: u64,
    interest: Interest,
    gen: u32,
}

/// io_uring readiness backend; see the module docs of `engine::io` for the contract.
pub struct UringBackend {
    ring: IoUring<squeue::Entry, cqueue::Entry>,
    slots: Vec<Slot>,
    rearm: Vec<RawFd>,
    multishot: bool,
    timespec: Box<types::Timespec>,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("ring_fd", &self.ring.as_raw_fd())
            .field("multishot", &self.multishot)
            .finish()
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what.to_string())
}

impl UringBackend {
    /// Creates the ring and probes it: the kernel must accept `io_uring_setup`
    /// (seccomp and `kernel.io_uring_disabled` may refuse with EPERM/ENOSYS), have
    /// `IORING_FEAT_NODROP` and the `POLL_ADD`/`POLL_REMOVE`/`TIMEOUT` opcodes, and
    /// complete a `NOP`. Called by [`super::open`]; the error says which step failed.
    pub fn new() -> io::Result<UringBackend> {
        UringBackend::with_multishot(true)
    }

    /// Like [`UringBackend::new`], but with `allow_multishot == false` polls are always
    /// one-shot and re-armed after each completion (the pre-5.13 path). Used by tests to
    /// cover that path on new kernels, and available as an escape hatch.
    pub fn with_multishot(allow_multishot: bool) -> io::Result<UringBackend> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup: {e}")))?;
        if !ring.params().is_feature_nodrop() {
            return Err(unsupported(
                "kernel lacks IORING_FEAT_NODROP (needs Linux >= 5.5)",
            ));
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring opcode probe: {e}")))?;
        for (code, name) in [
            (opcode::Nop::CODE, "NOP"),
            (opcode::PollAdd::CODE, "POLL_ADD"),
            (opcode::PollRemove::CODE, "POLL_REMOVE"),
            (opcode::Timeout::CODE, "TIMEOUT"),
        ] {
            if !probe.is_supported(code) {
                return Err(unsupported(&format!(
                    "io_uring opcode {name} not supported"
                )));
            }
        }
        // Multishot poll arrived in 5.13 together with resource tagging; if the guess is
        // wrong the first poll completes with EINVAL and we downgrade (see `reap`).
        let multishot = allow_multishot && ring.params().is_feature_resource_tagging();
        let mut backend = UringBackend {
            ring,
            slots: Vec::new(),
            rearm: Vec::with_capacity(64),
            multishot,
            timespec: Box::new(types::Timespec::new()),
        };
        backend.nop_round_trip()?;
        Ok(backend)
    }

    /// Whether polls are multishot (Linux >= 5.13) or re-armed one-shot.
    pub fn is_multishot(&self) -> bool {
        self.multishot
    }

    fn nop_round_trip(&mut self) -> io::Result<()> {
        let nop = opcode::Nop::new()
            .build()
            .user_data(user_data(TAG_NOP, 0, 0));
        self.push(&nop)?;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("io_uring NOP submit: {e}"),
                    ))
                }
            }
        }
        let cqe = self.ring.completion().next();
        match cqe {
            Some(c) if c.result() >= 0 => Ok(()),
            Some(c) => Err(io::Error::new(
                io::Error::from_raw_os_error(-c.result()).kind(),
                format!(
                    "io_uring NOP failed: {}",
                    io::Error::from_raw_os_error(-c.result())
                ),
            )),
            None => Err(io::Error::other("io_uring NOP: no completion")),
        }
    }

    /// Queues one SQE, submitting first if the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry we build points only at memory that outlives its
            // submission: poll/remove/nop carry no pointers, and the timeout's
            // timespec lives in `self.timespec` (a stable heap box) until the next
            // wait, by which time the kernel has copied it (at submission).
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn arm(&mut self, fd: RawFd) -> io::Result<()> {
        self.slots[fd as usize].multishot = self.multishot;
        let slot = self.slots[fd as usize];
        let mut mask = libc::POLLRDHUP as u32;
        if slot.interest.readable {
            mask |= (libc::POLLIN | libc::POLLPRI) as u32;
        }
        if slot.interest.writable {
            mask |= libc::POLLOUT as u32;
        }
        let entry = opcode::PollAdd::new(types::Fd(fd), mask)
            .multi(self.multishot)
            .build()
            .user_data(user_data(TAG_POLL, slot.gen, fd));
        self.push(&entry)
    }

    fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        let slot = self.slots[fd as usize];
        let entry = opcode::PollRemove::new(user_data(TAG_POLL, slot.gen, fd))
            .build()
            .user_data(user_data(TAG_REMOVE, slot.gen, fd));
        self.push(&entry)
    }

    fn slot_mut(&mut self, fd: RawFd) -> io::Result<&mut Slot> {
        match usize::try_from(fd).ok().and_then(|i| self.slots.get_mut(i)) {
            Some(s) if s.active => Ok(s),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("fd {fd} is not registered"),
            )),
        }
    }

    fn submit_now(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves completions into `events` until it is full (the rest stay in the CQ).
    fn reap(&mut self, events: &mut Events) {
        let mut cq = self.ring.completion();
        loop {
            if events.is_full() {
                break;
            }
            let Some(cqe) = cq.next() else { break };
            let (tag, gen, fd) = split_user_data(cqe.user_data());
            if tag != TAG_POLL {
                continue; // timeouts, removals, NOPs carry nothing for the caller
            }
            let Some(slot) = usize::try_from(fd).ok().and_then(|i| self.slots.get_mut(i)) else {
                continue;
            };
            if !slot.active || slot.gen != gen {
                continue; // stale: removed or re-registered since
            }
            let res = cqe.result();
            let more = cqueue::more(cqe.flags());
            if res < 0 {
                if res == -libc::EINVAL && slot.multishot {
                    // Kernel without multishot poll: downgrade and re-arm one-shot.
                    self.multishot = false;
                } else if res != -libc::ECANCELED {
                    events.push(Event {
                        token: slot.token,
                        error: true,
                        ..Event::default()
                    });
                    // The poll is dead; the caller deregisters. Re-arm nothing.
                    continue;
                }
                if !slot.needs_arm {
                    slot.needs_arm = true;
                    self.rearm.push(fd);
                }
                continue;
            }
            let bits = res as u32;
            events.push(Event {
                token: slot.token,
                readable: bits & (libc::POLLIN | libc::POLLPRI) as u32 != 0,
                writable: bits & libc::POLLOUT as u32 != 0,
                hup: bits & (libc::POLLHUP | libc::POLLRDHUP) as u32 != 0,
                error: bits & (libc::POLLERR | libc::POLLNVAL) as u32 != 0,
            });
            if !more && !slot.needs_arm {
                slot.needs_arm = true;
                self.rearm.push(fd);
            }
        }
    }
}

fn check_fd_open(fd: RawFd) -> io::Result<()> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_GETFD only reads the descriptor flags; an invalid fd yields EBADF.
    let rc = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
    }

    fn register(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        check_fd_open(fd)?;
        let i = fd as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, Slot::default());
        }
        let slot = &mut self.slots[i];
        if slot.active {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("fd {fd} is already registered"),
            ));
        }
        slot.active = true;
        slot.needs_arm = false;
        slot.token = token;
        slot.interest = interest;
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        self.arm(fd)
    }

    fn reregister(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.slot_mut(fd)?;
        self.remove(fd)?;
        let slot = self.slot_mut(fd)?;
        slot.token = token;
        slot.interest = interest;
        slot.needs_arm = false;
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        self.arm(fd)
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        self.slot_mut(fd)?;
        self.remove(fd)?;
        let slot = self.slot_mut(fd)?;
        slot.active = false;
        slot.needs_arm = false;
        slot.gen = slot.gen.wrapping_add(1) & GEN_MASK;
        // Submit now: the armed poll holds a reference to the file, so the socket is
        // only really closed (FIN sent, port freed) once the removal is processed.
        self.submit_now()
    }

    fn wait(&mut self, timeout_ms: Option<u32>, events: &mut Events) -> io::Result<()> {
        events.clear();
        // Re-arm one-shot polls that completed in earlier waits. Taking the Vec keeps
        // its allocation; it is put back below.
        let mut rearm = std::mem::take(&mut self.rearm);
        let mut result = Ok(());
        for &fd in &rearm {
            let slot = &mut self.slots[fd as usize];
            if slot.active && slot.needs_arm {
                slot.needs_arm = false;
                if let Err(e) = self.arm(fd) {
                    result = Err(e);
                    break;
                }
            }
        }
        rearm.clear();
        self.rearm = rearm;
        result?;

        let ready = !self.ring.completion().is_empty();
        let submitted = if ready || timeout_ms == Some(0) {
            self.ring.submit()
        } else {
            if let Some(ms) = timeout_ms {
                *self.timespec = types::Timespec::new()
                    .sec(u64::from(ms / 1000))
                    .nsec((ms % 1000) * 1_000_000);
                // count(1): the timeout also completes as soon as any other completion
                // is posted, so it never outlives the wait that armed it for long.
                let entry = opcode::Timeout::new(&*self.timespec as *const types::Timespec)
                    .count(1)
                    .build()
                    .user_data(user_data(TAG_TIMEOUT, 0, 0));
                self.push(&entry)?;
            }
            self.ring.submit_and_wait(1)
        };
        match submitted {
            Ok(_) => {}
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted
                    || e.raw_os_error() == Some(libc::EBUSY)
                    || e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => return Err(e),
        }
        self.reap(events);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_waits_instead_of_spinning() {
        // Lower bound only (a sleep is never shorter): catches a stale or zero timeout
        // turning the shard loop into a busy spin. Skipped where io_uring is refused.
        let Ok(mut b) = UringBackend::new() else {
            return;
        };
        let mut events = Events::with_capacity(4);
        let start = std::time::Instant::now();
        for _ in 0..5 {
            b.wait(Some(20), &mut events).unwrap();
            assert!(events.is_empty());
        }
        assert!(start.elapsed() >= std::time::Duration::from_millis(90));
    }

    #[test]
    fn user_data_round_trip() {
        for (tag, gen, fd) in [
            (TAG_POLL, 0, 0),
            (TAG_POLL, GEN_MASK, i32::MAX),
            (TAG_NOP, 7, 3),
        ] {
            assert_eq!(split_user_data(user_data(tag, gen, fd)), (tag, gen, fd));
        }
    }
}
