//! Per-shard hashed timer wheel: the 20 ms pacing clock of every call on a shard.
//!
//! Owns: one pending deadline per key (a key is a call's slab index), kept in a ring
//! of 128 one-millisecond slots for deadlines within the next 128 ms, and in an
//! indexed binary heap (the overflow level) for deadlines further out. Lists are
//! intrusive (arrays indexed by key), so there is no timer, task or allocation per
//! call: everything is allocated in [`TimerWheel::new`]. Calls due in the same
//! millisecond come out of one slot in one pass.
//!
//! Must not: read the clock (time is passed in as `u64` milliseconds on the shard's
//! monotonic clock), allocate after construction, or do I/O. Sans-IO, safe code only.
//!
//! Ordering contract: [`TimerWheel::expire`] yields keys in deadline order; keys due
//! in the same millisecond come out in the order they were (last) scheduled.
//! Invariant kept between calls: the ring holds exactly the deadlines in
//! `[base, base + 128)`, the heap those at or after `base + 128`, where `base` is the
//! first millisecond not yet expired. Heap entries are moved into the ring as soon as
//! `base` advances over them, which is what keeps same-millisecond insertion order.

#![forbid(unsafe_code)]

use std::fmt;

/// Slots in the ring (1 ms each). A power of two; 128 covers several 20 ms periods.
const SLOTS: usize = 128;
const MASK: u64 = SLOTS as u64 - 1;
/// End of an intrusive list.
const NIL: u32 = u32::MAX;
/// `loc` of a key with no pending deadline.
const LOC_NONE: u32 = u32::MAX;
/// `loc` of a key in the ring; any smaller value is its index in the heap.
const LOC_RING: u32 = u32::MAX - 1;

/// Latest time the wheel handles, in ms (about 146 million years): later deadlines
/// and times are clamped to it, so that no arithmetic overflows.
pub const MAX_TIME_MS: u64 = u64::MAX >> 1;

/// A hashed timer wheel over dense `u32` keys (`0..capacity`).
///
/// Called by the shard loop: `schedule` when a call asks to be woken (`WakeAt`),
/// `next_deadline` to bound the wait, `expire` after each wait.
pub struct TimerWheel {
    /// First millisecond not yet expired.
    base: u64,
    /// Bit `i` set: ring slot `i` is non-empty.
    occupied: u128,
    head: [u32; SLOTS],
    tail: [u32; SLOTS],
    /// Keys in the ring.
    ring_len: usize,
    /// Ring list links, by key.
    next: Box<[u32]>,
    prev: Box<[u32]>,
    /// Pending deadline, by key (valid when `loc != LOC_NONE`).
    deadline: Box<[u64]>,
    /// Schedule order, by key: breaks deadline ties in the heap.
    seq: Box<[u64]>,
    /// Where the key is: `LOC_NONE`, `LOC_RING`, or its heap index.
    loc: Box<[u32]>,
    /// Overflow level: min-heap of keys by `(deadline, seq)`, capacity fixed.
    heap: Vec<u32>,
    next_seq: u64,
}

impl fmt::Debug for TimerWheel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("base", &self.base)
            .field("capacity", &self.capacity())
            .field("in_ring", &self.ring_len)
            .field("in_overflow", &self.heap.len())
            .finish()
    }
}

impl TimerWheel {
    /// A wheel for keys `0..capacity`, with `now_ms` as its current time. All storage
    /// is allocated here. Called once per shard at start-up.
    ///
    /// # Panics
    /// If `capacity` does not fit in `u32::MAX - 1` keys.
    pub fn new(now_ms: u64, capacity: usize) -> Self {
        assert!(
            capacity < LOC_RING as usize,
            "timer wheel capacity {capacity} too large"
        );
        TimerWheel {
            base: now_ms.min(MAX_TIME_MS),
            occupied: 0,
            head: [NIL; SLOTS],
            tail: [NIL; SLOTS],
            ring_len: 0,
            next: vec![NIL; capacity].into_boxed_slice(),
            prev: vec![NIL; capacity].into_boxed_slice(),
            deadline: vec![0; capacity].into_boxed_slice(),
            seq: vec![0; capacity].into_boxed_slice(),
            loc: vec![LOC_NONE; capacity].into_boxed_slice(),
            heap: Vec::with_capacity(capacity),
            next_seq: 0,
        }
    }

    /// Number of keys the wheel was built for.
    pub fn capacity(&self) -> usize {
        self.loc.len()
    }

    /// Keys with a pending deadline.
    pub fn len(&self) -> usize {
        self.ring_len + self.heap.len()
    }

    /// True when no key has a pending deadline.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pending deadline of `key` (after clamping, see [`TimerWheel::schedule`]),
    /// or `None`.
    ///
    /// # Panics
    /// If `key >= capacity` (a slab bug).
    pub fn deadline(&self, key: u32) -> Option<u64> {
        match self.loc[key as usize] {
            LOC_NONE => None,
            _ => Some(self.deadline[key as usize]),
        }
    }

    /// Sets `key`'s one pending deadline to `at_ms`, replacing any earlier one (the key
    /// then counts as scheduled now for same-millisecond order). A deadline that has
    /// already passed (before the first millisecond not yet expired) is clamped to
    /// that millisecond: it fires on the next [`TimerWheel::expire`], after the keys
    /// already due then. O(1) within the next 128 ms, O(log n) beyond.
    ///
    /// # Panics
    /// If `key >= capacity` (a slab bug).
    pub fn schedule(&mut self, key: u32, at_ms: u64) {
        assert!(
            (key as usize) < self.capacity(),
            "timer key {key} out of range"
        );
        self.remove(key);
        let at = at_ms.clamp(self.base, MAX_TIME_MS);
        let k = key as usize;
        self.deadline[k] = at;
        self.seq[k] = self.next_seq;
        self.next_seq += 1;
        if at < self.horizon() {
            self.ring_push(key);
        } else {
            self.heap_push(key);
        }
    }

    /// Removes `key`'s pending deadline; returns whether there was one.
    ///
    /// # Panics
    /// If `key >= capacity` (a slab bug).
    pub fn cancel(&mut self, key: u32) -> bool {
        self.remove(key)
    }

    /// Appends to `out` every key due at or before `now_ms`, in deadline order (same
    /// millisecond: schedule order), and forgets their deadlines. Called once per loop
    /// turn after the wait. Allocates nothing when `out` has room for the keys due.
    /// A large jump (the loop stalled) fires everything due once, in order, skipping
    /// empty stretches. A `now_ms` earlier than a previous one fires nothing.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<u32>) {
        let now = now_ms.min(MAX_TIME_MS);
        while self.base <= now {
            let next = match self.next_deadline() {
                Some(t) => t,
                None => {
                    self.base = now + 1;
                    break;
                }
            };
            if next > now {
                self.base = now + 1;
                self.migrate();
                break;
            }
            self.base = next;
            self.migrate();
            self.fire_slot(out);
            self.base += 1;
            self.migrate();
        }
    }

    /// The earliest pending deadline, or `None` when nothing is pending: bounds the
    /// shard's wait each loop turn. O(1). Never earlier than the first millisecond not
    /// yet expired.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.ring_len > 0 {
            let off = self
                .occupied
                .rotate_right((self.base & MASK) as u32)
                .trailing_zeros();
            Some(self.base + u64::from(off))
        } else {
            self.heap.first().map(|&k| self.deadline[k as usize])
        }
    }

    /// First deadline that belongs in the heap.
    fn horizon(&self) -> u64 {
        self.base + SLOTS as u64
    }

    fn remove(&mut self, key: u32) -> bool {
        match self.loc[key as usize] {
            LOC_NONE => false,
            LOC_RING => {
                self.ring_unlink(key);
                true
            }
            i => {
                self.heap_remove(i as usize);
                true
            }
        }
    }

    // ---- ring ----

    fn ring_push(&mut self, key: u32) {
        let k = key as usize;
        let slot = (self.deadline[k] & MASK) as usize;
        let t = self.tail[slot];
        self.next[k] = NIL;
        self.prev[k] = t;
        if t == NIL {
            self.head[slot] = key;
        } else {
            self.next[t as usize] = key;
        }
        self.tail[slot] = key;
        self.occupied |= 1u128 << slot;
        self.loc[k] = LOC_RING;
        self.ring_len += 1;
    }

    fn ring_unlink(&mut self, key: u32) {
        let k = key as usize;
        let slot = (self.deadline[k] & MASK) as usize;
        let (p, n) = (self.prev[k], self.next[k]);
        if p == NIL {
            self.head[slot] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail[slot] = p;
        } else {
            self.prev[n as usize] = p;
        }
        if self.head[slot] == NIL {
            self.occupied &= !(1u128 << slot);
        }
        self.loc[k] = LOC_NONE;
        self.ring_len -= 1;
    }

    /// Moves every key of the slot of `base` to `out`, in list order.
    fn fire_slot(&mut self, out: &mut Vec<u32>) {
        let slot = (self.base & MASK) as usize;
        let mut key = self.head[slot];
        while key != NIL {
            let k = key as usize;
            debug_assert_eq!(self.deadline[k], self.base);
            out.push(key);
            self.loc[k] = LOC_NONE;
            self.ring_len -= 1;
            key = self.next[k];
        }
        self.head[slot] = NIL;
        self.tail[slot] = NIL;
        self.occupied &= !(1u128 << slot);
    }

    /// Moves heap keys now within the ring's span into the ring, earliest first.
    fn migrate(&mut self) {
        let horizon = self.horizon();
        while let Some(&key) = self.heap.first() {
            if self.deadline[key as usize] >= horizon {
                break;
            }
            self.heap_remove(0);
            self.ring_push(key);
        }
    }

    // ---- overflow heap (indexed: `loc[key]` is the key's position) ----

    fn less(&self, a: u32, b: u32) -> bool {
        let (a, b) = (a as usize, b as usize);
        (self.deadline[a], self.seq[a]) < (self.deadline[b], self.seq[b])
    }

    fn heap_set(&mut self, i: usize, key: u32) {
        self.heap[i] = key;
        self.loc[key as usize] = i as u32;
    }

    fn heap_push(&mut self, key: u32) {
        debug_assert!(self.heap.len() < self.heap.capacity());
        self.heap.push(key);
        let i = self.heap.len() - 1;
        self.loc[key as usize] = i as u32;
        self.sift_up(i);
    }

    fn heap_remove(&mut self, i: usize) {
        let key = self.heap[i];
        let last = self.heap.pop().expect("heap_remove on empty heap");
        self.loc[key as usize] = LOC_NONE;
        if i < self.heap.len() {
            self.heap_set(i, last);
            self.sift_down(i);
            self.sift_up(i);
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        let key = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / 2;
            let p = self.heap[parent];
            if !self.less(key, p) {
                break;
            }
            self.heap_set(i, p);
            i = parent;
        }
        self.heap_set(i, key);
    }

    fn sift_down(&mut self, mut i: usize) {
        let key = self.heap[i];
        let len = self.heap.len();
        loop {
            let l = 2 * i + 1;
            if l >= len {
                break;
            }
            let r = l + 1;
            let c = if r < len && self.less(self.heap[r], self.heap[l]) {
                r
            } else {
                l
            };
            if !self.less(self.heap[c], key) {
                break;
            }
            let ck = self.heap[c];
            self.heap_set(i, ck);
            i = c;
        }
        self.heap_set(i, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    /// Reference model: ordered map of (deadline, seq) -> key.
    struct Model {
        base: u64,
        seq: u64,
        by_time: BTreeMap<(u64, u64), u32>,
        by_key: HashMap<u32, (u64, u64)>,
    }

    impl Model {
        fn new(now: u64) -> Self {
            Model {
                base: now,
                seq: 0,
                by_time: BTreeMap::new(),
                by_key: HashMap::new(),
            }
        }
        fn schedule(&mut self, key: u32, at: u64) {
            self.cancel(key);
            let e = (at.max(self.base), self.seq);
            self.seq += 1;
            self.by_time.insert(e, key);
            self.by_key.insert(key, e);
        }
        fn cancel(&mut self, key: u32) -> bool {
            match self.by_key.remove(&key) {
                Some(e) => {
                    self.by_time.remove(&e);
                    true
                }
                None => false,
            }
        }
        fn expire(&mut self, now: u64, out: &mut Vec<u32>) {
            while let Some((&(t, s), &k)) = self.by_time.iter().next() {
                if t > now {
                    break;
                }
                self.by_time.remove(&(t, s));
                self.by_key.remove(&k);
                out.push(k);
            }
            self.base = self.base.max(now + 1);
        }
        fn next_deadline(&self) -> Option<u64> {
            self.by_time.keys().next().map(|&(t, _)| t)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Schedule(u32, u64),
        Cancel(u32),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            // mostly near-term (the 20 ms pacing), some far beyond the ring, some past
            6 => (0u32..64, 0u64..60).prop_map(|(k, d)| Op::Schedule(k, d)),
            2 => (0u32..64, 0u64..5_000).prop_map(|(k, d)| Op::Schedule(k, d)),
            1 => (0u32..64, 0u64..10_000_000).prop_map(|(k, d)| Op::Schedule(k, d)),
            1 => (0u32..64, 0u64..50).prop_map(|(k, d)| Op::Schedule(k, u64::MAX - d)),
            2 => (0u32..64).prop_map(Op::Cancel),
            4 => (0u64..30).prop_map(Op::Advance),
            1 => (0u64..20_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn matches_reference_model(
            start in 0u64..1_000_000,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut w = TimerWheel::new(start, 64);
            let mut m = Model::new(start);
            let mut now = start;
            let (mut a, mut b) = (Vec::with_capacity(64), Vec::new());
            for op in ops {
                match op {
                    // Schedule deltas are relative to now; "past" ones go below it.
                    Op::Schedule(k, d) => {
                        let at = if d >= u64::MAX - 50 {
                            MAX_TIME_MS + (u64::MAX - d) // beyond MAX_TIME_MS: clamped
                        } else if d % 7 == 0 {
                            now.saturating_sub(d)
                        } else {
                            now + d
                        };
                        w.schedule(k, at);
                        m.schedule(k, at.min(MAX_TIME_MS));
                    }
                    Op::Cancel(k) => prop_assert_eq!(w.cancel(k), m.cancel(k)),
                    Op::Advance(d) => {
                        now += d;
                        a.clear();
                        b.clear();
                        w.expire(now, &mut a);
                        m.expire(now, &mut b);
                        prop_assert_eq!(&a, &b);
                    }
                }
                prop_assert_eq!(w.len(), m.by_key.len());
                prop_assert_eq!(w.next_deadline(), m.next_deadline());
                prop_assert_eq!(a.capacity(), 64);
            }
            // Drain everything: still in order.
            a.clear();
            b.clear();
            w.expire(MAX_TIME_MS, &mut a);
            m.expire(MAX_TIME_MS, &mut b);
            prop_assert_eq!(a, b);
            prop_assert!(w.is_empty());
            prop_assert_eq!(w.next_deadline(), None);
        }
    }

    #[test]
    fn same_ms_in_schedule_order_and_reschedule_moves() {
        let mut w = TimerWheel::new(1000, 8);
        w.schedule(3, 1020);
        w.schedule(1, 1020);
        w.schedule(2, 1010);
        w.schedule(0, 1020);
        assert_eq!(w.len(), 4);
        assert_eq!(w.next_deadline(), Some(1010));
        w.schedule(2, 1030); // moves, does not duplicate
        assert_eq!(w.len(), 4);
        assert_eq!(w.deadline(2), Some(1030));
        assert_eq!(w.next_deadline(), Some(1020));
        w.schedule(1, 1020); // re-scheduled: now last within 1020
        let mut out = Vec::new();
        w.expire(1019, &mut out);
        assert!(out.is_empty());
        w.expire(1020, &mut out);
        assert_eq!(out, [3, 0, 1]);
        assert!(w.cancel(2));
        assert!(!w.cancel(2));
        assert!(!w.cancel(5));
        assert_eq!(w.next_deadline(), None);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadline_fires_on_next_expire() {
        let mut w = TimerWheel::new(500, 4);
        let mut out = Vec::new();
        w.expire(600, &mut out);
        w.schedule(0, 10);
        assert_eq!(w.next_deadline(), Some(601));
        assert_eq!(w.deadline(0), Some(601));
        w.expire(600, &mut out); // not after the clamp point yet
        assert!(out.is_empty());
        w.expire(601, &mut out);
        assert_eq!(out, [0]);
    }

    #[test]
    fn far_future_crosses_from_overflow_in_order() {
        let mut w = TimerWheel::new(0, 8);
        w.schedule(0, 10_000); // overflow
        w.schedule(1, 200); // overflow
        w.schedule(2, 5); // ring
        assert_eq!(w.next_deadline(), Some(5));
        let mut out = Vec::new();
        w.expire(9_950, &mut out);
        assert_eq!(out, [2, 1]);
        // key 0 is in the ring by now; a later key at the same ms comes after it.
        w.schedule(3, 10_000);
        assert_eq!(w.next_deadline(), Some(10_000));
        out.clear();
        w.expire(10_000, &mut out);
        assert_eq!(out, [0, 3]);
    }

    #[test]
    fn five_second_stall_fires_everything_once_in_order() {
        let n = 5_000u32;
        let mut w = TimerWheel::new(0, n as usize);
        // Calls paced every 20 ms with staggered phases, all scheduled for the
        // next few periods and some seconds out.
        for k in 0..n {
            w.schedule(k, u64::from(k % 20) + 20 * u64::from(k % 250));
        }
        let mut out = Vec::with_capacity(n as usize);
        w.expire(5_000, &mut out);
        assert_eq!(out.len(), n as usize);
        let ts: Vec<u64> = out
            .iter()
            .map(|&k| u64::from(k % 20) + 20 * u64::from(k % 250))
            .collect();
        assert!(ts.windows(2).all(|p| p[0] <= p[1]));
        let mut seen = vec![false; n as usize];
        for &k in &out {
            assert!(!seen[k as usize]);
            seen[k as usize] = true;
        }
        assert!(w.is_empty());
        // Nothing fires twice.
        out.clear();
        w.expire(10_000, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn huge_jump_is_cheap_and_exact() {
        let mut w = TimerWheel::new(0, 4);
        w.schedule(0, 1 << 40);
        w.schedule(1, (1 << 40) + 3);
        w.schedule(2, 1 << 50);
        let mut out = Vec::new();
        w.expire((1 << 40) + 3, &mut out);
        assert_eq!(out, [0, 1]);
        assert_eq!(w.next_deadline(), Some(1 << 50));
        w.schedule(3, u64::MAX);
        assert_eq!(w.deadline(3), Some(MAX_TIME_MS));
        out.clear();
        w.expire(u64::MAX, &mut out);
        assert_eq!(out, [2, 3]);
    }

    #[test]
    fn time_going_backwards_fires_nothing() {
        let mut w = TimerWheel::new(1_000, 2);
        w.schedule(0, 1_005);
        let mut out = Vec::new();
        w.expire(10, &mut out);
        assert!(out.is_empty());
        assert_eq!(w.next_deadline(), Some(1_005));
    }

    #[test]
    fn steady_state_pacing_does_not_grow_anything() {
        let n = 2_000usize;
        let mut w = TimerWheel::new(0, n);
        for k in 0..n as u32 {
            w.schedule(k, u64::from(k % 20) + 1);
        }
        let heap_cap = w.heap.capacity();
        let mut out = Vec::with_capacity(n);
        let out_cap = out.capacity();
        let mut fired = 0usize;
        for now in 1..=10_000u64 {
            out.clear();
            w.expire(now, &mut out);
            for &k in &out {
                assert_eq!(u64::from(k % 20), (now - 1) % 20);
                w.schedule(k, now + 20); // WakeAt(next frame)
            }
            fired += out.len();
            assert_eq!(w.next_deadline(), Some(now + 1));
        }
        assert_eq!(fired, n * 500);
        assert_eq!(out.capacity(), out_cap);
        assert_eq!(w.heap.capacity(), heap_cap);
        assert_eq!(w.len(), n);
    }
}
