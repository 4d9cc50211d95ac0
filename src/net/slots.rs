//! Generation-checked slot tables: the one place where "slot + generation" is checked.
//!
//! Two shapes, one rule:
//!
//! * [`Slots`] owns its values. [`insert`](VacantEntry::insert) returns a [`Key`] naming the slot
//!   *and* the slot's generation; removing a value bumps the slot's generation. Every lookup by key
//!   compares the generation, so a key kept after its value was removed is refused (`None`), also
//!   once the slot holds a newer value. The Selector keeps its channels and listeners here.
//! * [`ChannelMap`] is a side table keyed by an existing [`ChannelId`]: a dense vector indexed by
//!   the id's slot, whose every lookup compares the whole stored id. A layer above the Selector
//!   keeps per-channel state here (a server's connections, a client's channel → node map).
//!
//! Neither allocates in steady state: storage grows with the highest slot used and is reused from
//! then on. A generation is a `u32` that wraps: a stale key could name a value again only after its
//! slot was reused 2^32 times.

use slab::Slab;

use super::id::ChannelId;

/// A key of a [`Slots`] table: a slot and the generation of that slot when the value was inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl Key {
    /// The slot this key names (also its value's `mio::Token`).
    pub(crate) fn slot(self) -> usize {
        self.index as usize
    }
}

/// A slab whose keys carry their slot's generation; lookups refuse a stale key.
///
/// Rules:
/// * A key is valid from [`VacantEntry::insert`] until [`remove`](Slots::remove) with it.
/// * [`get`](Slots::get), [`get_mut`](Slots::get_mut), [`contains`](Slots::contains) and
///   [`remove`](Slots::remove) answer `None`/`false` for a stale key, never another value.
/// * A freed slot is reused by the next insert, with its generation one higher (wrapping).
#[derive(Debug)]
pub(crate) struct Slots<T> {
    entries: Slab<T>,
    /// `generations[slot]`: the generation of the slot's value, or of its next value when vacant.
    generations: Vec<u32>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            entries: Slab::new(),
            generations: Vec::new(),
        }
    }
}

/// A vacant slot of a [`Slots`] table, whose key is known before the value is built (to register
/// a socket under the slot's token first).
pub(crate) struct VacantEntry<'a, T> {
    entry: slab::VacantEntry<'a, T>,
    key: Key,
}

impl<T> VacantEntry<'_, T> {
    /// The key the value gets.
    pub(crate) fn key(&self) -> Key {
        self.key
    }

    /// Stores the value; returns its key (the one [`key`](Self::key) named).
    pub(crate) fn insert(self, value: T) -> Key {
        self.entry.insert(value);
        self.key
    }
}

impl<T> Slots<T> {
    /// The next vacant slot, or `None` when the slot index would not fit a `u32` key. Dropping the
    /// entry unused leaves the table unchanged.
    pub(crate) fn vacant_entry(&mut self) -> Option<VacantEntry<'_, T>> {
        let entry = self.entries.vacant_entry();
        let slot = entry.key();
        let index = u32::try_from(slot).ok()?;
        if slot >= self.generations.len() {
            self.generations.resize(slot + 1, 0);
        }
        let key = Key {
            index,
            generation: self.generations[slot],
        };
        Some(VacantEntry { entry, key })
    }

    /// Whether `key` names a value in the table (not stale).
    fn live(&self, key: Key) -> bool {
        self.generations.get(key.slot()) == Some(&key.generation)
    }

    /// The value of `key`; `None` for a stale key.
    pub(crate) fn get(&self, key: Key) -> Option<&T> {
        if self.live(key) {
            self.entries.get(key.slot())
        } else {
            None
        }
    }

    /// The value of `key`; `None` for a stale key.
    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        if self.live(key) {
            self.entries.get_mut(key.slot())
        } else {
            None
        }
    }

    /// Whether `key` names a value in the table.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: Key) -> bool {
        self.get(key).is_some()
    }

    /// The value in `slot` with its key, for a slot number that came without a generation (a
    /// `mio::Token`, an LRU entry). The caller acts on the returned key, not on the slot.
    pub(crate) fn at_slot(&self, slot: usize) -> Option<(Key, &T)> {
        let value = self.entries.get(slot)?;
        let key = Key {
            index: u32::try_from(slot).ok()?,
            generation: self.generations[slot],
        };
        Some((key, value))
    }

    /// Removes and returns the value of `key`, and makes `key` stale; `None` (and no change) for a
    /// stale key.
    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        if !self.live(key) {
            return None;
        }
        let slot = key.slot();
        let value = self.entries.try_remove(slot)?;
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        Some(value)
    }

    /// How many values the table holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no value.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Per-channel state of a layer above the Selector, keyed by [`ChannelId`]: a lookup answers only
/// for the exact id stored, never for another channel that reuses the slot.
///
/// Rules:
/// * [`insert`](ChannelMap::insert) takes the id's slot, displacing whatever the slot held (a
///   stale channel's entry left behind, or the same id's).
/// * [`get`](ChannelMap::get), [`get_mut`](ChannelMap::get_mut), [`contains`](ChannelMap::contains)
///   and [`remove`](ChannelMap::remove) answer `None`/`false` unless the slot holds this very id.
/// * Storage grows to the highest slot inserted and is reused; [`clear`](ChannelMap::clear) keeps
///   it. No operation allocates once the table has grown to the Selector's size.
///
/// ```
/// use mqnet::net::ChannelMap;
/// # use mqnet::net::{Selector, SocketOptions};
/// # let mut sel = Selector::new().unwrap();
/// # let l = sel.listen("127.0.0.1:0".parse().unwrap()).unwrap();
/// # let addr = sel.listener_addr(l).unwrap();
/// let ch = sel.connect(addr, &SocketOptions::default()).unwrap();
/// let mut nodes = ChannelMap::new();
/// nodes.insert(ch, "node-1");
/// assert_eq!(nodes.get(ch), Some(&"node-1"));
/// assert_eq!(nodes.remove(ch), Some("node-1"));
/// assert_eq!(nodes.get(ch), None);
/// ```
#[derive(Debug, Clone)]
pub struct ChannelMap<V> {
    entries: Vec<Option<(ChannelId, V)>>,
    len: usize,
}

impl<V> Default for ChannelMap<V> {
    fn default() -> Self {
        ChannelMap {
            entries: Vec::new(),
            len: 0,
        }
    }
}

impl<V> ChannelMap<V> {
    /// An empty map; it allocates on the first insert.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `value` for `id`; returns the entry it displaced from the id's slot (the same id's,
    /// or that of an older channel of the slot which was never removed).
    pub fn insert(&mut self, id: ChannelId, value: V) -> Option<(ChannelId, V)> {
        let slot = id.slot();
        if slot >= self.entries.len() {
            self.entries.resize_with(slot + 1, || None);
        }
        let old = self.entries[slot].replace((id, value));
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value of `id`; `None` unless `id` itself is stored.
    pub fn get(&self, id: ChannelId) -> Option<&V> {
        match self.entries.get(id.slot()) {
            Some(Some((c, v))) if *c == id => Some(v),
            _ => None,
        }
    }

    /// The value of `id`; `None` unless `id` itself is stored.
    pub fn get_mut(&mut self, id: ChannelId) -> Option<&mut V> {
        match self.entries.get_mut(id.slot()) {
            Some(Some((c, v))) if *c == id => Some(v),
            _ => None,
        }
    }

    /// Whether `id` itself is stored.
    pub fn contains(&self, id: ChannelId) -> bool {
        self.get(id).is_some()
    }

    /// Removes and returns the value of `id`; `None` (and no change) unless `id` itself is stored.
    pub fn remove(&mut self, id: ChannelId) -> Option<V> {
        let entry = self.entries.get_mut(id.slot())?;
        if !matches!(entry, Some((c, _)) if *c == id) {
            return None;
        }
        self.len -= 1;
        entry.take().map(|(_, v)| v)
    }

    /// How many channels have a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no channel has a value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every stored value, mutably, in slot order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().flatten().map(|(_, v)| v)
    }

    /// Removes every entry, keeping the storage.
    pub fn clear(&mut self) {
        for e in &mut self.entries {
            *e = None;
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_key_is_refused_after_remove_and_reuse() {
        let mut t = Slots::default();
        let a = t.vacant_entry().unwrap().insert("a");
        assert_eq!(t.get(a), Some(&"a"));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.get(a), None);
        assert!(!t.contains(a));
        assert_eq!(t.remove(a), None);
        let b = t.vacant_entry().unwrap().insert("b");
        assert_eq!(b.slot(), a.slot(), "the freed slot is reused");
        assert_ne!(b, a);
        assert_eq!(
            t.get(a),
            None,
            "a stale key does not reach the slot's new value"
        );
        assert_eq!(t.get_mut(a), None);
        assert_eq!(t.remove(a), None);
        assert_eq!(
            t.get(b),
            Some(&"b"),
            "a refused stale remove changes nothing"
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.at_slot(b.slot()), Some((b, &"b")));
    }

    #[test]
    fn vacant_entry_names_the_key_insert_returns_and_dropping_it_changes_nothing() {
        let mut t = Slots::default();
        let k = t.vacant_entry().unwrap().key();
        assert_eq!(t.len(), 0);
        let again = t.vacant_entry().unwrap();
        assert_eq!(again.key(), k);
        assert_eq!(again.insert(7), k);
        assert_eq!(t.get(k), Some(&7));
    }

    #[test]
    fn generation_wraps_and_still_refuses_the_previous_key() {
        let mut t = Slots::default();
        let k = t.vacant_entry().unwrap().insert(0u8);
        t.generations[k.slot()] = u32::MAX;
        let _ = t.entries.remove(k.slot());
        let last = t.vacant_entry().unwrap().insert(1u8);
        assert_eq!(last.generation, u32::MAX);
        assert_eq!(t.remove(last), Some(1));
        let wrapped = t.vacant_entry().unwrap().insert(2u8);
        assert_eq!(wrapped.generation, 0);
        assert_eq!(t.get(last), None);
        assert_eq!(t.get(wrapped), Some(&2));
    }

    #[test]
    fn capacity_is_reused_without_growing() {
        let mut t = Slots::default();
        let keys: Vec<Key> = (0..64)
            .map(|i| t.vacant_entry().unwrap().insert(i))
            .collect();
        let (cap, gens) = (t.entries.capacity(), t.generations.capacity());
        for round in 0..100u32 {
            for k in t_keys(&t) {
                assert!(t.remove(k).is_some());
            }
            for i in 0..64 {
                let k = t.vacant_entry().unwrap().insert(i);
                assert!(k.slot() < 64);
                assert_eq!(k.generation, round + 1);
            }
        }
        assert_eq!(t.entries.capacity(), cap);
        assert_eq!(t.generations.capacity(), gens);
        assert!(keys.iter().all(|k| t.get(*k).is_none()));
    }

    fn t_keys<T>(t: &Slots<T>) -> Vec<Key> {
        (0..t.generations.len())
            .filter_map(|s| t.at_slot(s).map(|(k, _)| k))
            .collect()
    }

    fn ch(index: u32, generation: u32) -> ChannelId {
        ChannelId { index, generation }
    }

    #[test]
    fn channel_map_answers_only_for_the_stored_id() {
        let mut m = ChannelMap::new();
        assert!(m.is_empty());
        assert_eq!(m.insert(ch(3, 0), 'a'), None);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(ch(3, 0)), Some(&'a'));
        assert_eq!(m.get(ch(3, 1)), None, "same slot, other generation");
        assert_eq!(m.get(ch(2, 0)), None);
        assert_eq!(m.get(ch(99, 0)), None, "beyond the storage");
        assert_eq!(m.remove(ch(3, 1)), None);
        assert_eq!(m.len(), 1, "a refused remove changes nothing");
        // A newer channel of the slot displaces a stale entry left behind.
        assert_eq!(m.insert(ch(3, 1), 'b'), Some((ch(3, 0), 'a')));
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(ch(3, 0)), None);
        *m.get_mut(ch(3, 1)).unwrap() = 'c';
        assert!(m.contains(ch(3, 1)));
        assert_eq!(m.remove(ch(3, 1)), Some('c'));
        assert!(m.is_empty());
        assert_eq!(m.remove(ch(3, 1)), None);
    }

    #[test]
    fn channel_map_clear_keeps_storage() {
        let mut m = ChannelMap::new();
        for i in 0..16 {
            m.insert(ch(i, 0), i);
        }
        let cap = m.entries.capacity();
        for v in m.values_mut() {
            *v += 1;
        }
        assert_eq!(m.get(ch(5, 0)), Some(&6));
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m.get(ch(5, 0)), None);
        for i in 0..16 {
            m.insert(ch(i, 1), i);
        }
        assert_eq!(m.entries.capacity(), cap);
        assert_eq!(m.len(), 16);
    }
}
