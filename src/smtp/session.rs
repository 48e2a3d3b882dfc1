//! The session state machine: the only place where session state changes.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::address::{self, Path};
use super::command::{self, Verb};
use super::config::{
    default_ehlo_keywords, Config, COMMAND_SIZE_LIMIT, SIZE_EXTENSION_BYTES,
    SMTPUTF8_EXTENSION_BYTES,
};
use super::data::{self, DataError, DataPolicy};
use super::param::{Param, Recipient};
use super::peer::{Peer, TlsInfo};
use super::replies;
use super::reply::{echo, EnhancedCode, Reply};

/// The greeting: `220 {hostname} {product}`.
pub(super) fn greeting(config: &Config) -> Reply {
    Reply::new(220, format!("{} {}", config.hostname, config.product))
}

/// The reply to HELO: `250 {hostname}`.
fn helo_reply(config: &Config) -> Reply {
    Reply::new(250, config.hostname.clone())
}

/// The multi-line reply to EHLO: the hostname, then [`Config::ehlo_keywords`] or
/// [`default_ehlo_keywords`].
/// `STARTTLS` is listed (before a final `HELP`) when `starttls` says so: configured and not
/// yet encrypted.
fn ehlo_reply(config: &Config, starttls: bool) -> Reply {
    let mut lines = vec![config.hostname.clone()];
    match &config.ehlo_keywords {
        Some(keywords) => lines.extend(keywords.iter().cloned()),
        None => lines.extend(default_ehlo_keywords(config)),
    }
    if starttls {
        let at = match lines.last() {
            Some(last) if lines.len() > 1 && last == "HELP" => lines.len() - 1,
            _ => lines.len(),
        };
        lines.insert(at, "STARTTLS".to_owned());
    }
    Reply::multiline(250, lines)
}

/// `220 2.0.0 Ready to start TLS` (RFC 3207).
fn ready_to_start_tls() -> Reply {
    Reply::enhanced(220, EnhancedCode::new(2, 0, 0), "Ready to start TLS")
}

/// A command other than EHLO, HELO, NOOP, RSET, QUIT and STARTTLS before TLS with
/// [`Config::require_tls`].
fn must_starttls() -> Reply {
    Reply::enhanced(
        530,
        EnhancedCode::new(5, 7, 0),
        "Must issue a STARTTLS command first",
    )
}

/// After `max_errors` protocol errors (not in CPython): `421 4.7.0 {hostname} Error: too
/// many errors`; the connection closes.
fn too_many_errors(config: &Config) -> Reply {
    Reply::enhanced(
        421,
        EnhancedCode::new(4, 7, 0),
        format!("{} Error: too many errors", config.hostname),
    )
}

/// What the caller must frame next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Framing {
    /// A command line ending in CRLF; pass it without the CRLF to
    /// [`Session::feed_line`].
    Line,
    /// A message body ending in CRLF `.` CRLF; pass it to
    /// [`Session::feed_data`] (see there for the exact bytes).
    Data,
}

/// What the session asks the caller to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send this reply.
    Reply(Reply),
    /// Decide this request, then answer it with [`Session::resolve`] (or
    /// [`Receiver::resolve`](super::Receiver::resolve)). Nothing may be fed until then.
    Decide(Request),
    /// The open transaction (a sender was accepted) ended without its message being handed
    /// out: RSET, a new HELO/EHLO, a refused or oversize body, QUIT or the error limit.
    Reset,
    /// Close the connection once everything before it has been sent.
    Close,
    /// STARTTLS was accepted: send this reply (`220 2.0.0 Ready to start TLS`) in plaintext,
    /// then run the TLS handshake and call [`Session::tls_established`] (or
    /// [`Receiver::tls_established`](super::Receiver::tls_established)) when it is done.
    /// Nothing the client sent after the STARTTLS line may be acted on (RFC 3207, the
    /// CVE-2011-0411 class): the [`Receiver`](super::Receiver) discards it, and the session
    /// takes no input until then.
    StartTls(Reply),
}

/// What the session asks the caller to decide ([`Output::Decide`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// A client connected (only with [`Config::check_connect`]): [`Decision::Default`]
    /// sends the `220` greeting; a `2xx` reply greets with its own text; any other reply is
    /// sent instead of the greeting and the session closes.
    Connect,
    /// A `HELO` or `EHLO` (only with [`Config::check_helo`]), before the built-in checks:
    /// [`Decision::Default`] runs CPython's handling (`250 <hostname>`, the EHLO keywords,
    /// or its syntax and duplicate errors); a `2xx` reply greets the session with that text
    /// (the built-in checks keep their own answers); any other reply refuses the greeting.
    Helo(HeloCheck),
    /// A syntactically valid `MAIL FROM` (only with [`Config::check_mail`]): a `2xx`
    /// reply (or [`Decision::Default`], `250 OK`) starts the transaction.
    Mail(AddressCheck),
    /// A syntactically valid `RCPT TO` (only with [`Config::check_rcpt`]): a `2xx` reply
    /// (or [`Decision::Default`], `250 OK`) adds the recipient.
    Rcpt(AddressCheck),
    /// A command whose verb is in [`Config::custom_verbs`]: [`Decision::Default`] runs the
    /// built-in handling (CPython's; `250 OK` for a verb the session does not know).
    Command(CommandCheck),
    /// A received message: deliver it; [`Decision::Default`] answers `250 OK`.
    Message(Message),
}

/// The answer to a [`Request`], given to [`Session::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// What the session does without a decider: greet, run the built-in command, or
    /// `250 OK` for a sender, a recipient or a message.
    Default,
    /// Answer with this reply (see each [`Request`] for what a `2xx` reply means).
    Reply(Reply),
}

impl From<Reply> for Decision {
    fn from(reply: Reply) -> Decision {
        Decision::Reply(reply)
    }
}

/// A call the session cannot take in its state: a caller bug, reported instead of ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UsageError {
    /// [`Session::resolve`] without a pending request.
    NothingToResolve,
    /// Input fed while a request waits for its decision.
    Deciding,
    /// Input of the wrong kind for the state (a command line during DATA, a body outside it).
    WrongFraming,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UsageError::NothingToResolve => "resolve called without a pending request",
            UsageError::Deciding => "input fed while a request waits for its decision",
            UsageError::WrongFraming => "input of the wrong kind for the session's state",
        })
    }
}

impl std::error::Error for UsageError {}

/// A `HELO`/`EHLO` waiting for a decision ([`Request::Helo`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeloCheck {
    /// The name the client gave (may be empty: the built-in handling answers the syntax error).
    pub name: String,
    /// `EHLO` rather than `HELO`.
    pub extended: bool,
}

/// A command whose verb the caller handles itself.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandCheck {
    /// The verb, upper-cased.
    pub verb: String,
    /// The rest of the line, stripped as CPython strips it.
    pub arg: String,
}

/// A MAIL FROM or RCPT TO that passed the syntax checks and waits for a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddressCheck {
    /// The address without angle brackets (`"<>"` for the null reverse-path).
    pub address: String,
    /// The command's parameters, upper-cased as in [`Message::mail_options`] (CPython's
    /// view of [`params`](Self::params)).
    pub options: Vec<String>,
    /// The command's parameters as the client sent them.
    pub params: Vec<Param>,
}

/// What a pending decision is about; lives in [`State::Deciding`].
#[derive(Debug)]
enum Pending {
    Connect,
    Helo {
        extended: bool,
        name: String,
    },
    /// The envelope MAIL would start.
    Mail(Box<Envelope>),
    /// A recipient, and its parameters in CPython's form.
    Rcpt(Recipient, Vec<String>),
    Command(String, String),
    Message,
}

/// A received message, as CPython hands it to `process_message`.
///
/// The envelope is here twice: typed and case-preserving ([`mail_params`](Self::mail_params),
/// [`recipients`](Self::recipients), each recipient with its own parameters), and as
/// CPython's views ([`rcpt_tos`](Self::rcpt_tos), the upper-cased
/// [`mail_options`](Self::mail_options) and [`rcpt_options`](Self::rcpt_options)), kept for
/// code ported from Python. Build one with [`Message::new`] and the `with_*` methods (for
/// tests of hooks): more fields may come.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The client's address.
    pub peer: SocketAddr,
    /// The HELO/EHLO argument.
    pub helo: Option<String>,
    /// The reverse-path without angle brackets (`"<>"` for the null path).
    pub mail_from: String,
    /// The forward-paths without angle brackets, in order: CPython's view of
    /// [`recipients`](Self::recipients).
    pub rcpt_tos: Vec<String>,
    /// The message: dot-unstuffed, lines joined with CRLF (or LF when
    /// `Config::lf_newlines`), without the final line break.
    pub data: Vec<u8>,
    /// The MAIL parameters, upper-cased and split on whitespace
    /// (`["SIZE=20", "BODY=8BITMIME"]`): CPython's view of [`mail_params`](Self::mail_params).
    pub mail_options: Vec<String>,
    /// The parameters of the last accepted RCPT, in the same form (CPython keeps only the
    /// last); every recipient's own are in [`recipients`](Self::recipients).
    pub rcpt_options: Vec<String>,
    /// Whether MAIL carried the SMTPUTF8 parameter.
    pub smtputf8: bool,
    /// The MAIL parameters as the client sent them, in order.
    pub mail_params: Vec<Param>,
    /// The accepted recipients, in order, each with its RCPT parameters.
    pub recipients: Vec<Recipient>,
    /// The TLS facts when the message came over an encrypted connection.
    pub tls: Option<Box<TlsInfo>>,
}

impl Message {
    /// A message from `mail_from` to `rcpt_tos` (recipients without parameters), received
    /// from `peer`, without HELO name or MAIL parameters: for testing hooks without a socket.
    pub fn new<I, S>(
        peer: SocketAddr,
        mail_from: impl Into<String>,
        rcpt_tos: I,
        data: impl Into<Vec<u8>>,
    ) -> Message
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut message = Message {
            peer,
            helo: None,
            mail_from: mail_from.into(),
            rcpt_tos: Vec::new(),
            data: data.into(),
            mail_options: Vec::new(),
            rcpt_options: Vec::new(),
            smtputf8: false,
            mail_params: Vec::new(),
            recipients: Vec::new(),
            tls: None,
        };
        for rcpt in rcpt_tos {
            message = message.with_recipient(Recipient::new(rcpt, Vec::new()));
        }
        message
    }

    /// The HELO/EHLO name the client gave.
    pub fn with_helo(mut self, helo: impl Into<String>) -> Message {
        self.helo = Some(helo.into());
        self
    }

    /// The MAIL parameters (also sets CPython's [`mail_options`](Self::mail_options) view).
    pub fn with_mail_params(mut self, params: Vec<Param>) -> Message {
        self.mail_options = params.iter().map(Param::to_option).collect();
        self.mail_params = params;
        self
    }

    /// One more recipient (also added to [`rcpt_tos`](Self::rcpt_tos); its parameters become
    /// [`rcpt_options`](Self::rcpt_options)).
    pub fn with_recipient(mut self, recipient: Recipient) -> Message {
        self.rcpt_tos.push(recipient.address.clone());
        self.rcpt_options = recipient.options();
        self.recipients.push(recipient);
        self
    }

    /// Whether MAIL carried the SMTPUTF8 parameter.
    pub fn with_smtputf8(mut self, smtputf8: bool) -> Message {
        self.smtputf8 = smtputf8;
        self
    }

    /// The TLS facts of the connection it came over.
    pub fn with_tls(mut self, tls: TlsInfo) -> Message {
        self.tls = Some(Box::new(tls));
        self
    }

    /// The value of the MAIL parameter `keyword` (ignoring ASCII case), as [`Param::find`].
    pub fn mail_param(&self, keyword: &str) -> Option<Option<&str>> {
        Param::find(&self.mail_params, keyword)
    }
}

/// The mail transaction being built: set by MAIL, extended by RCPT.
///
/// As in [`Message`], the typed parameters and recipients come with CPython's views.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Envelope {
    /// The reverse-path without angle brackets (`"<>"` for the null path).
    pub mail_from: String,
    /// The MAIL parameters, upper-cased and split on whitespace: CPython's view of
    /// [`mail_params`](Self::mail_params).
    pub mail_options: Vec<String>,
    /// The accepted forward-paths, in order: CPython's view of
    /// [`recipients`](Self::recipients).
    pub rcpt_tos: Vec<String>,
    /// The parameters of the last accepted RCPT, upper-cased (CPython's view).
    pub rcpt_options: Vec<String>,
    /// Whether MAIL carried the SMTPUTF8 parameter.
    pub smtputf8: bool,
    /// The MAIL parameters as the client sent them, in order.
    pub mail_params: Vec<Param>,
    /// The accepted recipients, in order, each with its RCPT parameters as sent.
    pub recipients: Vec<Recipient>,
}

impl Envelope {
    /// Adds an accepted recipient; `options` is CPython's view of its parameters.
    fn add(&mut self, recipient: Recipient, options: Vec<String>) {
        self.rcpt_tos.push(recipient.address.clone());
        self.rcpt_options = options;
        self.recipients.push(recipient);
    }

    /// The value of the MAIL parameter `keyword` (ignoring ASCII case), as [`Param::find`].
    pub fn mail_param(&self, keyword: &str) -> Option<Option<&str>> {
        Param::find(&self.mail_params, keyword)
    }
}

/// Where the session is. Each state carries the data that exists in it.
#[derive(Debug)]
enum State {
    /// Reading commands; `envelope` is set between MAIL and the end of the
    /// transaction.
    /// (Envelopes are boxed: an idle connection carries only a pointer's worth of them.)
    Command { envelope: Option<Box<Envelope>> },
    /// Waiting for the caller's [`Decision`] on `what`; `envelope` is the transaction as it
    /// was when the request was made (none for a message: it was handed out).
    Deciding {
        envelope: Option<Box<Envelope>>,
        what: Pending,
    },
    /// Reading the message body after `354`.
    Data { envelope: Box<Envelope> },
    /// `220 Ready to start TLS` was sent: no input until [`Session::tls_established`].
    Handshake,
    /// QUIT was received, the connection was refused, or the error limit was reached.
    Closed,
}

/// The server side of one SMTP connection, without I/O: the meaning of command lines and
/// bodies. [`Receiver`](super::Receiver) frames bytes for it; use that.
pub struct Session {
    config: Arc<Config>,
    peer: Peer,
    /// The HELO/EHLO argument once accepted, and whether it was EHLO.
    greeting: Option<(String, bool)>,
    state: State,
    /// Protocol errors so far (see [`Config::max_errors`]).
    errors: usize,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("greeting", &self.greeting)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn push(out: &mut Vec<Output>, reply: impl Into<Reply>) {
    out.push(Output::Reply(reply.into()));
}

fn is_positive(reply: &Reply) -> bool {
    (200..300).contains(&reply.code)
}

impl Session {
    /// A new session for a client at `peer`. `config` should have passed
    /// [`Config::validate`].
    pub fn new(config: Arc<Config>, peer: SocketAddr) -> Session {
        Session::with_peer(config, Peer::new(peer))
    }

    /// A new session for the client `peer` (its address and what else is known about the
    /// connection). `config` should have passed [`Config::validate`].
    pub fn with_peer(config: Arc<Config>, peer: Peer) -> Session {
        debug_assert!(config.validate().is_ok(), "invalid smtp Config");
        Session {
            config,
            peer,
            greeting: None,
            state: State::Command { envelope: None },
            errors: 0,
        }
    }

    /// Pushes the `220` greeting, or [`Request::Connect`] with [`Config::check_connect`].
    /// Call once, before feeding anything.
    pub fn start(&mut self, out: &mut Vec<Output>) {
        log::debug!("smtp session with {}", self.peer.addr);
        if self.config.check_connect {
            self.state = State::Deciding {
                envelope: None,
                what: Pending::Connect,
            };
            out.push(Output::Decide(Request::Connect));
        } else {
            out.push(Output::Reply(greeting(&self.config)));
        }
    }

    /// What the caller must frame next.
    pub fn framing(&self) -> Framing {
        match self.state {
            State::Data { .. } => Framing::Data,
            _ => Framing::Line,
        }
    }

    /// The largest allowed size of the next unit in bytes: a command line
    /// without CRLF, or a DATA body as passed to [`Session::feed_data`].
    /// `None` means unlimited. Longer units must be discarded and reported
    /// with [`Session::feed_oversize`].
    pub fn input_limit(&self) -> Option<usize> {
        match self.state {
            State::Data { .. } => match self.config.data_size_limit {
                0 => None,
                n => Some(n),
            },
            _ => Some(self.mail_limit().max(COMMAND_SIZE_LIMIT)),
        }
    }

    /// Whether a request waits for [`Session::resolve`]: nothing may be fed until then.
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, State::Deciding { .. })
    }

    /// Whether the session ended (QUIT, a refused connection, the error limit).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The transaction in progress, from MAIL until the message is handed
    /// out or the transaction is reset.
    pub fn envelope(&self) -> Option<&Envelope> {
        match &self.state {
            State::Command { envelope } | State::Deciding { envelope, .. } => envelope.as_deref(),
            State::Data { envelope } => Some(envelope),
            State::Closed | State::Handshake => None,
        }
    }

    /// Whether the session waits for a TLS handshake after [`Output::StartTls`]: it takes no
    /// input until [`tls_established`](Self::tls_established).
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshake)
    }

    /// Whether the connection is encrypted (STARTTLS done, or an implicit-TLS listener).
    pub fn is_tls(&self) -> bool {
        self.peer.is_tls()
    }

    /// The TLS handshake finished with `info`: the session now counts as encrypted (EHLO no
    /// longer lists STARTTLS) and, after STARTTLS, starts afresh as RFC 3207 4.2 requires —
    /// no HELO/EHLO name, no transaction; the client must greet again. On an implicit-TLS
    /// listener call it before [`start`](Self::start).
    pub fn tls_established(&mut self, info: TlsInfo) {
        log::debug!("smtp {} TLS established: {info}", self.peer.addr);
        self.peer.tls = Some(Box::new(info));
        self.greeting = None;
        if matches!(self.state, State::Handshake) {
            self.state = State::Command { envelope: None };
        }
    }

    /// Whether a transaction is open: a sender accepted or being decided, and its message
    /// not handed out yet. When the connection ends in this state, the transaction ends
    /// without delivery.
    pub fn in_transaction(&self) -> bool {
        match &self.state {
            State::Deciding {
                what: Pending::Mail(_),
                ..
            } => true,
            State::Deciding {
                what: Pending::Message,
                ..
            } => false,
            _ => self.envelope().is_some(),
        }
    }

    /// The HELO/EHLO argument, once accepted.
    pub fn helo(&self) -> Option<&str> {
        self.greeting.as_ref().map(|(name, _)| name.as_str())
    }

    /// Whether the client greeted with EHLO.
    pub fn is_esmtp(&self) -> bool {
        matches!(self.greeting, Some((_, true)))
    }

    /// The client's address ([`Peer::addr`]).
    pub fn peer(&self) -> SocketAddr {
        self.peer.addr
    }

    /// What is known about the client: its address and, once encrypted, its TLS facts.
    pub fn peer_info(&self) -> &Peer {
        &self.peer
    }

    /// The settings of this session.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The length limit of a MAIL line: 512, plus what the EHLO extensions add.
    fn mail_limit(&self) -> usize {
        let mut limit = COMMAND_SIZE_LIMIT;
        if self.is_esmtp() {
            if self.config.data_size_limit != 0 {
                limit += SIZE_EXTENSION_BYTES;
            }
            if self.config.enable_smtputf8 {
                limit += SMTPUTF8_EXTENSION_BYTES;
            }
        }
        limit
    }

    /// The limit for one command line, as CPython's `command_size_limits`:
    /// 512, except MAIL after EHLO.
    fn command_limit(&self, verb: &str) -> usize {
        if verb == "MAIL" {
            self.mail_limit()
        } else {
            COMMAND_SIZE_LIMIT
        }
    }

    /// Whether echoed text may keep non-ASCII characters.
    fn utf8_replies(&self) -> bool {
        self.envelope().is_some_and(|e| e.smtputf8)
    }

    /// Ends the transaction, keeping the greeting; reports it when one was open.
    fn reset(&mut self, out: &mut Vec<Output>) {
        if self.envelope().is_some() {
            out.push(Output::Reset);
        }
        self.state = State::Command { envelope: None };
    }

    /// Waits for a decision on `what`, keeping the transaction as it is.
    fn decide(&mut self, what: Pending, request: Request, out: &mut Vec<Output>) {
        let envelope = match std::mem::replace(&mut self.state, State::Closed) {
            State::Command { envelope } => envelope,
            State::Data { envelope } => Some(envelope),
            State::Deciding { envelope, .. } => envelope,
            State::Closed | State::Handshake => None,
        };
        self.state = State::Deciding { envelope, what };
        out.push(Output::Decide(request));
    }

    /// Feeds one command line without its CRLF.
    ///
    /// Pushes exactly one reply (QUIT adds [`Output::Close`]) or one
    /// [`Output::Decide`]. Lines containing a CR or LF, lines that are not UTF-8, and empty
    /// lines get `500 Error: bad syntax`. Ignored after the session closed.
    ///
    /// With [`Config::max_errors`], the reply that makes the error count reach the limit is
    /// followed by `421 4.7.0 ... too many errors` and [`Output::Close`].
    ///
    /// # Errors
    /// [`UsageError`] while a decision is pending or during DATA; nothing changes.
    pub fn feed_line(&mut self, line: &[u8], out: &mut Vec<Output>) -> Result<(), UsageError> {
        match self.state {
            State::Command { .. } => {}
            State::Closed => return Ok(()),
            State::Deciding { .. } | State::Handshake => return Err(UsageError::Deciding),
            State::Data { .. } => return Err(UsageError::WrongFraming),
        }
        let before = out.len();
        self.command_line(line, out);
        self.count_errors(before, out);
        Ok(())
    }

    /// Counts the protocol errors among `out[before..]`; closes the session at the limit.
    fn count_errors(&mut self, before: usize, out: &mut Vec<Output>) {
        let errors = out[before..]
            .iter()
            .filter(|o| matches!(o, Output::Reply(r) if replies::is_protocol_error(r.code)))
            .count();
        self.errors += errors;
        let max = self.config.max_errors;
        if errors > 0 && max != 0 && self.errors >= max && !self.is_closed() {
            log::info!(
                "smtp {}: {} protocol errors; closing",
                self.peer.addr,
                self.errors
            );
            if self.in_transaction() {
                out.push(Output::Reset);
            }
            out.push(Output::Reply(too_many_errors(&self.config)));
            out.push(Output::Close);
            self.state = State::Closed;
        }
    }

    /// Protocol errors so far in this session.
    pub fn error_count(&self) -> usize {
        self.errors
    }

    fn command_line(&mut self, line: &[u8], out: &mut Vec<Output>) {
        if line.is_empty() || memchr::memchr2(b'\r', b'\n', line).is_some() {
            return push(out, replies::BAD_SYNTAX);
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return push(out, replies::BAD_SYNTAX);
        };
        let cmd = command::split(text);
        if line.len() > self.command_limit(&cmd.verb) {
            return push(out, replies::LINE_TOO_LONG);
        }
        if self.config.require_tls
            && !self.is_tls()
            && !matches!(
                cmd.verb.as_str(),
                "EHLO" | "HELO" | "NOOP" | "RSET" | "QUIT" | "STARTTLS"
            )
        {
            return push(out, must_starttls());
        }
        if self.config.custom_verbs.contains(&cmd.verb) {
            let request = Request::Command(CommandCheck {
                verb: cmd.verb.clone(),
                arg: cmd.arg.to_owned(),
            });
            return self.decide(Pending::Command(cmd.verb, cmd.arg.to_owned()), request, out);
        }
        let hello = cmd.verb == "HELO" || cmd.verb == "EHLO";
        if hello && self.config.check_helo {
            let extended = cmd.verb == "EHLO";
            let name = cmd.arg.to_owned();
            let request = Request::Helo(HeloCheck {
                name: name.clone(),
                extended,
            });
            return self.decide(Pending::Helo { extended, name }, request, out);
        }
        self.run(&cmd.verb, cmd.arg, out);
    }

    /// Runs a command the built-in way (unknown verbs get `500`).
    fn run(&mut self, verb: &str, arg: &str, out: &mut Vec<Output>) {
        let known = match Verb::from_upper(verb) {
            // Without a TLS setup STARTTLS is unknown, as in CPython (over implicit TLS it is
            // "already active").
            Some(Verb::Starttls) if !self.config.starttls && !self.is_tls() => None,
            known => known,
        };
        let Some(verb) = known else {
            let shown = echo(verb, self.utf8_replies());
            return push(out, replies::command_not_recognized(&shown));
        };
        log::trace!("smtp {} command {:?}", self.peer.addr, verb);
        match verb {
            Verb::Helo | Verb::Ehlo => self.hello(verb == Verb::Ehlo, arg, out),
            Verb::Noop if arg.is_empty() => push(out, replies::OK),
            Verb::Noop => push(out, replies::NOOP_SYNTAX),
            Verb::Quit => {
                if self.in_transaction() {
                    out.push(Output::Reset);
                }
                push(out, replies::BYE);
                out.push(Output::Close);
                self.state = State::Closed;
            }
            Verb::Help if arg.is_empty() => push(out, replies::HELP_ALL),
            Verb::Help => push(out, replies::help(arg, self.is_esmtp())),
            Verb::Vrfy => self.vrfy(arg, out),
            Verb::Mail => self.mail(arg, out),
            Verb::Rcpt => self.rcpt(arg, out),
            Verb::Rset if arg.is_empty() => {
                self.reset(out);
                push(out, replies::OK);
            }
            Verb::Rset => push(out, replies::RSET_SYNTAX),
            Verb::Data => self.data(arg, out),
            Verb::Expn => push(out, replies::EXPN_NOT_IMPLEMENTED),
            Verb::Starttls => self.starttls(arg, out),
        }
    }

    /// STARTTLS (RFC 3207): no parameters, once per connection; the transaction and the
    /// greeting are forgotten.
    fn starttls(&mut self, arg: &str, out: &mut Vec<Output>) {
        if !arg.is_empty() {
            return push(
                out,
                Reply::enhanced(
                    501,
                    EnhancedCode::new(5, 5, 4),
                    "Syntax error (no parameters allowed)",
                ),
            );
        }
        if self.is_tls() {
            return push(
                out,
                Reply::enhanced(503, EnhancedCode::new(5, 5, 1), "Error: TLS already active"),
            );
        }
        self.reset(out);
        self.greeting = None;
        self.state = State::Handshake;
        out.push(Output::StartTls(ready_to_start_tls()));
    }

    fn hello(&mut self, extended: bool, arg: &str, out: &mut Vec<Output>) {
        if arg.is_empty() {
            let syntax = if extended {
                replies::EHLO_SYNTAX
            } else {
                replies::HELO_SYNTAX
            };
            return push(out, syntax);
        }
        if self.greeting.is_some() {
            return push(out, replies::DUPLICATE_HELO);
        }
        self.reset(out);
        self.greeting = Some((arg.to_owned(), extended));
        if extended {
            push(
                out,
                ehlo_reply(&self.config, self.config.starttls && !self.is_tls()),
            );
        } else {
            push(out, helo_reply(&self.config));
        }
    }

    fn vrfy(&mut self, arg: &str, out: &mut Vec<Output>) {
        if arg.is_empty() {
            return push(out, replies::VRFY_SYNTAX);
        }
        if address::parse_path(arg, false).is_ok() {
            push(out, replies::CANNOT_VRFY);
        } else {
            let shown = echo(arg, self.utf8_replies());
            push(out, replies::could_not_vrfy(&shown));
        }
    }

    fn mail(&mut self, arg: &str, out: &mut Vec<Output>) {
        if self.greeting.is_none() {
            return push(out, replies::SEND_HELO_FIRST);
        }
        let esmtp = self.is_esmtp();
        let syntax = replies::mail_syntax(esmtp);
        let arg = command::strip_keyword("FROM:", arg);
        let Ok(Path {
            address,
            rest,
            non_ascii,
        }) = address::parse_path(arg, true)
        else {
            return push(out, syntax);
        };
        if !esmtp && !rest.is_empty() {
            return push(out, syntax);
        }
        if self.envelope().is_some() {
            return push(out, replies::NESTED_MAIL);
        }
        let options = command::options(rest);
        let Some(mut params) = command::params(&options) else {
            return push(out, syntax);
        };
        if !self.config.decode_data {
            match params.remove("BODY") {
                None => {}
                Some(Some(body)) if body == "7BIT" || body == "8BITMIME" => {}
                Some(_) => return push(out, replies::BODY_INVALID),
            }
        }
        let mut smtputf8 = false;
        if self.config.enable_smtputf8 {
            match params.remove("SMTPUTF8") {
                None => {}
                Some(None) => smtputf8 = true,
                Some(Some(_)) => return push(out, replies::SMTPUTF8_NO_ARGS),
            }
        }
        if let Some(size) = params.remove("SIZE") {
            // CPython crashes on a bare `SIZE`; it is a syntax error.
            let Some(size) = size.filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else {
                return push(out, syntax);
            };
            let limit = self.config.data_size_limit;
            // Digits that overflow u64 are certainly above any limit.
            if limit != 0 && size.parse::<u64>().map_or(true, |n| n > limit as u64) {
                return push(out, replies::SIZE_EXCEEDED);
            }
        }
        if !params.is_empty() {
            return push(out, replies::MAIL_PARAMS_UNKNOWN);
        }
        if non_ascii && !smtputf8 {
            return push(out, replies::NON_ASCII_ADDRESS);
        }
        log::trace!("smtp {} sender {:?}", self.peer.addr, address);
        let envelope = Envelope {
            mail_from: address,
            mail_options: options,
            rcpt_tos: Vec::new(),
            rcpt_options: Vec::new(),
            smtputf8,
            mail_params: command::typed_params(rest),
            recipients: Vec::new(),
        };
        if self.config.check_mail {
            let request = Request::Mail(AddressCheck {
                address: envelope.mail_from.clone(),
                options: envelope.mail_options.clone(),
                params: envelope.mail_params.clone(),
            });
            return self.decide(Pending::Mail(Box::new(envelope)), request, out);
        }
        self.state = State::Command {
            envelope: Some(Box::new(envelope)),
        };
        push(out, replies::OK);
    }

    fn rcpt(&mut self, arg: &str, out: &mut Vec<Output>) {
        if self.greeting.is_none() {
            return push(out, replies::SEND_HELO_FIRST);
        }
        let esmtp = self.is_esmtp();
        let max = self.config.max_recipients;
        let check = self.config.check_rcpt;
        let State::Command {
            envelope: Some(envelope),
        } = &mut self.state
        else {
            return push(out, replies::NEED_MAIL);
        };
        let syntax = replies::rcpt_syntax(esmtp);
        let arg = command::strip_keyword("TO:", arg);
        let Ok(Path {
            address,
            rest,
            non_ascii,
        }) = address::parse_path(arg, false)
        else {
            return push(out, syntax);
        };
        if !esmtp && !rest.is_empty() {
            return push(out, syntax);
        }
        let options = command::options(rest);
        let Some(params) = command::params(&options) else {
            return push(out, syntax);
        };
        if !params.is_empty() {
            return push(out, replies::RCPT_PARAMS_UNKNOWN);
        }
        if non_ascii && !envelope.smtputf8 {
            return push(out, replies::NON_ASCII_ADDRESS);
        }
        if max != 0 && envelope.rcpt_tos.len() >= max {
            return push(out, replies::TOO_MANY_RECIPIENTS);
        }
        let recipient = Recipient::new(address, command::typed_params(rest));
        if check {
            let request = Request::Rcpt(AddressCheck {
                address: recipient.address.clone(),
                options: options.clone(),
                params: recipient.params.clone(),
            });
            return self.decide(Pending::Rcpt(recipient, options), request, out);
        }
        envelope.add(recipient, options);
        push(out, replies::OK);
    }

    /// Answers the pending [`Request`] (see there for what each decision means) and pushes
    /// what follows.
    ///
    /// # Errors
    /// [`UsageError::NothingToResolve`] when no request is pending; nothing changes.
    pub fn resolve(&mut self, decision: Decision, out: &mut Vec<Output>) -> Result<(), UsageError> {
        if !self.is_waiting() {
            return Err(UsageError::NothingToResolve);
        }
        let State::Deciding { envelope, what } = std::mem::replace(&mut self.state, State::Closed)
        else {
            unreachable!("checked by is_waiting");
        };
        self.state = State::Command { envelope };
        let before = out.len();
        match what {
            Pending::Connect => match decision {
                Decision::Default => push(out, greeting(&self.config)),
                Decision::Reply(reply) if is_positive(&reply) => out.push(Output::Reply(reply)),
                Decision::Reply(reply) => {
                    out.push(Output::Reply(reply));
                    out.push(Output::Close);
                    self.state = State::Closed;
                }
            },
            Pending::Helo { extended, name } => {
                let verb = if extended { "EHLO" } else { "HELO" };
                match decision {
                    Decision::Default => self.run(verb, &name, out),
                    Decision::Reply(reply) if is_positive(&reply) => {
                        self.greet_with(verb, &name, reply, out);
                    }
                    Decision::Reply(reply) => out.push(Output::Reply(reply)),
                }
            }
            Pending::Mail(new) => {
                let reply = match decision {
                    Decision::Default => replies::OK.reply(),
                    Decision::Reply(reply) => reply,
                };
                // A refused sender never opened a transaction: nothing to reset.
                if is_positive(&reply) {
                    self.state = State::Command {
                        envelope: Some(new),
                    };
                }
                out.push(Output::Reply(reply));
            }
            Pending::Rcpt(recipient, options) => {
                let reply = match decision {
                    Decision::Default => replies::OK.reply(),
                    Decision::Reply(reply) => reply,
                };
                if is_positive(&reply) {
                    if let State::Command {
                        envelope: Some(envelope),
                    } = &mut self.state
                    {
                        envelope.add(recipient, options);
                    }
                }
                out.push(Output::Reply(reply));
            }
            Pending::Command(verb, arg) => match decision {
                // An overridden HELO/EHLO answered with the caller's own 2xx still greets.
                Decision::Reply(reply)
                    if is_positive(&reply) && matches!(verb.as_str(), "HELO" | "EHLO") =>
                {
                    self.greet_with(&verb, &arg, reply, out);
                }
                Decision::Reply(reply) => out.push(Output::Reply(reply)),
                Decision::Default if Verb::from_upper(&verb).is_some() => {
                    self.run(&verb, &arg, out)
                }
                Decision::Default => push(out, replies::OK),
            },
            Pending::Message => {
                let reply = match decision {
                    Decision::Default => replies::OK.reply(),
                    Decision::Reply(reply) => reply,
                };
                self.state = State::Command { envelope: None };
                out.push(Output::Reply(reply));
                return Ok(());
            }
        }
        // Errors answered here count as if the line had been run at once.
        self.count_errors(before, out);
        Ok(())
    }

    /// A greeting the caller accepted with its own text: it greets the session as the
    /// built-in would, with `reply` in place of the built-in `2xx`; the built-in checks
    /// (syntax, duplicate) keep their own answers.
    fn greet_with(&mut self, verb: &str, name: &str, reply: Reply, out: &mut Vec<Output>) {
        let mut own = Vec::new();
        self.run(verb, name, &mut own);
        for output in own {
            match output {
                Output::Reply(r) if is_positive(&r) => out.push(Output::Reply(reply.clone())),
                other => out.push(other),
            }
        }
    }

    fn data(&mut self, arg: &str, out: &mut Vec<Output>) {
        if self.greeting.is_none() {
            return push(out, replies::SEND_HELO_FIRST);
        }
        if self.envelope().is_none_or(|e| e.rcpt_tos.is_empty()) {
            return push(out, replies::NEED_RCPT);
        }
        if !arg.is_empty() {
            return push(out, replies::DATA_SYNTAX);
        }
        if let State::Command {
            envelope: Some(envelope),
        } = std::mem::replace(&mut self.state, State::Closed)
        {
            self.state = State::Data { envelope };
        }
        push(out, replies::START_DATA);
    }

    /// Feeds the DATA body: everything after `DATA\r\n` up to, excluding,
    /// the final `\r\n.\r\n` (empty for a `.` right after DATA). Lines are
    /// CRLF-separated with no trailing CRLF.
    ///
    /// Pushes [`Request::Message`] and starts waiting, or pushes a refusal
    /// (too much data, bare LF, not UTF-8) and ends the transaction.
    ///
    /// # Errors
    /// [`UsageError::WrongFraming`] outside DATA; nothing changes.
    pub fn feed_data(&mut self, body: &[u8], out: &mut Vec<Output>) -> Result<(), UsageError> {
        let envelope = match std::mem::replace(&mut self.state, State::Closed) {
            State::Data { envelope } => envelope,
            other => {
                self.state = other;
                return Err(UsageError::WrongFraming);
            }
        };
        let limit = self.config.data_size_limit;
        if limit != 0 && body.len() > limit {
            self.state = State::Data { envelope };
            self.reset(out);
            push(out, replies::TOO_MUCH_DATA);
            return Ok(());
        }
        let policy = DataPolicy {
            bare_lf: self.config.bare_lf,
            lf_newlines: self.config.lf_newlines,
            require_utf8: self.config.decode_data,
        };
        match data::build_message(body, policy) {
            Ok(data) => {
                log::debug!(
                    "smtp {} message of {} bytes for {} recipients",
                    self.peer.addr,
                    data.len(),
                    envelope.rcpt_tos.len()
                );
                self.state = State::Deciding {
                    envelope: None,
                    what: Pending::Message,
                };
                out.push(Output::Decide(Request::Message(Message {
                    peer: self.peer.addr,
                    helo: self.helo().map(str::to_owned),
                    mail_from: envelope.mail_from,
                    rcpt_tos: envelope.rcpt_tos,
                    data,
                    mail_options: envelope.mail_options,
                    rcpt_options: envelope.rcpt_options,
                    smtputf8: envelope.smtputf8,
                    mail_params: envelope.mail_params,
                    recipients: envelope.recipients,
                    tls: self.peer.tls.clone(),
                })));
            }
            Err(err) => {
                self.state = State::Data { envelope };
                self.reset(out);
                push(
                    out,
                    match err {
                        DataError::BareLf => replies::BARE_LF,
                        DataError::NotUtf8 => replies::DATA_NOT_UTF8,
                    },
                );
            }
        }
        Ok(())
    }

    /// Reports that the caller discarded a unit longer than
    /// [`Session::input_limit`]: a command line gets `500 Error: line too
    /// long`; a DATA body gets `552 Error: Too much mail data` and the
    /// transaction ends (the session is back in command state).
    ///
    /// # Errors
    /// [`UsageError::Deciding`] while a decision is pending; nothing changes.
    pub fn feed_oversize(&mut self, out: &mut Vec<Output>) -> Result<(), UsageError> {
        match self.state {
            State::Command { .. } => {
                let before = out.len();
                push(out, replies::LINE_TOO_LONG);
                self.count_errors(before, out);
            }
            State::Data { .. } => {
                self.reset(out);
                push(out, replies::TOO_MUCH_DATA);
            }
            State::Closed => {}
            State::Deciding { .. } | State::Handshake => return Err(UsageError::Deciding),
        }
        Ok(())
    }

    /// Reports that the caller discarded a DATA body for a reason of its own (the server ran
    /// out of memory for message data): pushes `reply` and ends the transaction, as
    /// [`feed_data`](Self::feed_data) does for a refused body.
    ///
    /// # Errors
    /// [`UsageError::WrongFraming`] outside DATA; nothing changes.
    pub fn feed_data_refused(
        &mut self,
        reply: Reply,
        out: &mut Vec<Output>,
    ) -> Result<(), UsageError> {
        if let State::Data { .. } = self.state {
            self.reset(out);
            out.push(Output::Reply(reply));
            Ok(())
        } else {
            Err(UsageError::WrongFraming)
        }
    }
}
