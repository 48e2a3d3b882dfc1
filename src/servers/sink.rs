//! [`Sink`]: accepts and discards every message.

use crate::server::{Message, Outcome, ServerCtx, SmtpServer};

/// Accepts every message and throws it away (aiosmtpd's `Sink`): for benchmarks, and as the
/// far end of tests that only care about the dialogue. Counts what it discarded.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Sink {
    /// Messages accepted so far.
    pub messages: u64,
    /// Bytes of message data accepted so far.
    pub bytes: u64,
}

impl SmtpServer for Sink {
    fn process_message(&mut self, message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.messages += 1;
        self.bytes += message.data.len() as u64;
        Outcome::Accept
    }
}
