//! The session state machine: the only place where session state changes.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use super::address::{self, Path};
use super::command::{self, Verb};
use super::config::{Config, COMMAND_SIZE_LIMIT, SIZE_EXTENSION_BYTES, SMTPUTF8_EXTENSION_BYTES};
use super::data::{self, DataError, DataPolicy};
use super::replies;
use super::reply::{echo, Reply};

/// What the caller must frame next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// Deliver this message, then call [`Session::message_done`] with the
    /// verdict. Nothing may be fed until then.
    Message(Message),
    /// Close the connection once everything before it has been sent.
    Close,
    /// Decide this MAIL FROM (only with [`Config::check_mail`]), then call
    /// [`Session::check_done`]. Nothing may be fed until then.
    CheckMail(AddressCheck),
    /// Decide this RCPT TO (only with [`Config::check_rcpt`]), then call
    /// [`Session::check_done`]. Nothing may be fed until then.
    CheckRcpt(AddressCheck),
    /// Handle this command (its verb is in [`Config::custom_verbs`]), then call
    /// [`Session::command_done`]. Nothing may be fed until then.
    Command(CommandCheck),
}

/// A command whose verb the caller handles itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandCheck {
    /// The verb, upper-cased.
    pub verb: String,
    /// The rest of the line, stripped as CPython strips it.
    pub arg: String,
}

/// A MAIL FROM or RCPT TO that passed the syntax checks and waits for a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressCheck {
    /// The address without angle brackets (`"<>"` for the null reverse-path).
    pub address: String,
    /// The command's parameters, upper-cased as in [`Message::mail_options`].
    pub options: Vec<String>,
}

/// A decision the session is waiting for.
#[derive(Debug)]
enum Pending {
    /// The envelope MAIL would start.
    Mail(Envelope),
    /// A recipient and its parameters.
    Rcpt(String, Vec<String>),
    /// A command the caller handles.
    Command(String, String),
}

/// A received message, as CPython hands it to `process_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The client's address.
    pub peer: SocketAddr,
    /// The HELO/EHLO argument.
    pub helo: Option<String>,
    /// The reverse-path without angle brackets (`"<>"` for the null path).
    pub mail_from: String,
    /// The forward-paths without angle brackets, in order.
    pub rcpt_tos: Vec<String>,
    /// The message: dot-unstuffed, lines joined with CRLF (or LF when
    /// `Config::lf_newlines`), without the final line break.
    pub data: Vec<u8>,
    /// The MAIL parameters, upper-cased and split on whitespace
    /// (`["SIZE=20", "BODY=8BITMIME"]`).
    pub mail_options: Vec<String>,
    /// The parameters of the last accepted RCPT, in the same form.
    pub rcpt_options: Vec<String>,
    /// Whether MAIL carried the SMTPUTF8 parameter.
    pub smtputf8: bool,
}

/// The mail transaction being built: set by MAIL, extended by RCPT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse-path without angle brackets (`"<>"` for the null path).
    pub mail_from: String,
    /// The MAIL parameters, upper-cased and split on whitespace.
    pub mail_options: Vec<String>,
    /// The accepted forward-paths, in order.
    pub rcpt_tos: Vec<String>,
    /// The parameters of the last accepted RCPT.
    pub rcpt_options: Vec<String>,
    /// Whether MAIL carried the SMTPUTF8 parameter.
    pub smtputf8: bool,
}

/// Where the session is. Each state carries the data that exists in it.
#[derive(Debug)]
enum State {
    /// Reading commands; `envelope` is set between MAIL and the end of the
    /// transaction.
    Command { envelope: Option<Envelope> },
    /// Reading the message body after `354`.
    Data { envelope: Envelope },
    /// A message was handed out; waiting for [`Session::message_done`].
    Waiting,
    /// QUIT was received.
    Closed,
}

/// The server side of one SMTP connection, without I/O.
///
/// Feed it framed input ([`Session::feed_line`], [`Session::feed_data`],
/// [`Session::feed_oversize`]) and send what it pushes to `out`.
pub struct Session {
    config: Arc<Config>,
    peer: SocketAddr,
    /// The HELO/EHLO argument once accepted.
    helo: Option<String>,
    /// Whether the greeting was EHLO.
    esmtp: bool,
    /// The length limit of a MAIL line (grows with EHLO extensions).
    mail_limit: usize,
    state: State,
    /// A MAIL or RCPT waiting for [`Session::check_done`].
    pending: Option<Pending>,
    /// Protocol errors so far (see [`Config::max_errors`]).
    errors: usize,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("helo", &self.helo)
            .field("esmtp", &self.esmtp)
            .field("mail_limit", &self.mail_limit)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn push(out: &mut Vec<Output>, reply: impl Into<Reply>) {
    out.push(Output::Reply(reply.into()));
}

impl Session {
    /// A new session for a client at `peer`. `config` should have passed
    /// [`Config::validate`].
    pub fn new(config: Arc<Config>, peer: SocketAddr) -> Session {
        debug_assert!(config.validate().is_ok(), "invalid smtp Config");
        Session {
            config,
            peer,
            helo: None,
            esmtp: false,
            mail_limit: COMMAND_SIZE_LIMIT,
            state: State::Command { envelope: None },
            pending: None,
            errors: 0,
        }
    }

    /// Pushes the `220` greeting. Call once, before feeding anything.
    pub fn start(&mut self, out: &mut Vec<Output>) {
        log::debug!("smtp session with {}", self.peer);
        out.push(Output::Reply(replies::greeting(&self.config)));
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
            _ => Some(self.mail_limit.max(COMMAND_SIZE_LIMIT)),
        }
    }

    /// Whether a message was handed out and [`Session::message_done`] is due.
    pub fn is_waiting(&self) -> bool {
        matches!(self.state, State::Waiting) || self.pending.is_some()
    }

    /// Whether QUIT was received.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The transaction in progress, from MAIL until the message is handed
    /// out or the transaction is reset.
    pub fn envelope(&self) -> Option<&Envelope> {
        match &self.state {
            State::Command { envelope } => envelope.as_ref(),
            State::Data { envelope } => Some(envelope),
            State::Waiting | State::Closed => None,
        }
    }

    /// The HELO/EHLO argument, once accepted.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// Whether the client greeted with EHLO.
    pub fn is_esmtp(&self) -> bool {
        self.esmtp
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The limit for one command line, as CPython's `command_size_limits`:
    /// 512, except MAIL after EHLO.
    fn command_limit(&self, verb: &str) -> usize {
        if self.esmtp && verb == "MAIL" {
            self.mail_limit
        } else {
            COMMAND_SIZE_LIMIT
        }
    }

    /// Whether echoed text may keep non-ASCII characters.
    fn utf8_replies(&self) -> bool {
        self.envelope().is_some_and(|e| e.smtputf8)
    }

    /// Ends the transaction, keeping the greeting.
    fn reset(&mut self) {
        self.state = State::Command { envelope: None };
    }

    /// Feeds one command line without its CRLF.
    ///
    /// Pushes exactly one reply (QUIT adds [`Output::Close`]). Lines
    /// containing a CR or LF, lines that are not UTF-8, and empty lines get
    /// `500 Error: bad syntax`. Ignored after QUIT; a caller bug in the
    /// other non-command states.
    ///
    /// With [`Config::max_errors`], the reply that makes the error count reach the limit is
    /// followed by `421 4.7.0 ... too many errors` and [`Output::Close`].
    pub fn feed_line(&mut self, line: &[u8], out: &mut Vec<Output>) {
        let before = out.len();
        self.command_line(line, out);
        self.count_errors(before, out);
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
                self.peer,
                self.errors
            );
            out.push(Output::Reply(replies::too_many_errors(&self.config)));
            out.push(Output::Close);
            self.state = State::Closed;
            self.pending = None;
        }
    }

    /// Protocol errors so far in this session.
    pub fn error_count(&self) -> usize {
        self.errors
    }

    fn command_line(&mut self, line: &[u8], out: &mut Vec<Output>) {
        if self.pending.is_some() {
            debug_assert!(false, "feed_line while a check is pending");
            return;
        }
        match self.state {
            State::Command { .. } => {}
            State::Closed => return,
            State::Data { .. } | State::Waiting => {
                debug_assert!(false, "feed_line in state {:?}", self.state);
                return;
            }
        }
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
        if self.config.custom_verbs.contains(&cmd.verb) {
            out.push(Output::Command(CommandCheck {
                verb: cmd.verb.clone(),
                arg: cmd.arg.to_owned(),
            }));
            self.pending = Some(Pending::Command(cmd.verb, cmd.arg.to_owned()));
            return;
        }
        self.run(&cmd.verb, cmd.arg, out);
    }

    /// Runs a command the built-in way (unknown verbs get `500`).
    fn run(&mut self, verb: &str, arg: &str, out: &mut Vec<Output>) {
        let Some(verb) = Verb::from_upper(verb) else {
            let shown = echo(verb, self.utf8_replies());
            return push(out, replies::command_not_recognized(&shown));
        };
        log::trace!("smtp {} command {:?}", self.peer, verb);
        match verb {
            Verb::Helo | Verb::Ehlo => self.hello(verb == Verb::Ehlo, arg, out),
            Verb::Noop if arg.is_empty() => push(out, replies::OK),
            Verb::Noop => push(out, replies::NOOP_SYNTAX),
            Verb::Quit => {
                push(out, replies::BYE);
                out.push(Output::Close);
                self.state = State::Closed;
            }
            Verb::Help if arg.is_empty() => push(out, replies::HELP_ALL),
            Verb::Help => push(out, replies::help(arg, self.esmtp)),
            Verb::Vrfy => self.vrfy(arg, out),
            Verb::Mail => self.mail(arg, out),
            Verb::Rcpt => self.rcpt(arg, out),
            Verb::Rset if arg.is_empty() => {
                self.reset();
                push(out, replies::OK);
            }
            Verb::Rset => push(out, replies::RSET_SYNTAX),
            Verb::Data => self.data(arg, out),
            Verb::Expn => push(out, replies::EXPN_NOT_IMPLEMENTED),
        }
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
        if self.helo.is_some() {
            return push(out, replies::DUPLICATE_HELO);
        }
        self.reset();
        self.helo = Some(arg.to_owned());
        if !extended {
            return push(out, replies::helo(&self.config));
        }
        self.esmtp = true;
        if self.config.data_size_limit != 0 {
            self.mail_limit += SIZE_EXTENSION_BYTES;
        }
        if self.config.enable_smtputf8 {
            self.mail_limit += SMTPUTF8_EXTENSION_BYTES;
        }
        push(out, replies::ehlo(&self.config));
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
        if self.helo.is_none() {
            return push(out, replies::SEND_HELO_FIRST);
        }
        let syntax = replies::mail_syntax(self.esmtp);
        let arg = command::strip_keyword("FROM:", arg);
        let Ok(Path {
            address,
            rest,
            non_ascii,
        }) = address::parse_path(arg, true)
        else {
            return push(out, syntax);
        };
        if !self.esmtp && !rest.is_empty() {
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
        log::trace!("smtp {} sender {:?}", self.peer, address);
        let envelope = Envelope {
            mail_from: address,
            mail_options: options,
            rcpt_tos: Vec::new(),
            rcpt_options: Vec::new(),
            smtputf8,
        };
        if self.config.check_mail {
            out.push(Output::CheckMail(AddressCheck {
                address: envelope.mail_from.clone(),
                options: envelope.mail_options.clone(),
            }));
            self.pending = Some(Pending::Mail(envelope));
            return;
        }
        self.state = State::Command {
            envelope: Some(envelope),
        };
        push(out, replies::OK);
    }

    fn rcpt(&mut self, arg: &str, out: &mut Vec<Output>) {
        if self.helo.is_none() {
            return push(out, replies::SEND_HELO_FIRST);
        }
        let esmtp = self.esmtp;
        let max = self.config.max_recipients;
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
        if self.config.check_rcpt {
            out.push(Output::CheckRcpt(AddressCheck {
                address: address.clone(),
                options: options.clone(),
            }));
            self.pending = Some(Pending::Rcpt(address, options));
            return;
        }
        envelope.rcpt_tos.push(address);
        envelope.rcpt_options = options;
        push(out, replies::OK);
    }

    /// Gives the decision on the last [`Output::CheckMail`] or [`Output::CheckRcpt`]: a `2xx`
    /// reply accepts the sender (starting the transaction) or the recipient (adding it to the
    /// envelope); any other reply refuses it and leaves the transaction as it was. The reply
    /// is pushed as given. Ignored (a caller bug) when no check is pending.
    pub fn check_done(&mut self, reply: Reply, out: &mut Vec<Output>) {
        if let Some(Pending::Command(..)) = self.pending {
            return self.command_done(Some(reply), out);
        }
        let Some(pending) = self.pending.take() else {
            debug_assert!(false, "check_done without a pending check");
            return;
        };
        if (200..300).contains(&reply.code) {
            match pending {
                Pending::Mail(envelope) => {
                    self.state = State::Command {
                        envelope: Some(envelope),
                    };
                }
                Pending::Command(verb, _) => {
                    debug_assert!(false, "check_done for command {verb}");
                }
                Pending::Rcpt(address, options) => {
                    if let State::Command {
                        envelope: Some(envelope),
                    } = &mut self.state
                    {
                        envelope.rcpt_tos.push(address);
                        envelope.rcpt_options = options;
                    }
                }
            }
        }
        out.push(Output::Reply(reply));
    }

    /// Gives the outcome of the last [`Output::Command`]: `Some(reply)` is pushed as the
    /// answer; `None` runs the command the built-in way (CPython's behaviour; `250 OK` for a
    /// verb the session does not know). Ignored (a caller bug) when no command is pending.
    pub fn command_done(&mut self, reply: Option<Reply>, out: &mut Vec<Output>) {
        let Some(Pending::Command(verb, arg)) = self.pending.take() else {
            debug_assert!(false, "command_done without a pending command");
            return;
        };
        let before = out.len();
        match reply {
            // A greeting the caller accepts with its own text still greets the session; the
            // built-in checks (syntax, duplicate) keep their own answers.
            Some(reply)
                if (200..300).contains(&reply.code) && matches!(verb.as_str(), "HELO" | "EHLO") =>
            {
                let mut own = Vec::new();
                self.run(&verb, &arg, &mut own);
                for output in own {
                    match output {
                        Output::Reply(r) if (200..300).contains(&r.code) => {
                            out.push(Output::Reply(reply.clone()));
                        }
                        other => out.push(other),
                    }
                }
            }
            Some(reply) => out.push(Output::Reply(reply)),
            None if Verb::from_upper(&verb).is_some() => self.run(&verb, &arg, out),
            None => push(out, replies::OK),
        }
        // Errors answered here count as if the line had been run at once.
        self.count_errors(before, out);
    }

    fn data(&mut self, arg: &str, out: &mut Vec<Output>) {
        if self.helo.is_none() {
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
        } = std::mem::replace(&mut self.state, State::Waiting)
        {
            self.state = State::Data { envelope };
        }
        push(out, replies::START_DATA);
    }

    /// Feeds the DATA body: everything after `DATA\r\n` up to, excluding,
    /// the final `\r\n.\r\n` (empty for a `.` right after DATA). Lines are
    /// CRLF-separated with no trailing CRLF.
    ///
    /// Pushes [`Output::Message`] and starts waiting, or pushes a refusal
    /// (too much data, bare LF, not UTF-8) and ends the transaction.
    pub fn feed_data(&mut self, body: &[u8], out: &mut Vec<Output>) {
        let envelope = match std::mem::replace(&mut self.state, State::Waiting) {
            State::Data { envelope } => envelope,
            other => {
                debug_assert!(false, "feed_data in state {other:?}");
                self.state = other;
                return;
            }
        };
        let limit = self.config.data_size_limit;
        if limit != 0 && body.len() > limit {
            self.reset();
            return push(out, replies::TOO_MUCH_DATA);
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
                    self.peer,
                    data.len(),
                    envelope.rcpt_tos.len()
                );
                out.push(Output::Message(Message {
                    peer: self.peer,
                    helo: self.helo.clone(),
                    mail_from: envelope.mail_from,
                    rcpt_tos: envelope.rcpt_tos,
                    data,
                    mail_options: envelope.mail_options,
                    rcpt_options: envelope.rcpt_options,
                    smtputf8: envelope.smtputf8,
                }));
            }
            Err(err) => {
                self.reset();
                push(
                    out,
                    match err {
                        DataError::BareLf => replies::BARE_LF,
                        DataError::NotUtf8 => replies::DATA_NOT_UTF8,
                    },
                );
            }
        }
    }

    /// Reports that the caller discarded a unit longer than
    /// [`Session::input_limit`]: a command line gets `500 Error: line too
    /// long`; a DATA body gets `552 Error: Too much mail data` and the
    /// transaction ends (the session is back in command state).
    pub fn feed_oversize(&mut self, out: &mut Vec<Output>) {
        match self.state {
            State::Command { .. } => {
                let before = out.len();
                push(out, replies::LINE_TOO_LONG);
                self.count_errors(before, out);
            }
            State::Data { .. } => {
                self.reset();
                push(out, replies::TOO_MUCH_DATA);
            }
            State::Closed => {}
            State::Waiting => debug_assert!(false, "feed_oversize while waiting"),
        }
    }

    /// Reports that the caller discarded a DATA body for a reason of its own (the server ran
    /// out of memory for message data): pushes `reply` and ends the transaction, as
    /// [`feed_data`](Self::feed_data) does for a refused body. Ignored outside DATA.
    pub fn feed_data_refused(&mut self, reply: Reply, out: &mut Vec<Output>) {
        if let State::Data { .. } = self.state {
            self.reset();
            out.push(Output::Reply(reply));
        }
    }

    /// Gives the verdict on the last [`Output::Message`]: pushes `reply`
    /// (use [`Reply::ok`] for `250 OK`) and returns to command state with
    /// no transaction. Ignored (a caller bug) when not waiting.
    pub fn message_done(&mut self, reply: Reply, out: &mut Vec<Output>) {
        if !self.is_waiting() {
            debug_assert!(false, "message_done in state {:?}", self.state);
            return;
        }
        self.reset();
        out.push(Output::Reply(reply));
    }
}
