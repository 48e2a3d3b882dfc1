//! A sans-I/O SMTP server session (the protocol half of CPython's
//! `smtpd.SMTPChannel`): no sockets, clocks or threads.
//!
//! # Feed/take contract
//!
//! Most callers give bytes to a [`Receiver`], which does all the framing (CRLF
//! lines, `CRLF.CRLF` bodies, over-long units, the memory budget) and feeds a
//! [`Session`]; the session owns the meaning. Every call appends what must
//! happen next, in order, to an `out: &mut Vec<Output>` the caller then takes
//! and acts on:
//!
//! 1. [`Receiver::start`] (or [`Session::start`]) pushes the `220` greeting, or
//!    [`Output::Decide`]`(`[`Request::Connect`]`)` with [`Config::check_connect`].
//! 2. [`Receiver::receive`] takes input and says how much it used; it stops at
//!    an [`Output::Decide`]: decide the [`Request`] (a message to deliver, a
//!    sender or recipient to check, a custom command), answer it with
//!    [`Receiver::resolve`] (a [`Decision`]: the default, or a [`Reply`];
//!    [`Reply::parse`] reads a Python-style `"550 No such user"`), then give it
//!    the unused input again.
//! 3. Send each [`Output::Reply`] with [`Reply::write_to`]; on
//!    [`Output::Close`] (after QUIT's `221 Bye`) flush and close. After that,
//!    [`Session::is_closed`] is true and input is ignored.
//! 4. [`Output::Reset`] says that an open transaction ended without its message.
//!
//! A caller that frames input itself feeds the session directly
//! ([`Session::feed_line`], [`Session::feed_data`], [`Session::feed_oversize`]),
//! re-checking [`Session::framing`] and [`Session::input_limit`] after every
//! call: they change with the state (pipelined input that follows `DATA` must
//! be framed as data).
//!
//! # Files
//!
//! `session.rs` holds the protocol state: its `State` enum
//! (command, data, waiting, closed) carries each state's data (the
//! [`Envelope`] of the transaction); it also builds the replies that depend on
//! the [`Config`] (greeting, HELO, EHLO, too many errors). The other files are
//! pure, except `receiver.rs`, which keeps the framing position: `command.rs` splits lines and parameters,
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
pub use peer::{Peer, TlsInfo};
pub use receiver::{MemoryBudget, Receiver};
pub use reply::{EnhancedCode, ParseEnhancedCodeError, Reply};
pub use session::{
    AddressCheck, CommandCheck, Decision, Envelope, Framing, HeloCheck, Message, Output, Request,
    Session, UsageError,
};
