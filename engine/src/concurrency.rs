//! Concurrency slots: at most N calls of a function (per key) executing at once.
//!
//! The scheduler is the only process that hands calls to the queue (one holds its
//! lease at a time), so it is also the one place that counts them. A call takes a slot
//! of every limit of its function when it is queued and gives them back when it is no
//! longer due (its answer was recorded, or the run ended); sleeping, waiting for an
//! event and backing off between attempts hold no slot. A call that finds a limit
//! full waits in that limit's line, ordered by when it became due less its priority.
//!
//! The slots are not stored: the log says which due calls were held back
//! (`run.call_held` without a later `run.call_released`), so a scheduler taking over
//! lines up the held ones again and gives slots to the others in line order (they
//! were queued, and most are executing).

use std::collections::{BTreeSet, HashMap, HashSet};

use flowforge_domain::run::CallTarget;
use uuid::Uuid;

/// One limit's counter: the scope it counts in, the limit's place in the function's
/// list, and the key evaluated for the run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// `<tenant>:<env>:fn:<function>:<index>`, `<tenant>:<env>:env` or `<tenant>:account`.
    pub scope: String,
    pub key: String,
}

/// One call of one run, as long as it is due with this token.
pub type CallId = (Uuid, CallTarget, u64);

/// A limit a call needs a slot of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub slot: SlotKey,
    pub limit: u32,
}

/// Place in a line: (when due less priority, tie-breaker), then the call.
type Place = ((i64, u64), CallId);

#[derive(Debug)]
struct Waiter {
    needs: Vec<Need>,
    order: (i64, u64),
    /// The limit whose line it stands in.
    blocked_on: SlotKey,
}

#[derive(Debug, Default)]
pub struct Slots {
    taken: HashMap<SlotKey, HashSet<CallId>>,
    holding: HashMap<CallId, Vec<SlotKey>>,
    lines: HashMap<SlotKey, BTreeSet<Place>>,
    waiting: HashMap<CallId, Waiter>,
    sequence: u64,
}

impl Slots {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the call holds its slots or stands in a line.
    pub fn knows(&self, call: &CallId) -> bool {
        self.holding.contains_key(call) || self.waiting.contains_key(call)
    }

    pub fn in_use(&self, slot: &SlotKey) -> usize {
        self.taken.get(slot).map_or(0, HashSet::len)
    }

    /// How many calls wait ahead of `call` in its line.
    pub fn ahead_of(&self, call: &CallId) -> Option<usize> {
        let waiter = self.waiting.get(call)?;
        let line = self.lines.get(&waiter.blocked_on)?;
        Some(line.range(..(waiter.order, call.clone())).count())
    }

    /// The first limit of `needs` that is full, if any.
    fn full<'a>(&self, needs: &'a [Need]) -> Option<&'a Need> {
        needs
            .iter()
            .find(|need| self.in_use(&need.slot) >= need.limit as usize)
    }

    fn take(&mut self, call: CallId, needs: &[Need]) {
        for need in needs {
            self.taken
                .entry(need.slot.clone())
                .or_default()
                .insert(call.clone());
        }
        self.holding
            .insert(call, needs.iter().map(|n| n.slot.clone()).collect());
    }

    /// Takes a slot of every limit in `needs`, or lines the call up behind the first
    /// full one. `order` is when it became due (ms) less its priority: earlier goes
    /// first. Returns the limit it waits for, if it waits.
    pub fn acquire(&mut self, call: CallId, needs: Vec<Need>, order: i64) -> Option<Need> {
        if self.knows(&call) {
            return None;
        }
        match self.full(&needs).cloned() {
            None => {
                self.take(call, &needs);
                None
            }
            Some(full) => {
                self.sequence += 1;
                let order = (order, self.sequence);
                self.line_up(call, needs, order, full.slot.clone());
                Some(full)
            }
        }
    }

    /// A call recorded as held back: it lines up again, in its recorded order.
    pub fn line_up_held(&mut self, call: CallId, needs: Vec<Need>, order: i64) {
        if self.knows(&call) {
            return;
        }
        self.sequence += 1;
        let order = (order, self.sequence);
        let blocked_on = self
            .full(&needs)
            .map_or_else(|| needs[0].slot.clone(), |n| n.slot.clone());
        self.line_up(call, needs, order, blocked_on);
    }

    fn line_up(&mut self, call: CallId, needs: Vec<Need>, order: (i64, u64), on: SlotKey) {
        self.lines
            .entry(on.clone())
            .or_default()
            .insert((order, call.clone()));
        self.waiting.insert(
            call,
            Waiter {
                needs,
                order,
                blocked_on: on,
            },
        );
    }

    /// The call is no longer due: its slots (or its place in a line) are given back.
    /// Returns the waiting calls that now hold their slots, first in line first.
    pub fn release(&mut self, call: &CallId) -> Vec<CallId> {
        let mut freed = Vec::new();
        if let Some(slots) = self.holding.remove(call) {
            for slot in slots {
                if let Some(taken) = self.taken.get_mut(&slot) {
                    taken.remove(call);
                    if taken.is_empty() {
                        self.taken.remove(&slot);
                    }
                }
                freed.push(slot);
            }
        }
        if let Some(waiter) = self.waiting.remove(call) {
            self.remove_from_line(&waiter.blocked_on, &(waiter.order, call.clone()));
            // A waiter at the head of a line may now be first of a limit with room.
            freed.push(waiter.blocked_on);
        }
        self.admit(freed)
    }

    fn remove_from_line(&mut self, slot: &SlotKey, entry: &Place) {
        if let Some(line) = self.lines.get_mut(slot) {
            line.remove(entry);
            if line.is_empty() {
                self.lines.remove(slot);
            }
        }
    }

    /// Lets through every waiter that has room (after a scheduler took over and lined
    /// up the calls recorded as held).
    pub fn admit_all(&mut self) -> Vec<CallId> {
        let lines = self.lines.keys().cloned().collect();
        self.admit(lines)
    }

    /// Lets waiters of the freed limits through, in order, while there is room.
    fn admit(&mut self, mut freed: Vec<SlotKey>) -> Vec<CallId> {
        let mut admitted = Vec::new();
        while let Some(slot) = freed.pop() {
            while let Some(first) = self.lines.get(&slot).and_then(|l| l.first().cloned()) {
                let Some(waiter) = self.waiting.get(&first.1) else {
                    self.remove_from_line(&slot, &first);
                    continue;
                };
                match self.full(&waiter.needs).map(|n| n.slot.clone()) {
                    None => {
                        self.remove_from_line(&slot, &first);
                        if let Some(waiter) = self.waiting.remove(&first.1) {
                            self.take(first.1.clone(), &waiter.needs);
                        }
                        admitted.push(first.1);
                    }
                    // Still full here: the line waits.
                    Some(full) if full == slot => break,
                    // Full on another limit: it moves to that line and this one goes on.
                    Some(other) => {
                        self.remove_from_line(&slot, &first);
                        if let Some(waiter) = self.waiting.get_mut(&first.1) {
                            waiter.blocked_on = other.clone();
                            let order = waiter.order;
                            self.lines
                                .entry(other.clone())
                                .or_default()
                                .insert((order, first.1.clone()));
                        }
                        // The other line may have room for someone else already.
                        freed.push(other);
                    }
                }
            }
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(n: u128) -> CallId {
        (Uuid::from_u128(n), CallTarget::Discovery, 1)
    }

    fn need(scope: &str, key: &str, limit: u32) -> Need {
        Need {
            slot: SlotKey {
                scope: scope.into(),
                key: key.into(),
            },
            limit,
        }
    }

    #[test]
    fn calls_beyond_the_limit_wait_and_go_in_order_as_slots_free() {
        let mut slots = Slots::new();
        for n in 0..2 {
            assert_eq!(
                slots.acquire(call(n), vec![need("f", "", 2)], n as i64),
                None
            );
        }
        for n in 2..5 {
            assert_eq!(
                slots.acquire(call(n), vec![need("f", "", 2)], n as i64),
                Some(need("f", "", 2))
            );
        }
        assert_eq!(slots.ahead_of(&call(4)), Some(2));
        assert_eq!(slots.release(&call(0)), vec![call(2)]);
        assert_eq!(slots.release(&call(1)), vec![call(3)]);
        assert_eq!(slots.in_use(&need("f", "", 2).slot), 2);
        assert_eq!(slots.ahead_of(&call(4)), Some(0));
    }

    #[test]
    fn priority_goes_ahead_of_earlier_calls() {
        let mut slots = Slots::new();
        slots.acquire(call(0), vec![need("f", "", 1)], 0);
        slots.acquire(call(1), vec![need("f", "", 1)], 100);
        slots.acquire(call(2), vec![need("f", "", 1)], 50);
        assert_eq!(slots.release(&call(0)), vec![call(2)]);
    }

    #[test]
    fn keys_count_apart() {
        let mut slots = Slots::new();
        assert_eq!(slots.acquire(call(0), vec![need("f", "a", 1)], 0), None);
        assert_eq!(slots.acquire(call(1), vec![need("f", "b", 1)], 1), None);
        assert!(slots.acquire(call(2), vec![need("f", "a", 1)], 2).is_some());
        assert_eq!(slots.release(&call(1)), Vec::<CallId>::new());
        assert_eq!(slots.release(&call(0)), vec![call(2)]);
    }

    #[test]
    fn a_call_needs_room_in_every_limit() {
        let mut slots = Slots::new();
        let both = |key| vec![need("fn", "", 2), need("key", key, 1)];
        assert_eq!(slots.acquire(call(0), both("a"), 0), None);
        // Key `a` is full although the function has room.
        assert_eq!(
            slots.acquire(call(1), both("a"), 1),
            Some(need("key", "a", 1))
        );
        assert_eq!(slots.acquire(call(2), both("b"), 2), None);
        // The function is full now.
        assert_eq!(
            slots.acquire(call(3), both("c"), 3),
            Some(need("fn", "", 2))
        );
        // Freeing `b` lets `c` through (the function has room), not `a`'s waiter.
        assert_eq!(slots.release(&call(2)), vec![call(3)]);
        // Freeing `a` frees a place of the function too: `a`'s waiter goes.
        assert_eq!(slots.release(&call(0)), vec![call(1)]);
        assert_eq!(slots.in_use(&need("fn", "", 2).slot), 2);
    }

    #[test]
    fn a_waiter_moved_to_another_line_goes_when_that_one_frees() {
        let mut slots = Slots::new();
        let both = |key| vec![need("fn", "", 1), need("key", key, 1)];
        assert_eq!(slots.acquire(call(0), both("a"), 0), None);
        assert!(slots.acquire(call(1), both("a"), 1).is_some());
        // Releasing `a` frees both limits: the waiter gets both.
        assert_eq!(slots.release(&call(0)), vec![call(1)]);
        assert!(slots.acquire(call(2), both("b"), 2).is_some());
        assert_eq!(slots.release(&call(1)), vec![call(2)]);
    }

    #[test]
    fn a_waiter_that_is_no_longer_due_leaves_its_line() {
        let mut slots = Slots::new();
        slots.acquire(call(0), vec![need("f", "", 1)], 0);
        slots.acquire(call(1), vec![need("f", "", 1)], 1);
        slots.acquire(call(2), vec![need("f", "", 1)], 2);
        assert_eq!(slots.release(&call(1)), Vec::<CallId>::new());
        assert!(!slots.knows(&call(1)));
        assert_eq!(slots.release(&call(0)), vec![call(2)]);
    }

    #[test]
    fn calls_recorded_as_held_line_up_again_and_go_when_there_is_room() {
        let mut slots = Slots::new();
        slots.acquire(call(0), vec![need("f", "", 2)], 0);
        slots.line_up_held(call(8), vec![need("f", "", 2)], 8);
        slots.line_up_held(call(9), vec![need("f", "", 2)], 9);
        assert_eq!(slots.admit_all(), vec![call(8)]);
        assert_eq!(slots.release(&call(0)), vec![call(9)]);
    }
}
