//! Generation-tagged handles for channels and listeners.
//!
//! A handle names a slot in the Selector's slab *and* the generation of that slot. When a channel is
//! closed its slot is freed and its generation bumped, so a stale handle kept by a caller can never be
//! mistaken for the channel that reuses the slot: every Selector call with a stale handle answers
//! "unknown channel" instead of acting on somebody else's connection.

use std::fmt;

use super::slots::Key;

/// Converts a handle to and from its [`Key`] in the Selector's slot table (same slot, same
/// generation).
macro_rules! slot_key {
    ($t:ident) => {
        impl $t {
            pub(crate) fn key(self) -> Key {
                Key {
                    index: self.index,
                    generation: self.generation,
                }
            }
        }

        impl From<Key> for $t {
            fn from(k: Key) -> Self {
                $t {
                    index: k.index,
                    generation: k.generation,
                }
            }
        }
    };
}

/// Identifies one channel (one TCP connection) of a [`Selector`](super::Selector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl ChannelId {
    /// The slab slot this channel lives in. Slots are reused; compare whole ids, not slots.
    pub fn slot(self) -> usize {
        self.index as usize
    }

    /// The generation of the slot when this channel was created.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ch{}.{}", self.index, self.generation)
    }
}

/// Identifies one listening socket of a [`Selector`](super::Selector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ln{}.{}", self.index, self.generation)
    }
}

slot_key!(ChannelId);
slot_key!(ListenerId);
