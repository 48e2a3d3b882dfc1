//! Deterministic faults: a wrapper around any [`Backend`] (an `Rc<RefCell<impl SmtpServer>>`
//! too) that makes chosen commands fail, stall or drop the connection, so an application can
//! be tested against a misbehaving server. Each fault is logged (`info`) when it fires.
//!
//! A fault is written `WHEN:WHAT` (the `--fault` option of the command line takes the same):
//!
//! | `WHEN` | the command it acts on |
//! |---|---|
//! | `connect` | the connection (before the greeting); `=GLOB` matches the client's IP |
//! | `helo` | `HELO`/`EHLO`; `=GLOB` matches the name given |
//! | `mail` | `MAIL FROM`; `=GLOB` matches the sender |
//! | `rcpt` | `RCPT TO`; `=GLOB` matches the recipient |
//! | `data` | the end of the data; `=GLOB` matches any recipient of the message |
//!
//! | `WHAT` | what happens |
//! |---|---|
//! | `CODE TEXT` | the command is answered with this reply (`550 5.1.1 No such user`) |
//! | `delay=DURATION` | the answer comes `DURATION` late (`500ms`, `2s`, `1m`); the loop goes on serving others (`mail`, `rcpt`, `data` only) |
//! | `drop` | the connection is closed there, without an answer |
//! | `discard` | the message is answered `250` but not passed on (`data` only) |
//!
//! and `rate:N/DURATION` answers `MAIL` with `421 4.7.0` once `N` transactions were opened
//! within the last `DURATION`, across all connections. `GLOB` is matched ignoring ASCII case;
//! `*` stands for any text, `?` for one character. Rules are tried in the order given; the
//! first that matches acts (the rate limit is checked before the `mail` rules).
//!
//! ```
//! use std::cell::RefCell;
//! use std::rc::Rc;
//! use smtpd::servers::faults::Faults;
//! use smtpd::servers::Sink;
//!
//! let faults = Faults::parse(["rcpt=bad@*:550 5.1.1 No such user", "data:delay=2s"])?;
//! let backend = faults.wrap(Rc::new(RefCell::new(Sink::default())));
//! # let _ = backend;
//! # Ok::<(), smtpd::servers::faults::FaultError>(())
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::event::Source;

use crate::reactor::{Ctx, Dispatcher, TimerId};
use crate::server::{
    AddressRequest, Backend, CommandRequest, EnhancedCode, HeloRequest, Message, Outcome, Peer,
    Reply, ServerCtx, SmtpSession, Ticket,
};

/// The point of the dialogue a fault acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// The connection, before the greeting.
    Connect,
    /// `HELO`/`EHLO`.
    Helo,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`.
    Rcpt,
    /// The end of the data.
    Data,
}

/// What a fault does.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Answer with this reply.
    Reply(Reply),
    /// Answer this much later (the answer the wrapped server gives).
    Delay(Duration),
    /// Close the connection without an answer.
    Drop,
    /// Answer `250` without passing the message on.
    Discard,
    /// `421 4.7.0` at `MAIL` past `max` transactions per `per`.
    Rate {
        /// Transactions allowed per period.
        max: usize,
        /// The period.
        per: Duration,
    },
}

/// One fault: where it acts, for which addresses, and what it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    spec: String,
    stage: Stage,
    glob: Option<String>,
    action: Action,
}

impl Fault {
    /// The fault written as `spec` (see the [module docs](self)).
    ///
    /// # Errors
    /// When `spec` does not follow the syntax; the error says why.
    pub fn parse(spec: &str) -> Result<Fault, FaultError> {
        let bad = |why: &str| FaultError(format!("invalid fault {spec:?}: {why}"));
        let (when, what) = spec
            .split_once(':')
            .ok_or_else(|| bad("expected WHEN:WHAT"))?;
        if when.eq_ignore_ascii_case("rate") {
            let (n, per) = what
                .split_once('/')
                .ok_or_else(|| bad("expected rate:N/DURATION"))?;
            let max = n.trim().parse().map_err(|_| bad("N is not a count"))?;
            let per = parse_duration(per).ok_or_else(|| bad("bad DURATION"))?;
            if per.is_zero() {
                return Err(bad("the period must not be 0"));
            }
            return Ok(Fault {
                spec: spec.to_string(),
                stage: Stage::Mail,
                glob: None,
                action: Action::Rate { max, per },
            });
        }
        let (verb, glob) = match when.split_once('=') {
            Some((verb, glob)) => (verb, Some(glob.to_string())),
            None => (when, None),
        };
        let stage = match verb.to_ascii_lowercase().as_str() {
            "connect" => Stage::Connect,
            "helo" | "ehlo" => Stage::Helo,
            "mail" => Stage::Mail,
            "rcpt" => Stage::Rcpt,
            "data" => Stage::Data,
            _ => return Err(bad("WHEN is connect, helo, mail, rcpt, data or rate")),
        };
        let what = what.trim();
        let action = if what.eq_ignore_ascii_case("drop") {
            Action::Drop
        } else if what.eq_ignore_ascii_case("discard") {
            if stage != Stage::Data {
                return Err(bad("discard is for data only"));
            }
            Action::Discard
        } else if let Some(d) = what.strip_prefix("delay=") {
            if !matches!(stage, Stage::Mail | Stage::Rcpt | Stage::Data) {
                return Err(bad(
                    "delay is for mail, rcpt and data (see --greeting-delay)",
                ));
            }
            Action::Delay(parse_duration(d).ok_or_else(|| bad("bad DURATION"))?)
        } else {
            let reply = Reply::parse(what)
                .filter(|r| (200..600).contains(&r.code))
                .ok_or_else(|| bad("WHAT is CODE TEXT, delay=DURATION, drop or discard"))?;
            Action::Reply(reply)
        };
        Ok(Fault {
            spec: spec.to_string(),
            stage,
            glob,
            action,
        })
    }

    /// Where it acts.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// What it does.
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// Whether it acts on a command about any of `subjects` (addresses, a HELO name, an IP).
    fn matches<'a>(&self, stage: Stage, mut subjects: impl Iterator<Item = &'a str>) -> bool {
        self.stage == stage
            && !matches!(self.action, Action::Rate { .. })
            && match &self.glob {
                None => true,
                Some(glob) => subjects.any(|s| glob_match(glob.as_bytes(), s.as_bytes())),
            }
    }
}

impl fmt::Display for Fault {
    /// As it was written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

/// A fault spec that does not follow the syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultError(String);

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FaultError {}

/// `500ms`, `2s`, `1m`; a bare number is seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// Whether `text` matches `glob` (`*`, `?`), ignoring ASCII case.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && (glob[g] == b'?' || glob[g].eq_ignore_ascii_case(&text[t])) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == b'*' {
            star = Some((g, t));
            g += 1;
        } else if let Some((sg, st)) = star {
            g = sg + 1;
            t = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&b| b == b'*')
}

/// A list of faults, to wrap around a backend ([`wrap`](Self::wrap)). `Send`, so a test can
/// hand it to a server thread ([`TestServerBuilder::faults`](crate::testing::TestServerBuilder::faults)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    rules: Vec<Fault>,
}

impl Faults {
    /// No faults.
    pub fn new() -> Faults {
        Faults::default()
    }

    /// The faults written as `specs`, in order.
    ///
    /// # Errors
    /// The first spec that does not follow the syntax.
    pub fn parse<I, S>(specs: I) -> Result<Faults, FaultError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut faults = Faults::new();
        for spec in specs {
            faults.rules.push(Fault::parse(spec.as_ref())?);
        }
        Ok(faults)
    }

    /// One more fault.
    pub fn with(mut self, fault: Fault) -> Faults {
        self.rules.push(fault);
        self
    }

    /// The faults, in order.
    pub fn rules(&self) -> &[Fault] {
        &self.rules
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// `inner` with these faults in front of it.
    pub fn wrap<B: Backend>(self, inner: B) -> Faulty<B> {
        Faulty {
            inner,
            state: Rc::new(State {
                rules: self.rules,
                opened: RefCell::new(VecDeque::new()),
            }),
        }
    }
}

/// A backend with faults in front of it (from [`Faults::wrap`]).
pub struct Faulty<B> {
    inner: B,
    state: Rc<State>,
}

impl<B> fmt::Debug for Faulty<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("rules", &self.state.rules)
            .finish_non_exhaustive()
    }
}

/// What all the sessions of one [`Faulty`] share.
struct State {
    rules: Vec<Fault>,
    /// When recent transactions were opened (for `rate:`).
    opened: RefCell<VecDeque<Instant>>,
}

impl<B: Backend> Backend for Faulty<B> {
    fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession> {
        Box::new(FaultySession {
            inner: self.inner.open_session(peer),
            state: self.state.clone(),
            peer: peer.addr,
        })
    }

    fn commands(&self) -> Vec<String> {
        self.inner.commands()
    }

    fn ehlo_keywords(&self, keywords: &mut Vec<String>) {
        self.inner.ehlo_keywords(keywords);
    }
}

struct FaultySession {
    inner: Box<dyn SmtpSession>,
    state: Rc<State>,
    peer: std::net::SocketAddr,
}

impl FaultySession {
    fn find<'a>(
        &self,
        stage: Stage,
        subjects: impl Iterator<Item = &'a str> + Clone,
    ) -> Option<Fault> {
        let found = self
            .state
            .rules
            .iter()
            .find(|f| f.matches(stage, subjects.clone()))
            .cloned();
        if let Some(fault) = &found {
            log::info!("{}: fault {fault} fired", self.peer);
        }
        found
    }

    /// `421 4.7.0` if the rate limit is reached; otherwise counts this transaction.
    fn rate_limited(&self) -> Option<Outcome> {
        let now = Instant::now();
        let mut opened = self.state.opened.borrow_mut();
        for fault in &self.state.rules {
            let Action::Rate { max, per } = fault.action else {
                continue;
            };
            let recent = opened
                .iter()
                .filter(|&&t| now.duration_since(t) < per)
                .count();
            if recent >= max {
                log::info!("{}: fault {fault} fired", self.peer);
                return Some(Outcome::Reply(Reply::enhanced(
                    421,
                    EnhancedCode::new(4, 7, 0),
                    "Too many messages, slow down",
                )));
            }
        }
        let longest = self
            .state
            .rules
            .iter()
            .filter_map(|f| match f.action {
                Action::Rate { per, .. } => Some(per),
                _ => None,
            })
            .max();
        if let Some(longest) = longest {
            while opened
                .front()
                .is_some_and(|&t| now.duration_since(t) >= longest)
            {
                opened.pop_front();
            }
            opened.push_back(now);
        }
        None
    }

    /// Carries out `fault` at a command whose real answer `decide` gives.
    fn act(
        &mut self,
        fault: Fault,
        cx: &mut ServerCtx<'_, '_>,
        decide: impl FnOnce(&mut dyn SmtpSession, &mut ServerCtx<'_, '_>) -> Outcome,
    ) -> Outcome {
        match fault.action {
            Action::Reply(reply) => Outcome::Reply(reply),
            Action::Drop => {
                match cx.try_ctx() {
                    Some(ctx) => ctx.close(),
                    None => log::info!("{}: fault {fault}: no connection to drop", self.peer),
                }
                // Never sent when the connection is dropped; a detached test sees it.
                Outcome::Reply(Reply::enhanced(
                    421,
                    EnhancedCode::new(4, 4, 2),
                    "Connection dropped",
                ))
            }
            Action::Discard => Outcome::Accept,
            Action::Delay(after) => {
                let reply = match decide(&mut *self.inner, cx) {
                    Outcome::Accept => Reply::ok(),
                    Outcome::Reply(reply) => reply,
                    other => {
                        log::warn!(
                            "{}: fault {fault}: the server deferred; not delayed",
                            self.peer
                        );
                        return other;
                    }
                };
                let ticket = cx.defer();
                let outcome = Outcome::deferred(&ticket);
                match cx.try_ctx() {
                    Some(ctx) => {
                        ctx.spawn(Delay {
                            after,
                            answer: Some((ticket, reply)),
                        });
                    }
                    None => {
                        std::thread::spawn(move || {
                            std::thread::sleep(after);
                            ticket.complete(reply);
                        });
                    }
                }
                outcome
            }
            Action::Rate { .. } => decide(&mut *self.inner, cx),
        }
    }
}

/// Answers a delayed ticket when its timer fires, then closes itself.
struct Delay {
    after: Duration,
    answer: Option<(Ticket, Reply)>,
}

impl Dispatcher for Delay {
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.set_timer(self.after);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _timer: TimerId) {
        if let Some((ticket, reply)) = self.answer.take() {
            ticket.complete_in(ctx, reply);
        }
        ctx.close();
    }
}

impl SmtpSession for FaultySession {
    fn on_connect(&mut self, peer: &Peer, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let ip = peer.addr.ip().to_string();
        match self.find(Stage::Connect, std::iter::once(ip.as_str())) {
            Some(fault) => self.act(fault, cx, |s, cx| s.on_connect(peer, cx)),
            None => self.inner.on_connect(peer, cx),
        }
    }

    fn on_helo(&mut self, request: &HeloRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        match self.find(Stage::Helo, std::iter::once(request.name)) {
            Some(fault) => self.act(fault, cx, |s, cx| s.on_helo(request, cx)),
            None => self.inner.on_helo(request, cx),
        }
    }

    fn on_mail(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        if let Some(refusal) = self.rate_limited() {
            return refusal;
        }
        match self.find(Stage::Mail, std::iter::once(request.address)) {
            Some(fault) => self.act(fault, cx, |s, cx| s.on_mail(request, cx)),
            None => self.inner.on_mail(request, cx),
        }
    }

    fn on_rcpt(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        match self.find(Stage::Rcpt, std::iter::once(request.address)) {
            Some(fault) => self.act(fault, cx, |s, cx| s.on_rcpt(request, cx)),
            None => self.inner.on_rcpt(request, cx),
        }
    }

    fn on_command(&mut self, request: &CommandRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.inner.on_command(request, cx)
    }

    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let rcpts = message.rcpt_tos.iter().map(String::as_str);
        match self.find(Stage::Data, rcpts) {
            Some(fault) => self.act(fault, cx, |s, cx| s.process_message(message, cx)),
            None => self.inner.process_message(message, cx),
        }
    }

    fn on_reset(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.inner.on_reset(cx);
    }

    fn on_disconnect(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.inner.on_disconnect(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"bad@*", b"BAD@example.com"));
        assert!(glob_match(b"*@x.org", b"a@x.org"));
        assert!(!glob_match(b"*@x.org", b"a@x.org.evil"));
        assert!(glob_match(b"a?c*", b"abcdef"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"a", b""));
        assert!(glob_match(b"*a*b", b"xxaxxbxb"));
    }

    #[test]
    fn parsing() {
        let f = Fault::parse("rcpt=bad@*:550 5.1.1 No such user").unwrap();
        assert_eq!(f.stage(), Stage::Rcpt);
        let Action::Reply(r) = f.action() else {
            panic!()
        };
        assert_eq!(r.to_string(), "550 5.1.1 No such user");
        assert_eq!(
            Fault::parse("data:delay=2s").unwrap().action(),
            &Action::Delay(Duration::from_secs(2))
        );
        assert_eq!(
            Fault::parse("mail:delay=250ms").unwrap().action(),
            &Action::Delay(Duration::from_millis(250))
        );
        assert_eq!(Fault::parse("mail:drop").unwrap().action(), &Action::Drop);
        assert_eq!(
            Fault::parse("rate:10/60s").unwrap().action(),
            &Action::Rate {
                max: 10,
                per: Duration::from_secs(60)
            }
        );
        for bad in [
            "rcpt",
            "bogus:550 x",
            "rcpt:discard",
            "helo:delay=1s",
            "mail:delay=2h",
            "rate:10",
            "rate:x/1s",
            "rate:1/0s",
            "rcpt:hello",
            "rcpt:999 x",
        ] {
            assert!(Fault::parse(bad).is_err(), "{bad}");
        }
        assert!(Fault::parse("mail:x")
            .unwrap_err()
            .to_string()
            .starts_with("invalid fault \"mail:x\""));
    }
}
