//! A sans-I/O SMTP server session (the protocol half of CPython's
//! `smtpd.SMTPChannel`): no sockets, clocks or threads.
//!
//! # Feed/take contract
//!
//! The caller owns the connection and does the framing; a [`Session`] owns
//! the protocol. Every `feed_*`/`start`/`message_done` call appends what must
//! happen next, in order, to an `out: &mut Vec<Output>` the caller then takes
//! and acts on:
//!
//! 1. [`Session::start`] pushes the `220` greeting.
//! 2. While [`Session::framing`] is [`Framing::Line`], split input at CRLF
//!    and pass each line *without* the CRLF to [`Session::feed_line`].
//! 3. While it is [`Framing::Data`], collect input up to the first
//!    `\r\n.\r\n`, counting the CRLF that ended the `DATA` line as the first
//!    two bytes of that terminator (so `DATA\r\n.\r\n` is an empty message),
//!    and pass the bytes in between to [`Session::feed_data`].
//! 4. A unit longer than [`Session::input_limit`] is discarded up to its
//!    terminator and reported with [`Session::feed_oversize`] instead.
//! 5. After [`Output::Message`] the session is waiting
//!    ([`Session::is_waiting`]): feed nothing until the message was handled
//!    and [`Session::message_done`] was called with the verdict (a [`Reply`];
//!    [`Reply::parse`] reads a Python-style `"550 No such user"`).
//! 6. Send each [`Output::Reply`] with [`Reply::write_to`]; on
//!    [`Output::Close`] (after QUIT's `221 Bye`) flush and close.
//!    After that, [`Session::is_closed`] is true and input is ignored.
//!
//! Re-check [`Session::framing`] and [`Session::input_limit`] after every
//! call: they change with the state (pipelined input that follows `DATA`
//! must be framed as data).
//!
//! # Files
//!
//! `session.rs` is the only file that changes state: its `State` enum
//! (command, data, waiting, closed) carries each state's data (the
//! [`Envelope`] of the transaction); it also builds the replies that depend on
//! the [`Config`] (greeting, HELO, EHLO, too many errors). The other files are
//! pure: `receiver.rs` frames bytes, `command.rs` splits lines and parameters,
//! `address.rs` parses paths, `param.rs` holds the typed parameters and
//! recipients, `peer.rs` the [`Peer`], `data.rs` builds the message body,
//! `reply.rs` is the reply type, `replies.rs` is the crate-private table of
//! every fixed reply text, `config.rs` the settings.

#![deny(missing_docs)]

mod address;
mod command;
mod config;
mod data;
mod param;
mod peer;
mod receiver;
pub(crate) mod replies;
mod reply;
mod session;

#[cfg(test)]
mod tests;

pub use config::{
    default_ehlo_keywords, BareLf, Config, ConfigError, COMMAND_SIZE_LIMIT, DATA_SIZE_DEFAULT,
    SIZE_EXTENSION_BYTES, SMTPUTF8_EXTENSION_BYTES,
};
pub use param::{Param, Recipient};
pub use peer::Peer;
pub use receiver::{MemoryBudget, Receiver};
pub use reply::{EnhancedCode, ParseEnhancedCodeError, Reply};
pub use session::{
    AddressCheck, CommandCheck, Decision, Envelope, Framing, HeloCheck, Message, Output, Request,
    Session, UsageError,
};
