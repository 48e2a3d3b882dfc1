//! # smtpd — Python's `smtpd`, `asyncore` and `asynchat`, rebuilt on `mio`
//!
//! An embeddable SMTP server for programs that do not run an async runtime: one thread, one
//! `mio::Poll`, a slab of channel objects — the shape of Python's asyncore — driven by
//! [`Reactor::run`](reactor::Reactor::run), one step at a time by the host
//! ([`poll_once`](reactor::Reactor::poll_once)), or nested in a foreign poller through its file
//! descriptor.
//!
//! ## Layers
//!
//! | module | Python counterpart | job | touches sockets? |
//! |---|---|---|---|
//! | [`reactor`] | `asyncore` | the loop, the dispatcher map, timers, stop and remote handles | yes |
//! | [`chat`] | `asynchat.async_chat` | the [`Transport`](chat::Transport) (switchable in place), output queue, backpressure, terminator framing for other line protocols | yes |
//! | [`smtp`] | `smtpd.SMTPChannel`'s logic | the sans-I/O [`Receiver`](smtp::Receiver) (bytes in, all framing) over the [`Session`](smtp::Session) (meaning, decisions) | **no** |
//! | [`server`] | `smtpd.SMTPServer` | the [`SmtpServer`](server::SmtpServer) trait, per-connection [`SmtpSession`](server::SmtpSession)s opened by a [`Backend`](server::Backend), [`Listener`](server::Listener), deferred replies | listener only |
//! | [`client`] | `smtplib` (as PureProxy used it) | sans-I/O SMTP/LMTP client and the in-loop [`Relay`](client::Relay) | via `chat` |
//! | [`servers`] | `DebuggingServer`, `PureProxy`, `MailmanProxy` | built-in servers, written against the public API | no |
//! | [`cli`] | `python -m smtpd` | the command line, reusable with your own server classes | no |
//! | [`sys`] | `socket.getfqdn()`, `resource.setrlimit` | process utilities for start-up: the FQDN, the descriptor limit | no |
//! | [`testing`] | — | a loopback test server and a recording client, for your own test suites | yes |
//!
//! The `examples/` directory shows the three ways to drive the loop (`run_in_thread`,
//! `drive_manually`, `nested_epoll`), the asynchat layer on its own (`chat_room`,
//! `echo_line_protocol`), and ports of Python code; `docs/porting.md` maps every Python name.
//!
//! ## One message, end to end
//!
//! ```text
//!  socket ──► chat ──► smtp::Receiver ──────► smtp::Session (meaning)
//!                                                   │ Output::Decide(Request::Message)
//!                                                   ▼
//!  socket ◄── chat (output queue) ◄── reply ◄── SmtpSession::process_message
//!                                              (Accept / Reply / Deferred ← Ticket)
//! ```
//!
//! Each connection has its own [`SmtpSession`](server::SmtpSession) value, opened by the
//! listener's [`Backend`](server::Backend); an `Rc<RefCell<S>>` of a CPython-shaped
//! [`SmtpServer`](server::SmtpServer) is a backend whose sessions all forward to `S`.
//!
//! Protocol code never touches a socket; socket code never parses SMTP. `server`'s channel is
//! the one place where the two meet.
//!
//! ## Receiving mail in ten lines
//!
//! ```no_run
//! use std::{cell::RefCell, rc::Rc};
//! use smtpd::{reactor::Reactor, server::*};
//!
//! struct Inbox;
//! impl SmtpServer for Inbox {
//!     fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
//!         println!("{} -> {:?}, {} bytes", m.mail_from, m.rcpt_tos, m.data.len());
//!         Outcome::Accept // Python's `return None`: 250 OK
//!     }
//! }
//!
//! let mut reactor = Reactor::new()?;
//! Listener::bind(&mut reactor, "127.0.0.1:8025".parse().unwrap(),
//!                Rc::new(RefCell::new(Inbox)), ServerOptions::default())?;
//! reactor.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## Python names
//!
//! | Python | here |
//! |---|---|
//! | `asyncore.loop(timeout, use_poll, map, count)` | [`Reactor::run`](reactor::Reactor::run), [`run_count`](reactor::Reactor::run_count), [`poll_once`](reactor::Reactor::poll_once); the map is the `Reactor` value; `use_poll` has no counterpart (mio picks the selector) |
//! | `asyncore.dispatcher` | [`reactor::Dispatcher`] |
//! | `readable()` / `writable()` | [`wants_read`](reactor::Dispatcher::wants_read) / [`wants_write`](reactor::Dispatcher::wants_write) |
//! | `handle_read` / `handle_write` / `handle_close` / `handle_error` | [`on_readable`](reactor::Dispatcher::on_readable) / [`on_writable`](reactor::Dispatcher::on_writable) / [`on_close`](reactor::Dispatcher::on_close) / [`on_error`](reactor::Dispatcher::on_error) |
//! | `handle_accepted` | [`reactor::Acceptor`] |
//! | `ExitNow` | [`StopHandle::stop`](reactor::StopHandle::stop), [`Ctx::stop`](reactor::Ctx::stop) |
//! | `asyncore.close_all` | [`Reactor::close_all`](reactor::Reactor::close_all) |
//! | `async_chat` subclass | a [`chat::ChatHandler`] in a [`chat::ChatDispatcher`] |
//! | `set_terminator` / `push` / `push_with_producer` / `close_when_done` | [`ChatCtl`](chat::ChatCtl) methods of the same names |
//! | `collect_incoming_data` / `found_terminator` | [`ChatHandler`](chat::ChatHandler) methods of the same names |
//! | `smtpd.SMTPServer(localaddr, remoteaddr, data_size_limit, map, enable_SMTPUTF8, decode_data)` | [`server::Listener::bind`] with [`server::ServerOptions`] |
//! | `process_message(peer, mailfrom, rcpttos, data, **kwargs)` | [`SmtpServer::process_message`](server::SmtpServer::process_message) (or, per connection, [`SmtpSession::process_message`](server::SmtpSession::process_message)) |
//! | `SMTPServer.channel_class`, state kept on an `SMTPChannel` subclass | [`Backend::open_session`](server::Backend::open_session) returning your [`SmtpSession`](server::SmtpSession) (go-smtp's Backend/Session): one value per connection, hooks with `&mut self` |
//! | `smtpd.DebuggingServer` | [`servers::DebuggingServer`] |
//! | `smtpd.PureProxy` | [`servers::PureProxy`] (relays inside the loop; `250` only for mail the upstream took) |
//! | `smtpd.MailmanProxy` (3.10) | [`servers::MailmanProxy`] (Mailman 3 over LMTP, or Mailman 2's wrapper) |
//! | `smtplib` (as PureProxy used it) | [`client::Client`] and [`client::Relay`], non-blocking |
//! | `SMTPChannel.smtp_XXX` overrides | [`SmtpServer::commands`](server::SmtpServer::commands) / [`on_command`](server::SmtpServer::on_command), [`on_helo`](server::SmtpServer::on_helo), [`on_mail`](server::SmtpServer::on_mail), [`on_rcpt`](server::SmtpServer::on_rcpt) (the same hooks on [`SmtpSession`](server::SmtpSession), [`Backend::commands`](server::Backend::commands)) |
//! | — (a hook answering later) | [`ServerCtx::defer`](server::ServerCtx::defer) → [`Ticket`](server::Ticket), returned as [`Outcome::deferred`](server::Outcome::deferred) |
//! | — (calling a hook in a unit test) | [`ServerCtx::detached`](server::ServerCtx::detached) on a [`DetachedCtx`](server::DetachedCtx) (no socket, no reactor) |
//! | — (a server's hooks through the whole dialogue in a unit test) | `testing::SessionDriver::with_server` (feature `testing`) |
//! | aiosmtpd's `Controller` (a server on a thread of its own) | [`server::spawn`] → [`ServerHandle`](server::ServerHandle) (`local_addr`, `shutdown(grace)`, `join`) |
//! | stopping one server in a loop that runs more | [`Listener::shutdown`](server::Listener::shutdown), then [`Listener::is_shut_down`](server::Listener::is_shut_down) |
//!
//! ## mio
//!
//! The reactor is built on [`mio`] 1.x (1.2 or later; `Cargo.toml` says `mio = "1.2"`),
//! re-exported here as `smtpd::mio`. mio's types are part of this API: a
//! [`Dispatcher`](reactor::Dispatcher) hands the reactor a `mio::event::Source` (a
//! `mio::net::TcpStream`, a `mio::unix::pipe::Receiver`, a `mio::unix::SourceFd`), and the
//! [`chat`] layer runs over mio's sockets. Name them as `smtpd::mio::...` and the version
//! always matches the reactor's, without a `mio` line of your own in `Cargo.toml`. A new major
//! version of mio will be a new major version of this crate.
//!
//! ## Package and features
//!
//! The package is `smtpd-mio` (`smtpd` is another crate's name in the registry); the library's
//! crate name stays `smtpd`, so paths read `smtpd::server::...` as in every example here.
//! Cargo features, all on by default: `cli` (the [`cli`] module and the `smtpd` binary),
//! `testing` (the [`testing`] module) and `dns-lookup` ([`sys::fqdn`] asks the resolver).
//! `default-features = false` gives the library alone, without the command line's crates.
//!
//! ## Threads
//!
//! The reactor is `!Send`, like asyncore: everything runs on its thread. Build it on the thread
//! that runs it; talk to it from elsewhere through [`StopHandle`](reactor::StopHandle) and
//! [`RemoteHandle`](reactor::RemoteHandle) (a deferred answer computed on a worker thread comes
//! back through a [`Ticket`](server::Ticket), which uses the remote handle).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use mio;

pub mod chat;
#[cfg(feature = "cli")]
#[cfg_attr(docsrs, doc(cfg(feature = "cli")))]
pub mod cli;
pub mod client;
pub mod reactor;
pub mod server;
pub mod servers;
pub mod smtp;
pub mod sys;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
