//! Terminator framing exactly as asynchat does it, as pure functions over a byte slice.

use std::cell::RefCell;
use std::rc::Rc;

use memchr::memmem::Finder;

/// Searchers are shared: a `Finder` is 288 bytes, and nearly every connection of a protocol
/// uses the same one or two terminators, so each thread keeps one searcher per terminator
/// (for the first few distinct terminators it sees) and connections hold an `Rc`.
const SHARED_FINDERS: usize = 16;

thread_local! {
    static FINDERS: RefCell<Vec<(Vec<u8>, Rc<Finder<'static>>)>> = const { RefCell::new(Vec::new()) };
}

fn finder_for(needle: &[u8]) -> Rc<Finder<'static>> {
    FINDERS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((_, finder)) = cache.iter().find(|(n, _)| n == needle) {
            return finder.clone();
        }
        let finder = Rc::new(Finder::new(needle).into_owned());
        if cache.len() < SHARED_FINDERS {
            cache.push((needle.to_vec(), finder.clone()));
        }
        finder
    })
}

/// What ends the current unit of input (`async_chat.set_terminator`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Terminator {
    /// A byte string such as `b"\r\n"` or `b"\r\n.\r\n"`, found with `memchr::memmem`.
    /// A partial terminator at the end of the buffer is held back until more input arrives.
    Bytes(Vec<u8>),
    /// A number of bytes still to collect; when they are in, the terminator becomes
    /// `Count(0)` and `found_terminator` runs. `Count(0)` means the same as `None`, as in asynchat.
    Count(usize),
    /// No terminator: all input is collected as it arrives.
    None,
}

impl Terminator {
    /// A byte-string terminator. An empty string means [`Terminator::None`], as in asynchat.
    pub fn bytes(t: impl Into<Vec<u8>>) -> Terminator {
        let t = t.into();
        if t.is_empty() {
            Terminator::None
        } else {
            Terminator::Bytes(t)
        }
    }
}

/// A terminator with its searcher built once.
pub(crate) struct Framing {
    pub(crate) terminator: Terminator,
    finder: Option<Rc<Finder<'static>>>,
    /// How many leading bytes of a `Bytes` terminator count as already seen just before the
    /// next input byte (see `ChatCtl::set_terminator_primed`).
    primed: usize,
}

impl std::fmt::Debug for Framing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.terminator.fmt(f)
    }
}

/// The outcome of one framing step over a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// `buf[..data]` goes to `collect_incoming_data` (never called with nothing).
    pub(crate) data: usize,
    /// Bytes to drop from the front of the buffer (data plus terminator).
    pub(crate) consumed: usize,
    /// Whether `found_terminator` runs after the data is collected.
    pub(crate) found: bool,
}

impl Framing {
    pub(crate) fn new(terminator: Terminator) -> Framing {
        let finder = match &terminator {
            Terminator::Bytes(t) => Some(finder_for(t)),
            _ => None,
        };
        Framing {
            terminator,
            finder,
            primed: 0,
        }
    }

    pub(crate) fn set(&mut self, terminator: Terminator) {
        self.primed = 0;
        if terminator != self.terminator {
            *self = Framing::new(terminator);
        }
    }

    pub(crate) fn set_primed(&mut self, terminator: Terminator, primed: usize) {
        self.set(terminator);
        if let Terminator::Bytes(t) = &self.terminator {
            self.primed = primed.min(t.len().saturating_sub(1));
        }
    }

    /// The primed case: does the input begin with the rest of the terminator?
    fn step_primed(&mut self, buf: &[u8]) -> Option<Step> {
        let Terminator::Bytes(t) = &self.terminator else {
            return None;
        };
        let rest = &t[self.primed..];
        if buf.len() < rest.len() && rest.starts_with(buf) {
            // Could still complete: wait for more input, collect nothing.
            return Some(Step {
                data: 0,
                consumed: 0,
                found: false,
            });
        }
        self.primed = 0;
        buf.starts_with(rest).then_some(Step {
            data: 0,
            consumed: rest.len(),
            found: true,
        })
    }

    /// One step of asynchat's `handle_read` loop over `buf` (non-empty).
    pub(crate) fn step(&mut self, buf: &[u8]) -> Step {
        if self.primed > 0 {
            if let Some(step) = self.step_primed(buf) {
                return step;
            }
        }
        let len = buf.len();
        match &mut self.terminator {
            Terminator::None | Terminator::Count(0) => Step {
                data: len,
                consumed: len,
                found: false,
            },
            Terminator::Count(n) => {
                if len < *n {
                    *n -= len;
                    Step {
                        data: len,
                        consumed: len,
                        found: false,
                    }
                } else {
                    let data = *n;
                    *n = 0;
                    Step {
                        data,
                        consumed: data,
                        found: true,
                    }
                }
            }
            Terminator::Bytes(t) => {
                let finder = self.finder.as_ref().expect("finder built with terminator");
                match finder.find(buf) {
                    Some(i) => Step {
                        data: i,
                        consumed: i + t.len(),
                        found: true,
                    },
                    None => {
                        let upto = len - prefix_at_end(buf, t);
                        Step {
                            data: upto,
                            consumed: upto,
                            found: false,
                        }
                    }
                }
            }
        }
    }
}

/// The length of the longest proper prefix of `needle` that `haystack` ends with
/// (asynchat's `find_prefix_at_end`).
pub(crate) fn prefix_at_end(haystack: &[u8], needle: &[u8]) -> usize {
    let mut l = needle.len().saturating_sub(1).min(haystack.len());
    while l > 0 && !haystack.ends_with(&needle[..l]) {
        l -= 1;
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_at_end_matches_asynchat() {
        assert_eq!(prefix_at_end(b"qwerty\r", b"\r\n"), 1);
        assert_eq!(prefix_at_end(b"qwertydkjf", b"\r\n"), 0);
        assert_eq!(prefix_at_end(b"abc\r\n.", b"\r\n.\r\n"), 3);
        assert_eq!(prefix_at_end(b"\r\n.\r", b"\r\n.\r\n"), 4);
        assert_eq!(prefix_at_end(b"", b"\r\n"), 0);
        assert_eq!(prefix_at_end(b"\r", b"\r\n.\r\n"), 1);
    }

    #[test]
    fn count_zero_collects_everything_like_none() {
        let mut f = Framing::new(Terminator::Count(0));
        assert_eq!(
            f.step(b"abc"),
            Step {
                data: 3,
                consumed: 3,
                found: false
            }
        );
    }

    #[test]
    fn count_counts_down_across_steps() {
        let mut f = Framing::new(Terminator::Count(5));
        assert!(!f.step(b"abc").found);
        assert_eq!(f.terminator, Terminator::Count(2));
        assert_eq!(
            f.step(b"defg"),
            Step {
                data: 2,
                consumed: 2,
                found: true
            }
        );
        assert_eq!(f.terminator, Terminator::Count(0));
    }

    #[test]
    fn a_primed_terminator_matches_at_the_start_only() {
        let mut f = Framing::new(Terminator::None);
        f.set_primed(Terminator::bytes("\r\n.\r\n"), 2);
        // ".\r" may still become ".\r\n": hold it.
        assert_eq!(
            f.step(b".\r"),
            Step {
                data: 0,
                consumed: 0,
                found: false
            }
        );
        assert_eq!(
            f.step(b".\r\nNEXT"),
            Step {
                data: 0,
                consumed: 3,
                found: true
            }
        );
        // Once anything else arrived, the priming is gone.
        f.set_primed(Terminator::bytes("\r\n.\r\n"), 2);
        assert_eq!(
            f.step(b"..x\r\n.\r\n"),
            Step {
                data: 3,
                consumed: 8,
                found: true
            }
        );
        f.set_primed(Terminator::bytes("\r\n.\r\n"), 2);
        assert!(!f.step(b".x").found);
        assert_eq!(f.primed, 0);
    }

    #[test]
    fn empty_bytes_terminator_is_none() {
        assert_eq!(Terminator::bytes(""), Terminator::None);
    }
}
