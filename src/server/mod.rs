//! `smtpd.SMTPServer`: the [`SmtpServer`] trait a user implements, the per-connection
//! [`SmtpSession`]s a [`Backend`] opens (go-smtp's shape), the options of a listening server,
//! deferred replies, and the [`Listener`] that accepts connections.
//!
//! Two ways to write a server, served by the same [`Listener`]:
//!
//! * **CPython's shape**: one [`SmtpServer`] value (shared as `Rc<RefCell<..>>`) gets every
//!   connection's hooks. It only needs [`process_message`](SmtpServer::process_message).
//! * **go-smtp's shape**: a [`Backend`] opens one [`SmtpSession`] value per connection, whose
//!   hooks take `&mut self`: per-connection state is a field of the session, not a map keyed
//!   by channel handle. `Rc<RefCell<S>>` for any `S: SmtpServer` is a [`Backend`] (each
//!   session forwards to the shared server), so the first shape is a case of the second.
//!
//! ```no_run
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use smtpd::reactor::Reactor;
//! use smtpd::server::{Listener, Message, Outcome, ServerCtx, ServerOptions, SmtpServer};
//!
//! struct Printer;
//!
//! impl SmtpServer for Printer {
//!     fn process_message(&mut self, msg: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
//!         println!("{} -> {:?}: {} bytes", msg.mail_from, msg.rcpt_tos, msg.data.len());
//!         Outcome::Accept // Python's `return None`: "250 OK"
//!     }
//! }
//!
//! let mut reactor = Reactor::new()?;
//! let server = Rc::new(RefCell::new(Printer));
//! let listener = Listener::bind(&mut reactor, "127.0.0.1:8025".parse().unwrap(), server,
//!                               ServerOptions::default())?;
//! println!("listening on {}", listener.local_addr());
//! reactor.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod channel;
mod listener;
mod session;
mod shared;
mod spawn;
#[cfg(feature = "tls")]
mod tls;

pub use crate::smtp::{EnhancedCode, Message, Param, Peer, Recipient, Reply};
#[cfg(feature = "testing")]
pub(crate) use listener::session_config;
pub use listener::{Listener, Shutdown};
#[cfg(feature = "testing")]
pub(crate) use session::ask;
pub use session::{Backend, SmtpSession};
pub use spawn::{spawn, ServerHandle, ShutdownTrigger, SHUTDOWN_MARGIN};
#[cfg(feature = "tls")]
pub use tls::{TlsConfig, TlsConfigError};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::chat::ChatOptions;
use crate::reactor::{Ctx, Handle, RemoteHandle};
use crate::smtp::Config;
use crate::sys::{fd_connection_limit, fqdn};

/// What a hook ([`SmtpSession::process_message`], [`SmtpServer::process_message`], the
/// MAIL/RCPT/HELO/command/connect hooks) decides.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// `250 OK` — Python's `return None`.
    Accept,
    /// Answer with this reply (Python's `return "550 No such user"`; [`Reply::parse`] reads
    /// such a string).
    Reply(Reply),
    /// The answer comes later, through the [`Ticket`] obtained from [`ServerCtx::defer`] in
    /// this same hook call ([`Outcome::deferred`]; a [`Deferral`] can only be made from a
    /// ticket). Meanwhile the channel reads nothing more from the client and its idle timer is
    /// suspended; if no answer arrives within [`ServerOptions::defer_timeout`], or the ticket is
    /// dropped unanswered, the client gets `451` and may retry. A deferral made from an older
    /// ticket (not the one this hook call obtained) gets `451` at once, with an error logged.
    Deferred(Deferral),
}

impl Outcome {
    /// Defers the answer to `ticket` (obtained from [`ServerCtx::defer`] in this hook call):
    /// `Outcome::Deferred(ticket.deferral())`.
    pub fn deferred(ticket: &Ticket) -> Outcome {
        Outcome::Deferred(ticket.deferral())
    }

    /// An outcome from a Python-style reply string: `None` accepts, `Some("550 ...")` replies.
    /// A string that is not a well-formed reply line becomes `451` (a local error), so a bad
    /// return value never tells a client its mail was taken.
    pub fn from_python(reply: Option<&str>) -> Outcome {
        match reply {
            None => Outcome::Accept,
            Some(text) => match Reply::parse(text) {
                Some(r) => Outcome::Reply(r),
                None => {
                    log::error!("process_message returned a malformed reply: {text:?}");
                    Outcome::Reply(local_error())
                }
            },
        }
    }
}

/// `451 Requested action aborted: local error in processing` (RFC 5321 4.2.3).
pub fn local_error() -> Reply {
    Reply::new(451, "Requested action aborted: local error in processing")
}

/// A server object: Python's `SMTPServer` subclass. One value serves every connection of the
/// [`Listener`]s it is given to (shared as `Rc<RefCell<..>>`; the borrow never overlaps because
/// reactor hooks never nest).
///
/// `Rc<RefCell<S>>` is a [`Backend`]: it opens, for each connection, a session that forwards
/// every hook to the shared server. A server that keeps state per connection is simpler as a
/// [`Backend`] with its own [`SmtpSession`] type (see [`SmtpSession`]'s example): the state is
/// a field of the session, and no map keyed by [`ServerCtx::channel`] is needed.
pub trait SmtpServer: 'static {
    /// A message was received: `process_message(peer, mailfrom, rcpttos, data, **kwargs)`.
    /// [`Message`] carries the peer, the envelope, the data and the MAIL/RCPT options.
    ///
    /// A panic here is caught: the client gets `451` and the server goes on.
    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome;

    /// A syntactically valid `MAIL FROM`. The default accepts it with `250 OK`, CPython's
    /// behaviour. Return a reply to refuse it, or defer (as for messages) to decide later —
    /// a relay asks its upstream here.
    fn on_mail(&mut self, _request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    /// A syntactically valid `RCPT TO`. The default accepts it with `250 OK`. Refusing
    /// unknown recipients here, rather than after the data, is what most servers want.
    fn on_rcpt(&mut self, _request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    /// The transaction of this connection ([`ServerCtx::channel`]) ended without a message
    /// reaching [`process_message`](Self::process_message): RSET, a new HELO/EHLO, QUIT, a
    /// refused or oversize message, or the client going away.
    fn on_reset(&mut self, _cx: &mut ServerCtx<'_, '_>) {}

    /// The connection ([`ServerCtx::channel`]) closed.
    fn on_disconnect(&mut self, _cx: &mut ServerCtx<'_, '_>) {}

    /// A `HELO` or `EHLO`, before the built-in checks. [`Outcome::Accept`] (the default) runs
    /// CPython's handling: `250 <hostname>` or the EHLO keywords, or its syntax and duplicate
    /// errors. Return a reply to refuse the greeting (`550 5.7.1 go away`), or defer. A server
    /// that lists `HELO`/`EHLO` in [`commands`](Self::commands) gets them in
    /// [`on_command`](Self::on_command) instead.
    fn on_helo(&mut self, _request: &HeloRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    /// A client connected. Return a reply (`554 No service for you`) to send it instead of
    /// the greeting and close the connection; the default (`None`) greets it. A `2xx` reply
    /// greets with its text instead of the default `220` line (as
    /// [`SmtpSession::on_connect`]). To defer the decision, use a [`SmtpSession`].
    fn on_connect(
        &mut self,
        _peer: std::net::SocketAddr,
        _cx: &mut ServerCtx<'_, '_>,
    ) -> Option<Reply> {
        None
    }

    /// The verbs (upper-case) this server handles itself in
    /// [`on_command`](Self::on_command): new commands, or built-in ones it overrides — what
    /// Python code did by subclassing `SMTPChannel` with `smtp_XXX` methods. Asked once, when
    /// the [`Listener`] is created.
    fn commands(&self) -> Vec<String> {
        Vec::new()
    }

    /// A command whose verb [`commands`](Self::commands) listed. Return a reply, defer, or
    /// [`Outcome::Accept`] to run the built-in behaviour (CPython's; `250 OK` for a verb
    /// that has none).
    fn on_command(
        &mut self,
        _request: &CommandRequest<'_>,
        _cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        Outcome::Accept
    }

    /// Edits the EHLO keywords (after the hostname line) announced to every client: add
    /// `PIPELINING`, drop `HELP`, ... `keywords` holds CPython's list on entry. Asked once,
    /// when the [`Listener`] is created.
    fn ehlo_keywords(&self, _keywords: &mut Vec<String>) {}
}

/// A `HELO`/`EHLO` for [`SmtpServer::on_helo`].
#[derive(Debug)]
#[non_exhaustive]
pub struct HeloRequest<'a> {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The name the client gave (may be empty: the built-in handling answers the syntax error).
    pub name: &'a str,
    /// `EHLO` rather than `HELO`.
    pub extended: bool,
    /// The TLS facts when the connection is encrypted (after STARTTLS or on an
    /// implicit-TLS listener).
    pub tls: Option<&'a crate::smtp::TlsInfo>,
}

impl<'a> HeloRequest<'a> {
    /// A `HELO name` (or, with `extended`, `EHLO name`) from `peer`: for testing hooks
    /// without a socket.
    pub fn new(peer: std::net::SocketAddr, name: &'a str, extended: bool) -> Self {
        HeloRequest {
            peer,
            name,
            extended,
            tls: None,
        }
    }
}

/// A command for [`SmtpServer::on_command`].
#[derive(Debug)]
#[non_exhaustive]
pub struct CommandRequest<'a> {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The HELO/EHLO argument, once given.
    pub helo: Option<&'a str>,
    /// The verb, upper-cased.
    pub verb: &'a str,
    /// The rest of the line.
    pub arg: &'a str,
    /// The TLS facts when the connection is encrypted (after STARTTLS or on an
    /// implicit-TLS listener).
    pub tls: Option<&'a crate::smtp::TlsInfo>,
}

impl<'a> CommandRequest<'a> {
    /// The command `verb arg` (`verb` upper-case) from `peer`, after `HELO helo` if given:
    /// for testing hooks without a socket.
    pub fn new(
        peer: std::net::SocketAddr,
        helo: Option<&'a str>,
        verb: &'a str,
        arg: &'a str,
    ) -> Self {
        CommandRequest {
            peer,
            helo,
            verb,
            arg,
            tls: None,
        }
    }
}

/// A `MAIL FROM` or `RCPT TO` for [`SmtpServer::on_mail`] / [`SmtpServer::on_rcpt`].
#[derive(Debug)]
#[non_exhaustive]
pub struct AddressRequest<'a> {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// The HELO/EHLO argument.
    pub helo: Option<&'a str>,
    /// The sender: the address itself for MAIL, the transaction's sender for RCPT
    /// (`"<>"` for the null reverse-path).
    pub mail_from: &'a str,
    /// The address of this command (for MAIL, the same as `mail_from`).
    pub address: &'a str,
    /// The command's parameters, upper-cased (`["SIZE=1000", "BODY=8BITMIME"]`): CPython's
    /// view of [`params`](Self::params).
    pub options: &'a [String],
    /// The MAIL parameters of the transaction (for MAIL, the same as `options`), upper-cased:
    /// CPython's view of [`mail_params`](Self::mail_params).
    pub mail_options: &'a [String],
    /// Recipients accepted so far in this transaction: CPython's view of
    /// [`recipients`](Self::recipients).
    pub rcpt_tos: &'a [String],
    /// The command's parameters as the client sent them (case kept).
    pub params: &'a [Param],
    /// The MAIL parameters of the transaction as sent (for MAIL, the same as `params`).
    pub mail_params: &'a [Param],
    /// Recipients accepted so far in this transaction, each with its RCPT parameters.
    pub recipients: &'a [Recipient],
    /// The TLS facts when the connection is encrypted (after STARTTLS or on an
    /// implicit-TLS listener).
    pub tls: Option<&'a crate::smtp::TlsInfo>,
}

impl<'a> AddressRequest<'a> {
    /// A `MAIL FROM:<address>` with its parameters (upper-cased) from `peer`, opening a
    /// transaction: for testing hooks without a socket. Add the HELO name with
    /// [`with_helo`](Self::with_helo).
    pub fn mail(peer: std::net::SocketAddr, address: &'a str, options: &'a [String]) -> Self {
        AddressRequest {
            peer,
            helo: None,
            mail_from: address,
            address,
            options,
            mail_options: options,
            rcpt_tos: &[],
            params: &[],
            mail_params: &[],
            recipients: &[],
            tls: None,
        }
    }

    /// A `RCPT TO:<address>` from `peer` in the transaction of `mail_from`, with no parameters
    /// and no recipient accepted before it; the `with_*` methods add those.
    pub fn rcpt(peer: std::net::SocketAddr, mail_from: &'a str, address: &'a str) -> Self {
        AddressRequest {
            peer,
            helo: None,
            mail_from,
            address,
            options: &[],
            mail_options: &[],
            rcpt_tos: &[],
            params: &[],
            mail_params: &[],
            recipients: &[],
            tls: None,
        }
    }

    /// The HELO/EHLO name the client gave.
    pub fn with_helo(mut self, helo: &'a str) -> Self {
        self.helo = Some(helo);
        self
    }

    /// This command's parameters (upper-cased).
    pub fn with_options(mut self, options: &'a [String]) -> Self {
        self.options = options;
        self
    }

    /// The transaction's MAIL parameters (upper-cased).
    pub fn with_mail_options(mut self, mail_options: &'a [String]) -> Self {
        self.mail_options = mail_options;
        self
    }

    /// The recipients accepted before this one (CPython's view; see also
    /// [`with_recipients`](Self::with_recipients)).
    pub fn with_rcpt_tos(mut self, rcpt_tos: &'a [String]) -> Self {
        self.rcpt_tos = rcpt_tos;
        self
    }

    /// This command's parameters as sent (for a MAIL, give them to
    /// [`with_mail_params`](Self::with_mail_params) too).
    pub fn with_params(mut self, params: &'a [Param]) -> Self {
        self.params = params;
        self
    }

    /// The transaction's MAIL parameters as sent.
    pub fn with_mail_params(mut self, mail_params: &'a [Param]) -> Self {
        self.mail_params = mail_params;
        self
    }

    /// The recipients accepted before this one, with their parameters.
    pub fn with_recipients(mut self, recipients: &'a [Recipient]) -> Self {
        self.recipients = recipients;
        self
    }
}

/// What a server hook may use besides the message: the reactor context (timers, spawning a
/// relay) and deferral.
///
/// The listener's channels build it around their reactor context. For unit tests of hooks
/// without a socket, [`ServerCtx::detached`] builds one around a [`DetachedCtx`]: deferral works
/// (the tickets' answers go to the [`DetachedCtx`]), the reactor context does not exist
/// ([`try_ctx`](Self::try_ctx) is `None`).
pub struct ServerCtx<'a, 'b> {
    place: Place<'a, 'b>,
    issued: Option<u64>,
}

/// What a [`ServerCtx`] is attached to.
enum Place<'a, 'b> {
    Reactor(&'a mut Ctx<'b>),
    Detached(&'a mut DetachedCtx),
}

static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

/// The handle a detached context reports as its channel: it names no dispatcher.
fn detached_handle() -> Handle {
    Handle::new(u32::MAX as usize, u32::MAX)
}

impl<'a, 'b> ServerCtx<'a, 'b> {
    pub(crate) fn new(ctx: &'a mut Ctx<'b>) -> Self {
        ServerCtx {
            place: Place::Reactor(ctx),
            issued: None,
        }
    }

    /// Promises a later answer: return [`Outcome::deferred`]`(&ticket)` and complete the
    /// ticket from the loop or from any thread. At most one ticket per hook call; a second
    /// call replaces the first (whose deferral then gets `451`, and whose answer is ignored).
    pub fn defer(&mut self) -> Ticket {
        let id = NEXT_TICKET.fetch_add(1, Ordering::Relaxed);
        self.issued = Some(id);
        let to = match &mut self.place {
            Place::Reactor(ctx) => Delivery::Channel {
                channel: ctx.handle(),
                remote: ctx.remote(),
            },
            Place::Detached(detached) => {
                detached.issued = Some(id);
                Delivery::Local(detached.tx.clone())
            }
        };
        Ticket {
            id,
            to,
            done: false,
        }
    }

    /// The reactor context of the channel: timers, spawn, notify.
    ///
    /// # Panics
    /// In a [detached](Self::detached) context, which has no reactor: hooks that may run
    /// detached use [`try_ctx`](Self::try_ctx).
    pub fn ctx(&mut self) -> &mut Ctx<'b> {
        self.try_ctx().expect(
            "ServerCtx::ctx: this context is detached from a reactor (ServerCtx::detached);              use ServerCtx::try_ctx",
        )
    }

    /// The reactor context of the channel, or `None` in a [detached](Self::detached) context
    /// (a unit test): what a hook that spawns dispatchers or arms timers needs.
    pub fn try_ctx(&mut self) -> Option<&mut Ctx<'b>> {
        match &mut self.place {
            Place::Reactor(ctx) => Some(ctx),
            Place::Detached(_) => None,
        }
    }

    /// Whether this context is [detached](Self::detached) from a reactor.
    pub fn is_detached(&self) -> bool {
        matches!(self.place, Place::Detached(_))
    }

    /// The handle of the channel the hook runs for. A [detached](Self::detached) context gives
    /// a handle that names no dispatcher (anything sent to it is dropped).
    pub fn channel(&self) -> Handle {
        match &self.place {
            Place::Reactor(ctx) => ctx.handle(),
            Place::Detached(_) => detached_handle(),
        }
    }

    pub(crate) fn issued(&self) -> Option<u64> {
        self.issued
    }
}

impl<'a> ServerCtx<'a, 'static> {
    /// A context outside any reactor, for calling hooks in unit tests: tickets from
    /// [`defer`](Self::defer) deliver their answers to `detached` (read them with
    /// [`DetachedCtx::answer`]); [`try_ctx`](Self::try_ctx) is `None`.
    ///
    /// ```
    /// use smtpd::server::{DetachedCtx, Outcome, Reply, ServerCtx, TicketAnswer};
    ///
    /// let mut detached = DetachedCtx::new();
    /// let mut cx = ServerCtx::detached(&mut detached);
    /// let ticket = cx.defer();
    /// let outcome = Outcome::deferred(&ticket);
    /// std::thread::spawn(move || ticket.complete(Reply::new(550, "No such user")));
    /// let Outcome::Deferred(deferral) = outcome else { unreachable!() };
    /// let answer = detached.answer(&deferral, std::time::Duration::from_secs(5));
    /// assert_eq!(answer, Some(TicketAnswer::Reply(Reply::new(550, "No such user"))));
    /// ```
    pub fn detached(detached: &'a mut DetachedCtx) -> Self {
        detached.issued = None;
        ServerCtx {
            place: Place::Detached(detached),
            issued: None,
        }
    }
}

impl std::fmt::Debug for ServerCtx<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCtx")
            .field("detached", &self.is_detached())
            .field("issued", &self.issued)
            .finish()
    }
}

/// The delivery of a deferred answer to its channel.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) id: u64,
    /// `None`: the ticket was dropped unanswered.
    pub(crate) reply: Option<Reply>,
}

/// Where a ticket's answer goes.
#[derive(Debug)]
enum Delivery {
    /// To the channel, through the reactor.
    Channel {
        channel: Handle,
        remote: RemoteHandle,
    },
    /// To a [`DetachedCtx`].
    Local(mpsc::Sender<Completion>),
}

/// A promise to answer one deferred decision. `Send`: move it to a worker thread, a relay
/// dispatcher, or keep it in the session. Answer it exactly once; dropping it unanswered
/// answers `451` (the client retries: no mail is lost).
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    to: Delivery,
    done: bool,
}

/// That a hook's answer comes later through a [`Ticket`]: the value of
/// [`Outcome::Deferred`]. It can only be made from a ticket ([`Ticket::deferral`],
/// [`Outcome::deferred`]), so a deferral without [`ServerCtx::defer`] cannot be written.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "return it in Outcome::Deferred"]
pub struct Deferral {
    id: u64,
}

impl Ticket {
    /// Answers with `reply`, from any thread (through the reactor's waker).
    pub fn complete(mut self, reply: Reply) {
        self.done = true;
        self.deliver(Some(reply), None);
    }

    /// Answers `250 OK`, from any thread.
    pub fn accept(self) {
        self.complete(Reply::ok());
    }

    /// Answers with `reply` from inside the loop (a hook's [`Ctx`]), without a wake-up.
    pub fn complete_in(mut self, ctx: &mut Ctx<'_>, reply: Reply) {
        self.done = true;
        self.deliver(Some(reply), Some(ctx));
    }

    /// The deferral to return ([`Outcome::Deferred`]) from the hook call that obtained this
    /// ticket.
    pub fn deferral(&self) -> Deferral {
        Deferral { id: self.id }
    }

    /// The channel waiting for this answer (for a ticket of a
    /// [detached](ServerCtx::detached) context, a handle that names no dispatcher).
    pub fn channel(&self) -> Handle {
        match &self.to {
            Delivery::Channel { channel, .. } => *channel,
            Delivery::Local(_) => detached_handle(),
        }
    }

    fn deliver(&mut self, reply: Option<Reply>, ctx: Option<&mut Ctx<'_>>) {
        let completion = Completion { id: self.id, reply };
        match (&self.to, ctx) {
            (Delivery::Channel { channel, .. }, Some(ctx)) => ctx.notify(*channel, completion),
            (Delivery::Channel { channel, remote }, None) => remote.notify(*channel, completion),
            (Delivery::Local(tx), _) => {
                let _ = tx.send(completion);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.deliver(None, None);
        }
    }
}

/// What a ticket of a [`DetachedCtx`] delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TicketAnswer {
    /// Completed with this reply ([`Ticket::accept`] gives `250 OK`).
    Reply(Reply),
    /// Dropped unanswered: a channel would answer `451`.
    Dropped,
}

/// The place outside any reactor where the tickets of a [detached](ServerCtx::detached)
/// [`ServerCtx`] deliver their answers: for unit tests of hooks, without a socket. Tickets
/// stay `Send`, so a test can complete one from another thread and wait for it here.
#[derive(Debug)]
pub struct DetachedCtx {
    tx: mpsc::Sender<Completion>,
    rx: mpsc::Receiver<Completion>,
    /// Answers received while waiting for another ticket's.
    early: Vec<Completion>,
    /// The ticket of the latest hook call, if it deferred.
    issued: Option<u64>,
}

impl Default for DetachedCtx {
    fn default() -> Self {
        DetachedCtx::new()
    }
}

impl DetachedCtx {
    /// An empty one.
    pub fn new() -> DetachedCtx {
        let (tx, rx) = mpsc::channel();
        DetachedCtx {
            tx,
            rx,
            early: Vec::new(),
            issued: None,
        }
    }

    /// A [`ServerCtx`] on this one: [`ServerCtx::detached`].
    pub fn cx(&mut self) -> ServerCtx<'_, 'static> {
        ServerCtx::detached(self)
    }

    /// Whether `deferral` is the one the latest hook call (on a context from
    /// [`cx`](Self::cx)) may return: made from the ticket it obtained. A channel answers any
    /// other deferral with `451`.
    pub fn is_current(&self, deferral: &Deferral) -> bool {
        self.issued == Some(deferral.id)
    }

    /// The answer to `deferral`'s ticket, waiting at most `timeout` for it. `None` when it did
    /// not come in time. Answers to other tickets that arrive meanwhile are kept for their own
    /// call.
    pub fn answer(&mut self, deferral: &Deferral, timeout: Duration) -> Option<TicketAnswer> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(at) = self.early.iter().position(|c| c.id == deferral.id) {
                let completion = self.early.swap_remove(at);
                return Some(match completion.reply {
                    Some(reply) => TicketAnswer::Reply(reply),
                    None => TicketAnswer::Dropped,
                });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(completion) => self.early.push(completion),
                Err(_) => return None,
            }
        }
    }

    /// The answer to `deferral`'s ticket if it has arrived, without waiting.
    pub fn try_answer(&mut self, deferral: &Deferral) -> Option<TicketAnswer> {
        self.answer(deferral, Duration::ZERO)
    }
}

/// How a [`Listener`] and its channels behave. `Default` gives CPython's defaults plus the
/// limits and timeouts CPython lacked; `docs/limits.md` lists every limit, its default and
/// its reply.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The protocol settings: hostname, greeting, size limit, SMTPUTF8, decode_data, and the
    /// session's limits (recipients, errors).
    pub session: Config,
    /// The command timeout: a client must complete each command line within this long of the
    /// previous one (or of the greeting), else `421` and close (RFC 5321 4.5.3.2.7 wants at
    /// least 5 minutes). A client trickling one byte at a time is closed by it too. `None`
    /// never times out. Default 5 minutes.
    pub idle_timeout: Option<Duration>,
    /// Inside DATA: the longest silence (no byte at all) before `421` and close. `None`: no
    /// limit. Default 5 minutes (RFC 5321 4.5.3.2.7).
    pub data_timeout: Option<Duration>,
    /// Inside DATA: the least average rate, in bytes per second. The body must be complete
    /// within [`data_timeout`](Self::data_timeout) plus one second per `min_data_rate` bytes
    /// received, else `421` and close — a client trickling its message cannot hold the
    /// connection for ever. 0: no minimum. Default 500 (Postfix's `smtpd_min_data_rate`).
    pub min_data_rate: usize,
    /// How long a deferred answer may take before the client gets `451`. Default 4 minutes:
    /// shorter than the 10 minutes a client waits after sending the final `.` (RFC 5321
    /// 4.5.3.2.6), so the client hears `451` rather than timing out and guessing.
    pub defer_timeout: Duration,
    /// Wait this long before the `220` greeting; a client that sends anything before it (an
    /// "early talker", typically spamware that does not wait) gets `554` and is closed. `None`
    /// (the default) greets at once, as CPython does. The connect hook
    /// ([`SmtpSession::on_connect`]) runs when the delay is over, so an early talker is
    /// refused without it.
    pub greeting_delay: Option<Duration>,
    /// Buffering limits of each connection (including the hard cap on queued output).
    pub chat: ChatOptions,
    /// Most simultaneous connections; further ones get `421 4.7.0` and are closed, and the
    /// listener accepts again as soon as one closes. 0 = no limit. Default
    /// [`fd_connection_limit`] (the descriptor limit less a reserve).
    pub max_connections: usize,
    /// Most simultaneous connections from one client address; further ones get `421 4.7.0`.
    /// Addresses in [`trusted_networks`](Self::trusted_networks) (loopback by default) are
    /// exempt.
    /// 0 = no limit. Default 50 (Postfix's `smtpd_client_connection_count_limit`).
    pub max_connections_per_ip: usize,
    /// Networks exempt from [`max_connections_per_ip`](Self::max_connections_per_ip).
    /// Default: loopback (`127.0.0.0/8`, `::1/128`); the `smtpd` command adds its `--trusted`
    /// networks.
    pub trusted_networks: Vec<ipnet::IpNet>,
    /// Most bytes of message data the listener's connections may hold in memory at once,
    /// together. A message that would go beyond it is discarded as it arrives and answered
    /// `452 4.3.1 Insufficient system storage` (the client retries later). 0: no limit.
    /// Default 512 MiB.
    pub data_memory_limit: usize,
    /// The listen backlog of [`Listener::bind`]. Default
    /// [`LISTEN_BACKLOG`](crate::reactor::LISTEN_BACKLOG) (1024; the kernel caps it at
    /// `net.core.somaxconn`).
    pub backlog: i32,
    /// The certificate and key: with it, EHLO offers STARTTLS (RFC 3207), or with
    /// [`implicit_tls`](Self::implicit_tls) every connection starts with a TLS handshake.
    /// [`Config::require_tls`] in [`session`](Self::session) then refuses mail before TLS.
    /// `None` (the default): no TLS, CPython's dialogue.
    #[cfg(feature = "tls")]
    pub tls: Option<TlsConfig>,
    /// Implicit TLS (RFC 8314, "submissions", port 465): the handshake starts at accept and
    /// the greeting goes out over TLS; STARTTLS is not offered. Needs [`tls`](Self::tls).
    #[cfg(feature = "tls")]
    pub implicit_tls: bool,
    /// The longest a TLS handshake (after STARTTLS, or at accept) may take; the connection is
    /// then closed. Default 10 seconds.
    pub tls_handshake_timeout: Duration,
}

/// `127.0.0.0/8` and `::1/128`: the default [`ServerOptions::trusted_networks`].
pub fn loopback_networks() -> Vec<ipnet::IpNet> {
    vec![
        ipnet::IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::LOCALHOST, 8).expect("valid")),
        ipnet::IpNet::V6(ipnet::Ipv6Net::new(std::net::Ipv6Addr::LOCALHOST, 128).expect("valid")),
    ]
}

/// Default [`ServerOptions::data_memory_limit`].
pub const DATA_MEMORY_LIMIT: usize = 512 * 1024 * 1024;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            session: Config {
                hostname: fqdn(),
                max_recipients: 100,
                max_errors: 20,
                ..Config::default()
            },
            idle_timeout: Some(Duration::from_secs(300)),
            data_timeout: Some(Duration::from_secs(300)),
            min_data_rate: 500,
            defer_timeout: Duration::from_secs(240),
            greeting_delay: None,
            chat: ChatOptions::default(),
            max_connections: fd_connection_limit(),
            max_connections_per_ip: 50,
            trusted_networks: loopback_networks(),
            data_memory_limit: DATA_MEMORY_LIMIT,
            backlog: crate::reactor::LISTEN_BACKLOG,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            implicit_tls: false,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}
