//! One-shot timers in a deadline heap with lazy rescheduling.
//!
//! SMTP servers push an idle deadline back on every command. Doing a heap operation each time
//! would churn; instead each timer keeps its *wanted* deadline in a slab entry and the heap holds
//! at most one *scheduled* entry per timer. Pushing the deadline later only writes the entry;
//! when the scheduled heap entry comes due and the wanted deadline lies further on, the timer is
//! rescheduled once. Pulling a deadline earlier pushes a new heap entry and the older one becomes
//! stale (recognised because its deadline no longer equals the entry's scheduled one).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use slab::Slab;

use super::token::Handle;

/// Names one timer; handed to [`Dispatcher::on_timer`](super::Dispatcher::on_timer) when it fires.
///
/// Ids are generation-checked like [`Handle`]s: cancelling or resetting a timer that already fired
/// or was cancelled is a harmless no-op, even if its slot has been reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

struct Entry {
    owner: Handle,
    generation: u32,
    /// When the owner wants the timer to fire.
    wanted: Instant,
    /// The deadline of the one heap entry that is not stale.
    scheduled: Instant,
}

/// The timer wheel of one reactor (a binary heap, despite the name of the concept).
#[derive(Default)]
pub(crate) struct Timers {
    entries: Slab<Entry>,
    heap: BinaryHeap<Reverse<(Instant, u32)>>,
    next_generation: u32,
}

impl Timers {
    pub(crate) fn insert(&mut self, owner: Handle, deadline: Instant) -> TimerId {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let index = self.entries.insert(Entry {
            owner,
            generation,
            wanted: deadline,
            scheduled: deadline,
        });
        let index = u32::try_from(index).expect("more than 2^32 timers");
        self.heap.push(Reverse((deadline, index)));
        TimerId { index, generation }
    }

    fn entry_mut(&mut self, id: TimerId) -> Option<&mut Entry> {
        self.entries
            .get_mut(id.index as usize)
            .filter(|e| e.generation == id.generation)
    }

    /// Moves a live timer to a new deadline. Returns false if it already fired or was cancelled.
    pub(crate) fn reset(&mut self, id: TimerId, deadline: Instant) -> bool {
        let Some(entry) = self.entry_mut(id) else {
            return false;
        };
        entry.wanted = deadline;
        if deadline < entry.scheduled {
            entry.scheduled = deadline;
            self.heap.push(Reverse((deadline, id.index)));
        }
        true
    }

    /// Cancels a timer. Returns false if it already fired or was cancelled.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        if self.entry_mut(id).is_some() {
            self.entries.remove(id.index as usize);
            true
        } else {
            false
        }
    }

    /// The deadline of a live timer.
    pub(crate) fn deadline(&self, id: TimerId) -> Option<Instant> {
        self.entries
            .get(id.index as usize)
            .filter(|e| e.generation == id.generation)
            .map(|e| e.wanted)
    }

    /// The earliest moment at which [`Timers::take_due`] may have something to return.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, index))) = self.heap.peek() {
            match self.entries.get(index as usize) {
                Some(e) if e.scheduled == deadline => return Some(deadline),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Removes every timer due at `now` and appends `(owner, id)` pairs to `due`, in deadline
    /// order. Timers inserted afterwards, even with a deadline of `now`, wait for the next call.
    pub(crate) fn take_due(&mut self, now: Instant, due: &mut Vec<(Handle, TimerId)>) {
        while let Some(&Reverse((deadline, index))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            let Some(entry) = self.entries.get_mut(index as usize) else {
                continue;
            };
            if entry.scheduled != deadline {
                continue; // a stale heap entry: the timer was pulled earlier or re-armed
            }
            if entry.wanted > now {
                entry.scheduled = entry.wanted;
                self.heap.push(Reverse((entry.wanted, index)));
                continue;
            }
            let id = TimerId {
                index,
                generation: entry.generation,
            };
            due.push((entry.owner, id));
            self.entries.remove(index as usize);
        }
    }

    /// The deadline at the top of the heap; may be a stale entry's (then early, never late).
    pub(crate) fn peek_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    /// Drops stale entries from the top of the heap, so `peek_deadline` is exact.
    pub(crate) fn prune(&mut self) {
        self.next_deadline();
    }

    /// Number of live timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Number of heap entries, live or stale (to test that resets do not churn).
    #[cfg(test)]
    pub(crate) fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn fires_in_deadline_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let owner = Handle::new(1, 1);
        let b = t.insert(owner, t0 + ms(20));
        let a = t.insert(owner, t0 + ms(10));
        let mut due = Vec::new();
        t.take_due(t0 + ms(5), &mut due);
        assert!(due.is_empty());
        t.take_due(t0 + ms(30), &mut due);
        assert_eq!(due, vec![(owner, a), (owner, b)]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn pushing_back_a_deadline_does_not_grow_the_heap() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let id = t.insert(Handle::new(0, 1), t0 + ms(100));
        for i in 1..1000 {
            assert!(t.reset(id, t0 + ms(100 + i)));
        }
        assert_eq!(t.heap_len(), 1);
        let mut due = Vec::new();
        // The first scheduled entry comes due, sees the later wanted deadline, reschedules once.
        t.take_due(t0 + ms(150), &mut due);
        assert!(due.is_empty());
        assert_eq!(t.heap_len(), 1);
        assert_eq!(t.next_deadline(), Some(t0 + ms(1099)));
        t.take_due(t0 + ms(1099), &mut due);
        assert_eq!(due.len(), 1);
    }

    #[test]
    fn pulling_a_deadline_earlier_fires_once() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let id = t.insert(Handle::new(0, 1), t0 + ms(100));
        t.reset(id, t0 + ms(10));
        assert_eq!(t.next_deadline(), Some(t0 + ms(10)));
        let mut due = Vec::new();
        t.take_due(t0 + ms(200), &mut due);
        assert_eq!(due.len(), 1, "the stale heap entry must not fire again");
    }

    #[test]
    fn cancelled_and_fired_ids_are_inert_after_slot_reuse() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let old = t.insert(Handle::new(0, 1), t0 + ms(10));
        assert!(t.cancel(old));
        let new = t.insert(Handle::new(0, 1), t0 + ms(10));
        assert!(!t.cancel(old), "stale id must not cancel the new timer");
        assert!(!t.reset(old, t0));
        assert_eq!(t.deadline(new), Some(t0 + ms(10)));
        assert_eq!(t.next_deadline(), Some(t0 + ms(10)));
    }
}
