//! `SmtpChannel`: the one file where the chat layer (transport, output) meets the SMTP
//! receiver (framing and meaning). Bytes flow one way: chat → receiver → server hooks →
//! reply → chat.

use std::any::Any;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::session::ask;
use super::shared::{ChannelShutdown, ConnectionGuard, DataBudget, ListenerShared};
use super::{local_error, Completion, Outcome, ServerCtx, SmtpSession};
use crate::chat::{ChatCtl, ChatHandler};
use crate::reactor::{Ctx, TimerId};
use crate::smtp::{
    Decision, EnhancedCode, MemoryBudget, Output, Receiver, Reply, Request, Session, TlsInfo,
};

/// Where a connection is. (The PROXY header will be a phase before the greeting.)
#[derive(Debug)]
enum Phase {
    /// A TLS handshake runs (after `220 Ready to start TLS`, or at accept when `implicit`)
    /// until `timer` (the handshake timeout) fires.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    TlsHandshake { timer: TimerId, implicit: bool },
    /// The greeting is held back ([`ServerOptions::greeting_delay`](super::ServerOptions))
    /// until `timer` fires; `early`: the client sent something meanwhile.
    GreetingDelay { timer: TimerId, early: bool },
    /// The SMTP dialogue.
    Smtp,
    /// A graceful shutdown: the transaction in flight may finish until `grace` fires, then
    /// `421`.
    ShuttingDown { grace: Option<TimerId> },
    /// A final reply was queued and the chat closes when it is sent.
    Closing,
}

/// What a decision is about, as far as the channel cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Whether to greet: a failure to decide is `421` and a close, not `451`.
    Connect,
    /// A message: its verdict is logged at `info`.
    Message,
    /// Anything else.
    Command,
}

/// A decision handed to the server and not answered yet.
struct Deferred {
    ticket: u64,
    timer: TimerId,
    summary: String,
    kind: Kind,
}

/// The clock of a DATA phase: silence and minimum-rate deadlines.
struct DataClock {
    timer: TimerId,
    started: Instant,
    last: Instant,
    bytes: usize,
}

thread_local! {
    /// Where replies are written before they are queued: one buffer per thread, not per
    /// connection.
    static WIRE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The protocol half of one SMTP connection (Python's `SMTPChannel`).
pub(crate) struct SmtpChannel {
    receiver: Receiver,
    /// The connection's session (its hooks), opened by the listener's backend in `on_start`
    /// and dropped after `on_disconnect`.
    hooks: Option<Box<dyn SmtpSession>>,
    shared: Rc<ListenerShared>,
    /// Released on drop: connection and per-address counts.
    guard: ConnectionGuard,
    phase: Phase,
    outputs: Vec<Output>,
    /// Boxed, as the data clock: rare states, kept out of every idle connection's size.
    deferred: Option<Box<Deferred>>,
    idle: Option<TimerId>,
    /// Deadlines of the DATA phase in progress.
    data_clock: Option<Box<DataClock>>,
}

impl SmtpChannel {
    pub(crate) fn new(
        shared: Rc<ListenerShared>,
        guard: ConnectionGuard,
        peer: SocketAddr,
    ) -> SmtpChannel {
        let session = Session::new(shared.config.clone(), peer);
        SmtpChannel {
            receiver: Receiver::new(session),
            hooks: None,
            shared,
            guard,
            phase: Phase::Smtp,
            outputs: Vec::new(),
            deferred: None,
            idle: None,
            data_clock: None,
        }
    }

    fn peer(&self) -> SocketAddr {
        self.receiver.session().peer()
    }

    fn push_reply(&mut self, chat: &mut ChatCtl, reply: &Reply) {
        let peer = self.peer();
        WIRE.with_borrow_mut(|wire| {
            wire.clear();
            reply.write_to(wire);
            if log::log_enabled!(log::Level::Debug) {
                log::debug!("{peer} reply: {}", String::from_utf8_lossy(wire).trim_end());
            }
            chat.push(wire);
        });
    }

    /// Sends a last reply and closes once it is out.
    fn close_with(&mut self, chat: &mut ChatCtl, reply: &Reply) {
        self.push_reply(chat, reply);
        chat.close_when_done();
        self.phase = Phase::Closing;
    }

    /// Carries out what the session asked for, including answers that follow at once.
    fn act(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        while !self.outputs.is_empty() {
            for output in std::mem::take(&mut self.outputs) {
                match output {
                    Output::Reply(reply) => self.push_reply(chat, &reply),
                    Output::Decide(request) => self.decide(request, chat, ctx),
                    Output::Reset => self.notify_session(ctx, |session, cx| session.on_reset(cx)),
                    Output::Close => {
                        chat.close_when_done();
                        self.phase = Phase::Closing;
                    }
                    Output::StartTls(reply) => {
                        self.push_reply(chat, &reply);
                        self.begin_tls(false, chat, ctx);
                    }
                }
            }
        }
        self.sync_data_clock(ctx);
        if matches!(self.phase, Phase::ShuttingDown { .. }) && self.is_idle() && !chat.is_closing()
        {
            let reply = self.closing_reply();
            self.close_with(chat, &reply);
        }
    }

    /// Switches the transport to TLS once the output queued so far (`220 Ready to start
    /// TLS`) is out, and starts the handshake timeout.
    fn begin_tls(&mut self, implicit: bool, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.shared.options.tls {
            let config = tls.rustls().clone();
            chat.switch_transport_when_flushed(crate::chat::TransportSwitch::new(
                move |socket: &mut crate::chat::Socket| socket.start_tls(config),
            ));
            if let Some(idle) = self.idle.take() {
                ctx.cancel_timer(idle);
            }
            self.phase = Phase::TlsHandshake {
                timer: ctx.set_timer(self.shared.options.tls_handshake_timeout),
                implicit,
            };
            return;
        }
        // Not reached: sessions offer STARTTLS only with a certificate.
        let _ = (implicit, &ctx);
        let reply = Reply::enhanced(
            454,
            EnhancedCode::new(4, 7, 0),
            "TLS not available due to temporary reason",
        );
        self.close_with(chat, &reply);
    }

    /// The handshake finished: the session counts as encrypted and starts afresh (STARTTLS),
    /// or the connection is greeted over TLS (implicit TLS).
    fn tls_ready(&mut self, info: TlsInfo, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let Phase::TlsHandshake { timer, implicit } = self.phase else {
            return;
        };
        ctx.cancel_timer(timer);
        log::info!("{}: TLS established: {info}", self.peer());
        self.receiver.tls_established(info);
        if implicit {
            self.open_and_greet(chat, ctx);
        } else {
            self.phase = Phase::Smtp;
            self.arm_idle(ctx);
        }
    }

    /// Opens the hooks' session, then greets (after the greeting delay, if any).
    fn open_and_greet(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        self.phase = Phase::Smtp;
        let peer = self.peer();
        let shared = self.shared.clone();
        let info = self.receiver.session().peer_info();
        let opened = catch_unwind(AssertUnwindSafe(|| {
            shared.backend.borrow_mut().open_session(info)
        }));
        match opened {
            Ok(hooks) => self.hooks = Some(hooks),
            Err(_) => {
                log::error!("{peer}: open_session panicked; refusing the connection");
                let reply = Reply::new(421, "Service not available, closing transmission channel");
                return self.close_with(chat, &reply);
            }
        }
        if let Some(delay) = self.shared.options.greeting_delay {
            self.phase = Phase::GreetingDelay {
                timer: ctx.set_timer(delay),
                early: false,
            };
            self.arm_idle(ctx);
            return;
        }
        self.start_session(chat, ctx);
    }

    /// Starts the DATA deadlines when the body begins, stops them when it is over. While they
    /// run, the command (idle) timer is off.
    fn sync_data_clock(&mut self, ctx: &mut Ctx<'_>) {
        let in_data = self.receiver.in_data() && self.receiver.wants_input();
        match (&self.data_clock, in_data) {
            (None, true) => {
                let Some(timeout) = self.shared.options.data_timeout else {
                    return;
                };
                if let Some(idle) = self.idle.take() {
                    ctx.cancel_timer(idle);
                }
                let now = Instant::now();
                self.data_clock = Some(Box::new(DataClock {
                    timer: ctx.set_timer(timeout),
                    started: now,
                    last: now,
                    bytes: 0,
                }));
            }
            (Some(_), false) => {
                if let Some(clock) = self.data_clock.take() {
                    ctx.cancel_timer(clock.timer);
                }
            }
            _ => {}
        }
    }

    /// The DATA timer fired: whether the client is too slow or silent; otherwise re-armed.
    fn data_deadline_passed(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let peer = self.peer();
        let (Some(clock), Some(timeout)) =
            (self.data_clock.as_mut(), self.shared.options.data_timeout)
        else {
            return false;
        };
        let now = Instant::now();
        let silent_until = clock.last + timeout;
        let mut due = silent_until;
        let rate = self.shared.options.min_data_rate;
        if rate > 0 {
            let credit = Duration::from_secs_f64(clock.bytes as f64 / rate as f64);
            due = due.min(clock.started + timeout + credit);
        }
        if now >= due {
            log::info!(
                "{}: DATA too slow ({} bytes in {:?}); closing",
                peer,
                clock.bytes,
                now - clock.started
            );
            return true;
        }
        clock.timer = ctx.set_timer(due - now);
        false
    }

    fn timeout_reply(&self) -> Reply {
        Reply::new(421, format!("{} Error: timeout exceeded", self.hostname()))
    }

    /// The client talked before the greeting: `554` instead of `220`, then close.
    fn refuse_early_talker(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        log::info!("{}: talked before the greeting; closing", self.peer());
        if let Phase::GreetingDelay { timer, .. } = self.phase {
            ctx.cancel_timer(timer);
        }
        let reply = Reply::enhanced(
            554,
            EnhancedCode::new(5, 5, 0),
            format!("{} Error: talked before the greeting", self.hostname()),
        );
        self.close_with(chat, &reply);
    }

    fn notify_session(
        &mut self,
        ctx: &mut Ctx<'_>,
        call: impl FnOnce(&mut dyn SmtpSession, &mut ServerCtx<'_, '_>),
    ) {
        let Some(hooks) = self.hooks.as_deref_mut() else {
            return;
        };
        let mut scx = ServerCtx::new(ctx);
        let result = catch_unwind(AssertUnwindSafe(|| call(hooks, &mut scx)));
        if result.is_err() {
            log::error!(
                "{}: the server panicked in a notification hook",
                self.peer()
            );
        }
    }

    /// Asks the session's hooks to decide a request, and answers it at once unless it
    /// defers.
    fn decide(&mut self, request: Request, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let peer = self.peer();
        let kind = match request {
            Request::Connect => Kind::Connect,
            Request::Message(_) => Kind::Message,
            _ => Kind::Command,
        };
        let Some(hooks) = self.hooks.as_deref_mut() else {
            // No session (it could not be opened): nothing can be decided.
            let summary = || format!("{peer} without a session");
            return self.finish(kind, Decision::Reply(local_error()), &summary);
        };
        let session = self.receiver.session();
        let summary = || describe(peer, &request);
        let outcome = call_hook(&summary, ctx, |cx| ask(hooks, session, &request, cx));
        match outcome {
            (Outcome::Deferred(deferral), Some(ticket)) if deferral.id == ticket => {
                let summary = summary();
                chat.pause();
                if let Some(idle) = self.idle.take() {
                    ctx.cancel_timer(idle);
                }
                let timer = ctx.set_timer(self.shared.options.defer_timeout);
                self.deferred = Some(Box::new(Deferred {
                    ticket,
                    timer,
                    summary,
                    kind,
                }));
            }
            (Outcome::Deferred(_), _) => {
                log::error!(
                    "{}: Outcome::Deferred with a ticket this hook call did not obtain \
                     from ServerCtx::defer; answering 451",
                    summary()
                );
                self.finish(kind, Decision::Reply(local_error()), &summary);
            }
            // The summary is formatted only if it is logged.
            (Outcome::Accept, _) => self.finish(kind, Decision::Default, &summary),
            (Outcome::Reply(reply), _) => self.finish(kind, Decision::Reply(reply), &summary),
        }
    }

    /// Gives the session the decision it waits for.
    fn finish(&mut self, kind: Kind, mut decision: Decision, summary: &dyn Fn() -> String) {
        if kind == Kind::Connect {
            decision = match decision {
                // `250 OK` (`Outcome::Accept`, `Ticket::accept`) greets with the default line.
                Decision::Reply(reply) if reply == Reply::ok() => Decision::Default,
                // A panic, a dropped or stale ticket, the deadline: 451 is no greeting code.
                Decision::Reply(reply) if reply == local_error() => {
                    Decision::Reply(self.closing_reply())
                }
                other => other,
            };
            if let Decision::Reply(reply) = &decision {
                if reply.code / 100 != 2 {
                    log::info!("{}: refused at connect: {}", self.peer(), reply.code);
                }
            }
        }
        let code = match &decision {
            Decision::Reply(reply) => reply.code,
            _ => 250,
        };
        if kind == Kind::Message && log::log_enabled!(log::Level::Info) {
            log::info!("{} -> {code}", summary());
        } else if log::log_enabled!(log::Level::Debug) {
            log::debug!("{} -> {code}", summary());
        }
        if let Err(e) = self.receiver.resolve(decision, &mut self.outputs) {
            log::error!("{}: {e}", summary());
        }
    }

    fn complete(&mut self, completion: Completion, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let Some(deferred) = self.deferred.take_if(|p| p.ticket == completion.id) else {
            return; // a late answer: the deadline already answered 451
        };
        ctx.cancel_timer(deferred.timer);
        let reply = completion.reply.unwrap_or_else(|| {
            log::error!(
                "{}: deferred ticket dropped unanswered; answering 451",
                deferred.summary
            );
            local_error()
        });
        self.finish(deferred.kind, Decision::Reply(reply), &|| {
            deferred.summary.clone()
        });
        self.resume(chat, ctx);
    }

    fn resume(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        chat.resume();
        self.arm_idle(ctx);
        self.act(chat, ctx);
    }

    fn arm_idle(&mut self, ctx: &mut Ctx<'_>) {
        let Some(after) = self.shared.options.idle_timeout else {
            return;
        };
        match self.idle {
            Some(id) if ctx.reset_timer(id, after) => {}
            _ => self.idle = Some(ctx.set_timer(after)),
        }
    }

    fn hostname(&self) -> &str {
        &self.shared.options.session.hostname
    }

    fn closing_reply(&self) -> Reply {
        Reply::new(
            421,
            format!(
                "{} Service not available, closing transmission channel",
                self.hostname()
            ),
        )
    }

    /// No transaction and no decision in flight: a shutdown may close now.
    fn is_idle(&self) -> bool {
        self.deferred.is_none()
            && !self.receiver.session().is_waiting()
            && self.receiver.session().envelope().is_none()
            && !self.receiver.in_data()
    }

    fn begin_shutdown(&mut self, grace: Duration, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        match self.phase {
            Phase::Smtp if !self.is_idle() => {
                self.phase = Phase::ShuttingDown {
                    grace: Some(ctx.set_timer(grace)),
                };
            }
            Phase::Smtp | Phase::GreetingDelay { .. } => {
                if let Phase::GreetingDelay { timer, .. } = self.phase {
                    ctx.cancel_timer(timer);
                }
                let reply = self.closing_reply();
                self.close_with(chat, &reply);
            }
            Phase::TlsHandshake { timer, .. } => {
                // Nothing can be said mid-handshake.
                ctx.cancel_timer(timer);
                self.phase = Phase::Closing;
                ctx.close();
            }
            Phase::ShuttingDown { .. } | Phase::Closing => {}
        }
    }

    /// Starts the SMTP dialogue: the connect decision, then the greeting.
    fn start_session(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        self.phase = Phase::Smtp;
        self.receiver.start(&mut self.outputs);
        self.act(chat, ctx);
        self.arm_idle(ctx);
    }
}

impl Drop for SmtpChannel {
    /// Gives back the data memory of a message cut off by the close (also when a panic drops
    /// the channel without its `on_close`).
    fn drop(&mut self) {
        DataBudget(&self.shared).release(self.receiver.reserved());
    }
}

/// How a request is named in the log: built only when it is logged or kept for a deferral
/// (formatting it for every message cost 9% of the instructions of a 1 KiB transaction).
fn describe(peer: SocketAddr, request: &Request) -> String {
    // The null reverse-path is kept as "<>": logged as `from=<>`, not `from=<<>>`.
    let path = |address: &str| if address == "<>" { "" } else { address }.to_owned();
    match request {
        Request::Connect => format!("{peer} connect"),
        Request::Helo(_) => format!("{peer} greeting"),
        Request::Mail(check) => format!("{peer} MAIL <{}>", path(&check.address)),
        Request::Rcpt(check) => format!("{peer} RCPT <{}>", check.address),
        Request::Command(check) => format!("{peer} command {}", check.verb),
        Request::Message(message) => {
            let mut line = format!(
                "{peer} from=<{}> to={:?} size={}",
                path(&message.mail_from),
                message.rcpt_tos,
                message.data.len()
            );
            if let Some(tls) = &message.tls {
                line.push_str(&format!(" tls {tls}"));
            }
            line
        }
    }
}

/// Calls a hook under `catch_unwind`; a panic becomes `451`. Returns the outcome and the
/// ticket the hook obtained, if any.
fn call_hook(
    summary: &dyn Fn() -> String,
    ctx: &mut Ctx<'_>,
    call: impl FnOnce(&mut ServerCtx<'_, '_>) -> Outcome,
) -> (Outcome, Option<u64>) {
    let mut scx = ServerCtx::new(ctx);
    let result = catch_unwind(AssertUnwindSafe(|| call(&mut scx)));
    let issued = scx.issued();
    let outcome = result.unwrap_or_else(|_| {
        log::error!("{}: the server panicked; answering 451", summary());
        Outcome::Reply(local_error())
    });
    (outcome, issued)
}

impl ChatHandler for SmtpChannel {
    fn collect_incoming_data(&mut self, _data: &[u8]) {
        unreachable!("the SMTP channel takes raw input");
    }

    fn found_terminator(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        unreachable!("the SMTP channel takes raw input");
    }

    fn receive(&mut self, data: &[u8], chat: &mut ChatCtl, ctx: &mut Ctx<'_>) -> Option<usize> {
        match &mut self.phase {
            Phase::GreetingDelay { early, .. } => {
                *early = true;
                if memchr::memchr(b'\n', data).is_some() {
                    // A whole line before the greeting: no need to wait for the timer.
                    self.refuse_early_talker(chat, ctx);
                }
                return Some(data.len());
            }
            // No plaintext comes before the handshake is over; nothing before it counts.
            Phase::Closing | Phase::TlsHandshake { .. } => return Some(data.len()),
            Phase::Smtp | Phase::ShuttingDown { .. } => {}
        }
        if self.receiver.in_data() {
            if let Some(clock) = &mut self.data_clock {
                clock.bytes += data.len();
                clock.last = Instant::now();
            }
        }
        let mut used = 0;
        // Decisions answered at once let the receiver go on with the same input; a deferred
        // one pauses the chat, which keeps the rest.
        while used < data.len() && !chat.is_paused() && !chat.is_closing() && !chat.is_switching() {
            let mut budget = DataBudget(&self.shared);
            used += self
                .receiver
                .receive_within(&data[used..], &mut budget, &mut self.outputs);
            if self.outputs.is_empty() {
                break;
            }
            // A unit was complete: the client has another command timeout for the next one.
            self.arm_idle(ctx);
            self.act(chat, ctx);
        }
        if self.receiver.session().is_closed() {
            // Input after QUIT (or a refusal) is never acted on.
            return Some(data.len());
        }
        Some(used)
    }

    fn on_start(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        log::debug!("{} connected", self.peer());
        self.guard.register(ctx.handle());
        #[cfg(feature = "tls")]
        if self.shared.options.implicit_tls {
            // RFC 8314: the handshake first; the session opens with the TLS facts known.
            return self.begin_tls(true, chat, ctx);
        }
        self.open_and_greet(chat, ctx);
    }

    fn on_timer(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, timer: TimerId) {
        if matches!(self.phase, Phase::TlsHandshake { timer: t, .. } if t == timer) {
            log::info!("{}: TLS handshake timed out; closing", self.peer());
            self.phase = Phase::Closing;
            ctx.close();
        } else if self.idle == Some(timer) {
            self.idle = None;
            log::info!("{}: idle timeout", self.peer());
            let reply = self.timeout_reply();
            self.close_with(chat, &reply);
        } else if let Phase::GreetingDelay { timer: t, early } = self.phase {
            if t == timer {
                if early {
                    self.refuse_early_talker(chat, ctx);
                } else {
                    self.start_session(chat, ctx);
                }
            }
        } else if self.data_clock.as_ref().is_some_and(|c| c.timer == timer) {
            if self.data_deadline_passed(ctx) {
                self.data_clock = None;
                let reply = self.timeout_reply();
                self.close_with(chat, &reply);
            }
        } else if self.deferred.as_ref().is_some_and(|p| p.timer == timer) {
            let deferred = self.deferred.take().expect("checked above");
            log::warn!(
                "{}: no answer within the deferral deadline; answering 451",
                deferred.summary
            );
            self.finish(deferred.kind, Decision::Reply(local_error()), &|| {
                deferred.summary.clone()
            });
            self.resume(chat, ctx);
        } else if matches!(self.phase, Phase::ShuttingDown { grace: Some(t) } if t == timer) {
            self.phase = Phase::ShuttingDown { grace: None };
            let reply = self.closing_reply();
            self.close_with(chat, &reply);
        }
    }

    fn on_notify(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        let message = match message.downcast::<Completion>() {
            Ok(completion) => return self.complete(*completion, chat, ctx),
            Err(other) => other,
        };
        // The transport's notice: the TLS handshake is over.
        let message = match message.downcast::<TlsInfo>() {
            Ok(info) => return self.tls_ready(*info, chat, ctx),
            Err(other) => other,
        };
        match message.downcast::<ChannelShutdown>() {
            Ok(shutdown) => self.begin_shutdown(shutdown.grace, chat, ctx),
            Err(_) => log::debug!("{}: notification of an unknown type ignored", self.peer()),
        }
    }

    fn on_close(&mut self, _chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        log::debug!("{} closed", self.peer());
        if let Some(deferred) = self.deferred.take() {
            log::warn!(
                "{}: client gone before the deferred answer",
                deferred.summary
            );
            ctx.cancel_timer(deferred.timer);
        }
        // Timers of a closed dispatcher would be dropped when due; cancelling frees them now.
        let data_timer = self.data_clock.take().map(|c| c.timer);
        let phase_timer = match self.phase {
            Phase::GreetingDelay { timer, .. } | Phase::TlsHandshake { timer, .. } => Some(timer),
            Phase::ShuttingDown { grace } => grace,
            Phase::Smtp | Phase::Closing => None,
        };
        for timer in [self.idle.take(), phase_timer, data_timer]
            .into_iter()
            .flatten()
        {
            ctx.cancel_timer(timer);
        }
        if self.receiver.session().in_transaction() {
            self.notify_session(ctx, |session, cx| session.on_reset(cx));
        }
        self.notify_session(ctx, |session, cx| session.on_disconnect(cx));
        // The session value (and what it holds: relay legs) goes with the connection.
        self.hooks = None;
    }
}
