//! The byte-level receiver: all SMTP framing, over a [`Session`].
//!
//! h11's model: bytes go in ([`Receiver::receive`]), what must happen comes out (the
//! session's [`Output`]s), and the receiver says how many bytes it took — it stops taking
//! input while a request waits for its decision, so pipelined commands wait, unframed, with
//! the caller. Framing rules, one place for the whole crate:
//! - a command line ends at the first CRLF (a bare CR or LF stays in the line, which the
//!   session then refuses with `500`);
//! - a body ends at the first `CRLF.CRLF`, where the CRLF that ended the `DATA` line counts
//!   as the first two bytes (so `DATA` CRLF `.` CRLF is an empty message);
//! - a unit longer than [`Session::input_limit`] is discarded as it arrives, then answered;
//! - message data is counted against a [`MemoryBudget`]; a body that does not fit is
//!   discarded as it arrives and answered `452 4.3.1`.
//!
//! A complete unit found in one piece of input is handed to the session straight from the
//! caller's buffer; only units split across reads are copied.

use std::fmt;

use memchr::memmem::Finder;

use super::session::{Decision, Framing, Output, Session, UsageError};
use super::{EnhancedCode, Reply};

/// The end of a message body.
const END_OF_DATA: &[u8] = b"\r\n.\r\n";

fn end_of_data() -> &'static Finder<'static> {
    static FINDER: std::sync::OnceLock<Finder<'static>> = std::sync::OnceLock::new();
    FINDER.get_or_init(|| Finder::new(END_OF_DATA))
}

/// Where the bytes of message data a receiver holds are counted, so that all connections of
/// a server together stay within a limit (`ServerOptions::data_memory_limit`).
pub trait MemoryBudget {
    /// Asks for `bytes` more; false refuses (the message being received is then discarded).
    fn try_reserve(&mut self, bytes: usize) -> bool;
    /// Gives back `bytes` reserved earlier.
    fn release(&mut self, bytes: usize);
}

/// Why the rest of the current unit is being discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Discard {
    /// Longer than the session's input limit.
    Oversize,
    /// Message data beyond the memory budget.
    OverBudget,
}

/// The framing position in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// In a command line; `cr`: its last byte so far was a CR, held back (it may begin the
    /// CRLF).
    Line { cr: bool },
    /// In a body; `matched` bytes of `CRLF.CRLF` were seen at its end and are held back, of
    /// which the first `virtual_` (0 or 2: the `DATA` line's CRLF) were never body bytes.
    Data { matched: usize, virtual_: usize },
}

/// An SMTP server connection's input side: framing and limits over a [`Session`].
///
/// ```
/// use std::sync::Arc;
/// use smtpd::smtp::{Config, Decision, Output, Receiver, Request, Session};
/// let session = Session::new(Arc::new(Config::default()), "192.0.2.1:25".parse().unwrap());
/// let mut rx = Receiver::new(session);
/// let mut out = Vec::new();
/// rx.start(&mut out);
/// let input = b"HELO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n";
/// let used = rx.receive(input, &mut out);
/// // It stops at the message, which waits for a decision; QUIT waits with the caller.
/// assert_eq!(&input[used..], b"QUIT\r\n");
/// assert!(matches!(out.last(), Some(Output::Decide(Request::Message(m))) if m.data == b"hi"));
/// rx.resolve(Decision::Default, &mut out).unwrap(); // 250 OK
/// rx.receive(&input[used..], &mut out);
/// assert!(rx.session().is_closed());
/// ```
pub struct Receiver {
    session: Session,
    position: Position,
    /// The unit collected so far, when it arrived in more than one piece.
    unit: Vec<u8>,
    discard: Option<Discard>,
    /// Bytes of `unit`'s capacity counted in the caller's [`MemoryBudget`].
    reserved: usize,
}

/// No limit: the budget of [`Receiver::receive`].
struct Unlimited;

impl MemoryBudget for Unlimited {
    fn try_reserve(&mut self, _bytes: usize) -> bool {
        true
    }
    fn release(&mut self, _bytes: usize) {}
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("session", &self.session)
            .field("position", &self.position)
            .field("unit", &self.unit.len())
            .field("discard", &self.discard)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver over `session` (not started yet), without a memory budget.
    pub fn new(session: Session) -> Receiver {
        Receiver {
            session,
            position: Position::Line { cr: false },
            unit: Vec::new(),
            discard: None,
            reserved: 0,
        }
    }

    /// Bytes reserved in the caller's budget for the message being received (given back
    /// when it ends). A caller that drops the receiver mid-message gives them back itself.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    /// The session (state, envelope, HELO name).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Starts the session: the greeting, or a [`Request::Connect`](super::Request::Connect).
    pub fn start(&mut self, out: &mut Vec<Output>) {
        self.session.start(out);
    }

    /// Answers the pending request ([`Output::Decide`]); after it, call
    /// [`receive`](Self::receive) again with the input it did not take.
    ///
    /// # Errors
    /// [`UsageError::NothingToResolve`] when no request is pending.
    pub fn resolve(&mut self, decision: Decision, out: &mut Vec<Output>) -> Result<(), UsageError> {
        self.session.resolve(decision, out)?;
        self.sync_position();
        Ok(())
    }

    /// Whether the receiver takes input now: false while a request waits for its decision
    /// and after the session closed.
    pub fn wants_input(&self) -> bool {
        !self.session.is_waiting() && !self.session.is_closed() && !self.session.is_handshaking()
    }

    /// The TLS handshake after [`Output::StartTls`] (or at accept, on an implicit-TLS
    /// listener) finished: as [`Session::tls_established`], and framing starts afresh.
    pub fn tls_established(&mut self, info: super::TlsInfo) {
        self.session.tls_established(info);
        self.position = Position::Line { cr: false };
        self.unit = Vec::new();
        self.discard = None;
    }

    /// Whether the input being received is message data (after `354`).
    pub fn in_data(&self) -> bool {
        matches!(self.position, Position::Data { .. })
    }

    /// Bytes of an incomplete unit held (for memory checks).
    pub fn buffered(&self) -> usize {
        self.unit.len()
    }

    /// Frames `data`, feeds the session, and appends its outputs to `out`. Returns how many
    /// bytes of `data` were taken: all of them, unless a request is waiting for its decision
    /// ([`Output::Decide`]) or the session closed — the rest must then be offered again
    /// after [`resolve`](Self::resolve) (or dropped after a close).
    pub fn receive(&mut self, data: &[u8], out: &mut Vec<Output>) -> usize {
        self.receive_within(data, &mut Unlimited, out)
    }

    /// As [`receive`](Self::receive), holding message data only as far as `budget` grants
    /// it: a message that does not fit is discarded as it arrives and answered
    /// `452 4.3.1 Insufficient system storage`. What a finished message held is given back
    /// to `budget`.
    pub fn receive_within(
        &mut self,
        data: &[u8],
        budget: &mut dyn MemoryBudget,
        out: &mut Vec<Output>,
    ) -> usize {
        let mut used = 0;
        while used < data.len() && self.wants_input() {
            let rest = &data[used..];
            used += match self.position {
                Position::Line { .. } => self.line(rest, budget, out),
                Position::Data { .. } => self.body(rest, budget, out),
            };
            self.sync_position();
        }
        if self.session.is_handshaking() && used < data.len() {
            // RFC 3207 (the CVE-2011-0411 class): input pipelined after STARTTLS came in
            // plaintext and is never executed.
            log::info!(
                "{}: discarded {} bytes pipelined after STARTTLS",
                self.session.peer(),
                data.len() - used
            );
            used = data.len();
        }
        used
    }

    /// Follows the session into and out of DATA.
    fn sync_position(&mut self) {
        match (self.position, self.session.framing()) {
            (Position::Line { .. }, Framing::Data) => {
                // The CRLF that ended the DATA line is the first half of the end marker.
                self.position = Position::Data {
                    matched: 2,
                    virtual_: 2,
                };
            }
            (Position::Data { .. }, Framing::Line) => {
                self.position = Position::Line { cr: false };
            }
            _ => {}
        }
    }

    /// Adds bytes to the current unit, or starts discarding it when they do not fit.
    fn collect(&mut self, bytes: &[u8], budget: &mut dyn MemoryBudget) {
        if bytes.is_empty() || self.discard.is_some() {
            return;
        }
        if let Some(limit) = self.session.input_limit() {
            if self.unit.len() + bytes.len() > limit {
                self.start_discard(Discard::Oversize, budget);
                return;
            }
        }
        if self.in_data() && !self.reserve(bytes.len(), budget) {
            log::warn!(
                "{}: message data memory limit reached; discarding this message",
                self.session.peer()
            );
            self.start_discard(Discard::OverBudget, budget);
            return;
        }
        self.unit.extend_from_slice(bytes);
    }

    fn start_discard(&mut self, why: Discard, budget: &mut dyn MemoryBudget) {
        self.discard = Some(why);
        self.unit = Vec::new();
        self.release_all(budget);
    }

    fn release_all(&mut self, budget: &mut dyn MemoryBudget) {
        let reserved = std::mem::take(&mut self.reserved);
        if reserved > 0 {
            budget.release(reserved);
        }
    }

    /// Makes room for `n` more bytes of message data in `unit`, within the budget; false
    /// when there is none.
    fn reserve(&mut self, n: usize, budget: &mut dyn MemoryBudget) -> bool {
        let needed = self.unit.len() + n;
        let cap = self.unit.capacity();
        if needed <= cap {
            return true;
        }
        // Grow geometrically, but never past the message size limit, nor past the budget when
        // the exact size still fits.
        let ceiling = self.session.input_limit().unwrap_or(usize::MAX).max(needed);
        let mut target = needed.max(cap.saturating_mul(2)).max(4096).min(ceiling);
        if !budget.try_reserve(target - cap) {
            if !budget.try_reserve(needed - cap) {
                return false;
            }
            target = needed;
        }
        self.unit.reserve_exact(target - self.unit.len());
        self.reserved += target - cap;
        true
    }

    /// Frames command-line input; returns the bytes taken.
    fn line(&mut self, rest: &[u8], budget: &mut dyn MemoryBudget, out: &mut Vec<Output>) -> usize {
        let Position::Line { cr } = self.position else {
            unreachable!("line framing outside a line");
        };
        if cr {
            self.position = Position::Line { cr: false };
            if rest[0] == b'\n' {
                self.end_line(None, out);
                return 1;
            }
            // The held CR was part of the line.
            self.collect(b"\r", budget);
        }
        let mut from = 0;
        while let Some(i) = memchr::memchr(b'\n', &rest[from..]) {
            let lf = from + i;
            if lf > 0 && rest[lf - 1] == b'\r' {
                let line = &rest[..lf - 1];
                if self.unit.is_empty() && self.discard.is_none() {
                    self.end_line(Some(line), out);
                } else {
                    self.collect(line, budget);
                    self.end_line(None, out);
                }
                return lf + 1;
            }
            from = lf + 1;
        }
        // No CRLF: keep what there is, holding back a final CR.
        match rest.split_last() {
            Some((b'\r', before)) => {
                self.collect(before, budget);
                self.position = Position::Line { cr: true };
            }
            _ => self.collect(rest, budget),
        }
        rest.len()
    }

    /// A command line ended: `whole` is the line when it arrived in one piece, else it is in
    /// `unit`.
    fn end_line(&mut self, whole: Option<&[u8]>, out: &mut Vec<Output>) {
        let result = match self.discard.take() {
            Some(_) => self.session.feed_oversize(out),
            None => match whole {
                Some(line) => {
                    // The limit applies to lines seen whole too.
                    if self.session.input_limit().is_some_and(|l| line.len() > l) {
                        self.session.feed_oversize(out)
                    } else {
                        self.trace_line(line);
                        self.session.feed_line(line, out)
                    }
                }
                None => {
                    let unit = std::mem::take(&mut self.unit);
                    self.trace_line(&unit);
                    let result = self.session.feed_line(&unit, out);
                    // Keep the allocation for the next line, unless it was a large one.
                    if unit.capacity() <= 1024 {
                        self.unit = unit;
                        self.unit.clear();
                    }
                    result
                }
            },
        };
        debug_assert!(
            result.is_ok(),
            "framing fed a session that does not take input"
        );
    }

    fn trace_line(&self, line: &[u8]) {
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "{} command: {:?}",
                self.session.peer(),
                String::from_utf8_lossy(line)
            );
        }
    }

    /// Frames body input; returns the bytes taken.
    fn body(&mut self, rest: &[u8], budget: &mut dyn MemoryBudget, out: &mut Vec<Output>) -> usize {
        let Position::Data { matched, virtual_ } = self.position else {
            unreachable!("body framing outside DATA");
        };
        if matched > 0 {
            // Go on with the end marker begun before this input.
            let need = &END_OF_DATA[matched..];
            let common = rest.iter().zip(need).take_while(|(a, b)| a == b).count();
            if common == need.len() {
                self.end_body(None, budget, out);
                return common;
            }
            if common == rest.len() {
                self.position = Position::Data {
                    matched: matched + common,
                    virtual_,
                };
                return common;
            }
            // Not the end after all: the held bytes were body bytes (except the DATA line's
            // CRLF). For this marker no held byte can start another marker that the
            // mismatching byte would complete, so the search starts afresh at `rest`.
            self.position = Position::Data {
                matched: 0,
                virtual_: 0,
            };
            self.collect(&END_OF_DATA[virtual_..matched], budget);
        }
        match end_of_data().find(rest) {
            Some(i) => {
                if self.unit.is_empty() && self.discard.is_none() {
                    self.end_body(Some(&rest[..i]), budget, out);
                } else {
                    self.collect(&rest[..i], budget);
                    self.end_body(None, budget, out);
                }
                i + END_OF_DATA.len()
            }
            None => {
                // The longest beginning of the marker that the input ends with.
                let held = (1..END_OF_DATA.len())
                    .rev()
                    .find(|&k| rest.ends_with(&END_OF_DATA[..k]))
                    .unwrap_or(0);
                self.collect(&rest[..rest.len() - held], budget);
                self.position = Position::Data {
                    matched: held,
                    virtual_: 0,
                };
                rest.len()
            }
        }
    }

    /// The body ended: `whole` is the body when it arrived in one piece, else it is in `unit`.
    fn end_body(
        &mut self,
        whole: Option<&[u8]>,
        budget: &mut dyn MemoryBudget,
        out: &mut Vec<Output>,
    ) {
        let result = match self.discard.take() {
            Some(Discard::Oversize) => self.session.feed_oversize(out),
            Some(Discard::OverBudget) => {
                let reply = Reply::enhanced(
                    452,
                    EnhancedCode::new(4, 3, 1),
                    "Insufficient system storage",
                );
                self.session.feed_data_refused(reply, out)
            }
            None => match whole {
                Some(body) => {
                    log::debug!("{} data: {} bytes", self.session.peer(), body.len());
                    if self.session.input_limit().is_some_and(|l| body.len() > l) {
                        self.session.feed_oversize(out)
                    } else {
                        self.session.feed_data(body, out)
                    }
                }
                None => {
                    let unit = std::mem::take(&mut self.unit);
                    log::debug!("{} data: {} bytes", self.session.peer(), unit.len());
                    let result = self.session.feed_data(&unit, out);
                    drop(unit);
                    self.release_all(budget);
                    result
                }
            },
        };
        debug_assert!(
            result.is_ok(),
            "framing fed a session that does not take input"
        );
    }
}
