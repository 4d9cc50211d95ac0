//! An intrusive least-recently-used list over slab slots, for idle expiry.
//!
//! `touch` and `remove` are O(1) and allocate nothing once the link table has grown to the slab's
//! size; the oldest entry is always at the head.

use std::time::Instant;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    linked: bool,
    last_active: Option<Instant>,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
    linked: false,
    last_active: None,
};

/// Slots ordered by last activity, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    links: Vec<Link>,
    head: Option<u32>,
    tail: Option<u32>,
    len: usize,
}

impl Lru {
    /// Marks `slot` active at `now` and moves it to the tail (newest).
    #[inline(always)]
    pub(crate) fn touch(&mut self, slot: usize, now: Instant) {
        // The most recent entry touched again (a channel written and read in one poll).
        if self.tail == Some(slot as u32) {
            if let Some(link) = self.links.get_mut(slot) {
                link.last_active = Some(now);
                return;
            }
        }
        self.touch_slow(slot, now);
    }

    fn touch_slow(&mut self, slot: usize, now: Instant) {
        if slot >= self.links.len() {
            self.links.resize(slot + 1, UNLINKED);
        }
        if self.links[slot].linked {
            if self.tail == Some(slot as u32) {
                self.links[slot].last_active = Some(now);
                return;
            }
            self.unlink(slot);
        }
        let s = slot as u32;
        self.links[slot] = Link {
            prev: self.tail.unwrap_or(NIL),
            next: NIL,
            linked: true,
            last_active: Some(now),
        };
        match self.tail {
            Some(t) => self.links[t as usize].next = s,
            None => self.head = Some(s),
        }
        self.tail = Some(s);
        self.len += 1;
    }

    /// Removes `slot` from the list, if it is in it.
    pub(crate) fn remove(&mut self, slot: usize) {
        if slot < self.links.len() && self.links[slot].linked {
            self.unlink(slot);
            self.links[slot] = UNLINKED;
        }
    }

    fn unlink(&mut self, slot: usize) {
        let Link { prev, next, .. } = self.links[slot];
        if prev == NIL {
            self.head = if next == NIL { None } else { Some(next) };
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = if prev == NIL { None } else { Some(prev) };
        } else {
            self.links[next as usize].prev = prev;
        }
        self.links[slot].linked = false;
        self.len -= 1;
    }

    /// The least recently active slot and when it was last active.
    pub(crate) fn oldest(&self) -> Option<(usize, Instant)> {
        let h = self.head? as usize;
        self.links[h].last_active.map(|t| (h, t))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn oldest_first_after_touches_and_removals() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut lru = Lru::default();
        lru.touch(3, at(1));
        lru.touch(1, at(2));
        lru.touch(7, at(3));
        assert_eq!(lru.oldest(), Some((3, at(1))));
        lru.touch(3, at(4));
        assert_eq!(lru.oldest(), Some((1, at(2))));
        lru.remove(1);
        assert_eq!(lru.oldest(), Some((7, at(3))));
        lru.remove(7);
        lru.remove(7);
        assert_eq!(lru.oldest(), Some((3, at(4))));
        assert_eq!(lru.len(), 1);
        lru.touch(3, at(5));
        assert_eq!(lru.oldest(), Some((3, at(5))));
        lru.remove(3);
        assert_eq!(lru.oldest(), None);
        assert_eq!(lru.len(), 0);
    }
}
