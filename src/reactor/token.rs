//! Generation-checked handles: the link from a `mio::Token` back to a dispatcher.
//!
//! A [`Slab`](slab::Slab) reuses its keys as soon as an entry is removed. If a socket is closed and
//! a new connection lands in the same slot while an event for the old socket is still in the
//! events buffer (or a timer or notification is still queued for it), a bare index would deliver
//! that event to the wrong dispatcher. Every slot therefore carries a generation, assigned from a
//! reactor-wide counter when the slot is filled, and a [`Handle`] is the pair (index, generation).
//! An event, timer or notification whose generation no longer matches its slot is dropped: the
//! counterpart of asyncore's `map.get(fd) is None` check.

use mio::Token;

/// The token used by the reactor's own [`mio::Waker`]. No dispatcher handle ever maps to it.
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);

/// Names one dispatcher in one [`Reactor`](super::Reactor), for as long as it lives.
///
/// Handles are cheap to copy and stay valid (but inert) after the dispatcher is closed: anything
/// addressed to a closed dispatcher is silently dropped, even if its slot has been reused since.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl Handle {
    pub(crate) fn new(index: usize, generation: u32) -> Handle {
        Handle {
            index: u32::try_from(index).expect("more than 2^32 dispatchers"),
            generation,
        }
    }

    /// The slot index. Slots are reused after a dispatcher closes; the generation that tells the
    /// old and the new occupant apart is kept inside the handle.
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// The slab index (the slot) this handle points at.
    pub(crate) fn slot(self) -> usize {
        self.index as usize
    }

    /// The `mio::Token` under which this dispatcher's source is registered.
    pub(crate) fn token(self) -> Token {
        Token(((self.generation as usize) << 32) | self.index as usize)
    }

    /// Recovers a handle from a token; `None` for the waker's token.
    pub(crate) fn from_token(token: Token) -> Option<Handle> {
        if token == WAKER_TOKEN {
            return None;
        }
        Some(Handle {
            index: (token.0 & 0xffff_ffff) as u32,
            generation: (token.0 >> 32) as u32,
        })
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handle({}#{})", self.index, self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_keeps_index_and_generation() {
        for (index, generation) in [(0, 0), (1, 7), (0xffff_fffe, u32::MAX - 1), (42, 1 << 31)] {
            let h = Handle::new(index, generation);
            assert_eq!(Handle::from_token(h.token()), Some(h));
        }
    }

    #[test]
    fn waker_token_is_never_a_handle() {
        assert_eq!(Handle::from_token(WAKER_TOKEN), None);
    }

    #[test]
    fn same_slot_different_generation_differs() {
        assert_ne!(Handle::new(3, 1).token(), Handle::new(3, 2).token());
    }
}
