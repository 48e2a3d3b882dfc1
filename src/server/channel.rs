//! `SmtpChannel`: the one file where the chat layer (framing, output) meets the SMTP session
//! (meaning). Bytes flow one way: chat → session → server → reply → chat.

use std::any::Any;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::listener::{ChannelShutdown, ListenerShared};
use super::{
    local_error, AddressRequest, CommandRequest, Completion, HeloRequest, Outcome, ServerCtx,
    SmtpSession,
};
use crate::chat::{ChatCtl, ChatHandler, Terminator};
use crate::reactor::{Ctx, TimerId};
use crate::smtp::{AddressCheck, CommandCheck, Config, Framing, Message, Output, Reply, Session};

/// What a deferred answer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Whether to greet the client.
    Connect,
    Message,
    Check,
    Command,
}

/// A decision handed to the server and not answered yet.
struct Pending {
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

/// The protocol half of one SMTP connection (Python's `SMTPChannel`).
pub(crate) struct SmtpChannel {
    session: Session,
    /// The connection's session (its hooks), opened by the listener's backend in `on_start`.
    hooks: Box<dyn SmtpSession>,
    shared: Rc<ListenerShared>,
    peer: SocketAddr,
    /// The unit (command line or message body) being collected.
    unit: Vec<u8>,
    /// The unit passed the session's input limit: the rest of it is discarded as it arrives.
    oversize: bool,
    /// The framing the chat is set to, to change the terminator only on a change.
    framing: Framing,
    outputs: Vec<Output>,
    wire: Vec<u8>,
    pending: Option<Pending>,
    idle: Option<TimerId>,
    shutdown: Option<TimerId>,
    shutting_down: bool,
    /// A transaction (MAIL accepted, or being decided) is open.
    in_transaction: bool,
    /// The open transaction's message reached the server.
    delivered: bool,
    /// The greeting is held back (`ServerOptions::greeting_delay`) until this timer fires.
    greeting: Option<TimerId>,
    /// The greeting `on_connect` chose instead of the default `220` line.
    greeting_reply: Option<Box<Reply>>,
    /// The client sent something before the greeting.
    early: bool,
    /// Deadlines of the DATA phase in progress.
    data_clock: Option<DataClock>,
    /// Bytes of `unit`'s capacity counted in the listener's data memory.
    held: usize,
    /// The message being received did not fit in the data memory limit: it is discarded.
    over_budget: bool,
}

impl SmtpChannel {
    pub(crate) fn new(
        config: Arc<Config>,
        shared: Rc<ListenerShared>,
        peer: SocketAddr,
    ) -> SmtpChannel {
        SmtpChannel {
            session: Session::new(config, peer),
            hooks: Box::new(Unopened),
            shared,
            peer,
            unit: Vec::new(),
            oversize: false,
            framing: Framing::Line,
            outputs: Vec::new(),
            wire: Vec::new(),
            pending: None,
            idle: None,
            shutdown: None,
            shutting_down: false,
            in_transaction: false,
            delivered: false,
            greeting: None,
            greeting_reply: None,
            early: false,
            data_clock: None,
            held: 0,
            over_budget: false,
        }
    }

    fn push_reply(&mut self, chat: &mut ChatCtl, reply: &Reply) {
        self.wire.clear();
        reply.write_to(&mut self.wire);
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "{} reply: {}",
                self.peer,
                String::from_utf8_lossy(&self.wire).trim_end()
            );
        }
        chat.push(&self.wire);
    }

    /// Carries out what the session asked for, including answers that follow at once.
    fn act(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        loop {
            let outputs = std::mem::take(&mut self.outputs);
            if outputs.is_empty() {
                break;
            }
            for output in outputs {
                match output {
                    Output::Reply(reply) => self.push_reply(chat, &reply),
                    Output::Message(message) => self.deliver(message, chat, ctx),
                    Output::Close => chat.close_when_done(),
                    Output::CheckMail(check) => self.check(true, check, chat, ctx),
                    Output::CheckRcpt(check) => self.check(false, check, chat, ctx),
                    Output::Command(command) => self.command(command, chat, ctx),
                }
            }
        }
        self.sync_framing(chat);
        self.sync_data_clock(ctx);
        self.track_transaction(ctx);
    }

    /// Starts the DATA deadlines when the body begins, stops them when it is over. While they
    /// run, the command (idle) timer is off.
    fn sync_data_clock(&mut self, ctx: &mut Ctx<'_>) {
        let in_data = self.session.framing() == Framing::Data && !self.session.is_waiting();
        match (&self.data_clock, in_data) {
            (None, true) => {
                let Some(timeout) = self.shared.options.data_timeout else {
                    return;
                };
                if let Some(idle) = self.idle.take() {
                    ctx.cancel_timer(idle);
                }
                let now = Instant::now();
                self.data_clock = Some(DataClock {
                    timer: ctx.set_timer(timeout),
                    started: now,
                    last: now,
                    bytes: 0,
                });
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
                self.peer,
                clock.bytes,
                now - clock.started
            );
            return true;
        }
        clock.timer = ctx.set_timer(due - now);
        false
    }

    /// Makes room for `n` more bytes of message data in `unit`, within the listener's data
    /// memory limit; false when there is none.
    fn reserve_data(&mut self, n: usize) -> bool {
        let needed = self.unit.len() + n;
        let cap = self.unit.capacity();
        if needed <= cap {
            return true;
        }
        let limit = self.shared.options.data_memory_limit;
        let used = self.shared.data_memory.get();
        // Grow geometrically, but never past the message size limit, nor past the budget when
        // the exact size still fits.
        let ceiling = self.session.input_limit().unwrap_or(usize::MAX).max(needed);
        let mut target = needed.max(cap.saturating_mul(2)).max(4096).min(ceiling);
        if limit != 0 && used + (target - cap) > limit {
            if used + (needed - cap) > limit {
                return false;
            }
            target = needed;
        }
        self.unit.reserve_exact(target - self.unit.len());
        let grown = self.unit.capacity() - cap;
        self.held += grown;
        self.shared.data_memory.set(used + grown);
        true
    }

    /// Gives the memory counted for `unit` back to the listener.
    fn release_data(&mut self) {
        let held = std::mem::take(&mut self.held);
        let used = self.shared.data_memory.get();
        self.shared.data_memory.set(used - held);
    }

    fn timeout_reply(&self) -> Reply {
        Reply::new(421, format!("{} Error: timeout exceeded", self.hostname()))
    }

    /// The client talked before the greeting: `554` instead of `220`, then close.
    fn refuse_early_talker(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        log::info!("{}: talked before the greeting; closing", self.peer);
        if let Some(timer) = self.greeting.take() {
            ctx.cancel_timer(timer);
        }
        let reply = Reply::new(
            554,
            format!(
                "5.5.0 {} Error: talked before the greeting",
                self.hostname()
            ),
        );
        self.push_reply(chat, &reply);
        chat.close_when_done();
    }

    /// Tells the server when a transaction ends without its message reaching it.
    fn track_transaction(&mut self, ctx: &mut Ctx<'_>) {
        let open = self.session.envelope().is_some()
            || self.session.is_waiting()
            || self
                .pending
                .as_ref()
                .is_some_and(|p| p.kind != Kind::Connect);
        if self.in_transaction && !open && !self.delivered {
            self.notify_session(ctx, |session, cx| session.on_reset(cx));
        }
        if !open {
            self.delivered = false;
        }
        self.in_transaction = open;
    }

    fn notify_session(
        &mut self,
        ctx: &mut Ctx<'_>,
        call: impl FnOnce(&mut dyn SmtpSession, &mut ServerCtx<'_, '_>),
    ) {
        let hooks = &mut *self.hooks;
        let mut scx = ServerCtx::new(ctx);
        let result = catch_unwind(AssertUnwindSafe(|| call(hooks, &mut scx)));
        if result.is_err() {
            log::error!("{}: the server panicked in a notification hook", self.peer);
        }
    }

    /// Points the chat's terminator at what the session expects next.
    fn sync_framing(&mut self, chat: &mut ChatCtl) {
        if self.session.is_waiting() {
            return;
        }
        let framing = self.session.framing();
        if framing == self.framing {
            return;
        }
        self.framing = framing;
        match framing {
            Framing::Line => chat.set_terminator(Terminator::bytes("\r\n")),
            // The CRLF that ended the DATA line is the first half of the end-of-data marker.
            Framing::Data => chat.set_terminator_primed(Terminator::bytes("\r\n.\r\n"), 2),
        }
    }

    /// How a message is named in the log: built only when it is logged or kept for a deferral
    /// (formatting it for every message cost 9% of the instructions of a 1 KiB transaction).
    fn summary(peer: SocketAddr, message: &Message) -> String {
        format!(
            "{peer} from=<{}> to={:?} size={}",
            message.mail_from,
            message.rcpt_tos,
            message.data.len()
        )
    }

    fn deliver(&mut self, message: Message, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let hooks = &mut self.hooks;
        self.delivered = true;
        let peer = self.peer;
        let outcome = Self::call_server(&|| Self::summary(peer, &message), ctx, |cx| {
            hooks.process_message(&message, cx)
        });
        self.settle_outcome(
            Kind::Message,
            &|| Self::summary(peer, &message),
            outcome,
            chat,
            ctx,
        );
    }

    fn check(&mut self, mail: bool, check: AddressCheck, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let empty = Vec::new();
        let peer = self.peer;
        let summary = || {
            let verb = if mail { "MAIL" } else { "RCPT" };
            format!("{peer} {verb} <{}>", check.address)
        };
        let hooks = &mut self.hooks;
        let envelope = self.session.envelope();
        let request = AddressRequest {
            peer,
            helo: self.session.helo(),
            mail_from: envelope.map_or(check.address.as_str(), |e| e.mail_from.as_str()),
            address: &check.address,
            options: &check.options,
            mail_options: envelope.map_or(&check.options, |e| &e.mail_options),
            rcpt_tos: envelope.map_or(&empty, |e| &e.rcpt_tos),
        };
        let outcome = Self::call_server(&summary, ctx, |cx| {
            if mail {
                hooks.on_mail(&request, cx)
            } else {
                hooks.on_rcpt(&request, cx)
            }
        });
        self.settle_outcome(Kind::Check, &summary, outcome, chat, ctx);
    }

    fn command(&mut self, command: CommandCheck, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let peer = self.peer;
        let summary = || format!("{peer} command {}", command.verb);
        let hooks = &mut self.hooks;
        let request = CommandRequest {
            peer,
            helo: self.session.helo(),
            verb: &command.verb,
            arg: &command.arg,
        };
        let helo = matches!(command.verb.as_str(), "HELO" | "EHLO")
            && !self.shared.server_verbs.contains(&command.verb);
        let outcome = Self::call_server(&summary, ctx, |cx| {
            if helo {
                let request = HeloRequest {
                    peer,
                    name: &command.arg,
                    extended: command.verb == "EHLO",
                };
                hooks.on_helo(&request, cx)
            } else {
                hooks.on_command(&request, cx)
            }
        });
        self.settle_outcome(Kind::Command, &summary, outcome, chat, ctx);
    }

    /// Calls into the server under `catch_unwind`; a panic becomes `451`.
    fn call_server(
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

    fn settle_outcome(
        &mut self,
        kind: Kind,
        summary: &dyn Fn() -> String,
        (outcome, issued): (Outcome, Option<u64>),
        chat: &mut ChatCtl,
        ctx: &mut Ctx<'_>,
    ) {
        match (outcome, issued) {
            (Outcome::Deferred(deferral), Some(ticket)) if deferral.id == ticket => {
                chat.pause();
                if let Some(idle) = self.idle.take() {
                    ctx.cancel_timer(idle);
                }
                let timer = ctx.set_timer(self.shared.options.defer_timeout);
                self.pending = Some(Pending {
                    ticket,
                    timer,
                    summary: summary(),
                    kind,
                });
            }
            (Outcome::Deferred(_), _) => {
                log::error!(
                    "{}: Outcome::Deferred with a ticket this hook call did not obtain from \
                     ServerCtx::defer; answering 451",
                    summary()
                );
                self.finish(kind, local_error(), summary, ctx);
            }
            (Outcome::Accept, _) if kind == Kind::Command => {
                self.session.command_done(None, &mut self.outputs);
            }
            (Outcome::Accept, _) => self.finish(kind, Reply::ok(), summary, ctx),
            (Outcome::Reply(reply), _) => self.finish(kind, reply, summary, ctx),
        }
    }

    /// Gives the session the verdict it waits for.
    fn finish(
        &mut self,
        kind: Kind,
        reply: Reply,
        summary: &dyn Fn() -> String,
        ctx: &mut Ctx<'_>,
    ) {
        match kind {
            Kind::Connect => {
                let reply = if reply == local_error() {
                    // A panic, a dropped or stale ticket, the deadline: not the session's
                    // chosen words, and 451 is no greeting code.
                    self.closing_reply()
                } else {
                    reply
                };
                self.connect_decided(reply, ctx);
            }
            Kind::Message => {
                if log::log_enabled!(log::Level::Info) {
                    log::info!("{} -> {}", summary(), reply.code);
                }
                self.session.message_done(reply, &mut self.outputs);
                if self.shutting_down {
                    self.outputs.push(Output::Reply(self.closing_reply()));
                    self.outputs.push(Output::Close);
                }
            }
            Kind::Check | Kind::Command => {
                if log::log_enabled!(log::Level::Debug) {
                    log::debug!("{} -> {}", summary(), reply.code);
                }
                self.session.check_done(reply, &mut self.outputs);
            }
        }
    }

    fn complete(&mut self, completion: Completion, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        let Some(pending) = self.pending.take_if(|p| p.ticket == completion.id) else {
            return; // a late answer: the deadline already answered 451
        };
        ctx.cancel_timer(pending.timer);
        let reply = completion.reply.unwrap_or_else(|| {
            log::error!(
                "{}: deferred ticket dropped unanswered; answering 451",
                pending.summary
            );
            local_error()
        });
        self.finish(pending.kind, reply, &|| pending.summary.clone(), ctx);
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

    fn is_idle(&self) -> bool {
        self.pending.is_none()
            && self.session.envelope().is_none()
            && self.session.framing() == Framing::Line
    }

    fn begin_shutdown(
        &mut self,
        grace: std::time::Duration,
        chat: &mut ChatCtl,
        ctx: &mut Ctx<'_>,
    ) {
        self.shutting_down = true;
        if self.is_idle() {
            let reply = self.closing_reply();
            self.push_reply(chat, &reply);
            chat.close_when_done();
        } else {
            self.shutdown = Some(ctx.set_timer(grace));
        }
    }
}

impl SmtpChannel {
    /// `on_connect` decided (at once or through its ticket): greet (after the greeting
    /// delay, if any) or refuse and close.
    fn connect_decided(&mut self, reply: Reply, ctx: &mut Ctx<'_>) {
        if reply.code / 100 != 2 {
            log::info!("{}: refused at connect: {}", self.peer, reply.code);
            self.outputs.push(Output::Reply(reply));
            self.outputs.push(Output::Close);
            return;
        }
        // `250 OK` (`Outcome::Accept`, `Ticket::accept`) greets with the default line.
        let custom = (reply != Reply::ok()).then_some(reply);
        if let Some(delay) = self.shared.options.greeting_delay {
            self.greeting_reply = custom.map(Box::new);
            self.greeting = Some(ctx.set_timer(delay));
            return;
        }
        self.greet(custom);
    }

    /// Queues the greeting: the session's `220` line, or the one `on_connect` chose.
    fn greet(&mut self, custom: Option<Reply>) {
        let from = self.outputs.len();
        self.session.start(&mut self.outputs);
        if let Some(reply) = custom {
            if let Some(Output::Reply(greeting)) = self.outputs.get_mut(from) {
                *greeting = reply;
            }
        }
    }
}

/// The hooks of a channel before its session is opened and after it is closed: they never
/// run (a channel without a session refuses the connection).
struct Unopened;

impl SmtpSession for Unopened {
    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Reply(local_error())
    }
}

impl ChatHandler for SmtpChannel {
    fn collect_incoming_data(&mut self, data: &[u8]) {
        if self.greeting.is_some() {
            self.early = true;
            return;
        }
        let in_data = self.framing == Framing::Data;
        if in_data {
            if let Some(clock) = &mut self.data_clock {
                clock.bytes += data.len();
                clock.last = Instant::now();
            }
        }
        if self.oversize || self.over_budget {
            return;
        }
        if let Some(limit) = self.session.input_limit() {
            if self.unit.len() + data.len() > limit {
                self.oversize = true;
                self.unit = Vec::new();
                self.release_data();
                return;
            }
        }
        if in_data && !self.reserve_data(data.len()) {
            log::warn!(
                "{}: message data memory limit reached; discarding this message",
                self.peer
            );
            self.over_budget = true;
            self.unit = Vec::new();
            self.release_data();
            return;
        }
        self.unit.extend_from_slice(data);
    }

    fn found_terminator(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        if self.greeting.is_some() || self.early {
            return self.refuse_early_talker(chat, ctx);
        }
        self.arm_idle(ctx);
        if std::mem::take(&mut self.oversize) {
            self.session.feed_oversize(&mut self.outputs);
        } else if std::mem::take(&mut self.over_budget) {
            let reply = Reply::new(452, "4.3.1 Insufficient system storage");
            self.session.feed_data_refused(reply, &mut self.outputs);
        } else {
            let unit = std::mem::take(&mut self.unit);
            match self.session.framing() {
                Framing::Line => {
                    log::debug!(
                        "{} command: {:?}",
                        self.peer,
                        String::from_utf8_lossy(&unit)
                    );
                    self.session.feed_line(&unit, &mut self.outputs);
                    // Keep the allocation for the next line, unless it was a large one.
                    if unit.capacity() <= 1024 {
                        self.unit = unit;
                        self.unit.clear();
                    }
                }
                Framing::Data => {
                    log::debug!("{} data: {} bytes", self.peer, unit.len());
                    self.session.feed_data(&unit, &mut self.outputs);
                    drop(unit);
                    self.release_data();
                }
            }
        }
        self.act(chat, ctx);
        if self.shutting_down && self.is_idle() && !chat.is_closing() {
            let reply = self.closing_reply();
            self.push_reply(chat, &reply);
            chat.close_when_done();
        }
    }

    fn on_start(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        log::debug!("{} connected", self.peer);
        let peer = self.peer;
        let shared = self.shared.clone();
        let opened = catch_unwind(AssertUnwindSafe(|| {
            shared.backend.borrow_mut().open_session(peer)
        }));
        let hooks = match opened {
            Ok(hooks) => hooks,
            Err(_) => {
                log::error!("{peer}: open_session panicked; refusing the connection");
                let reply = Reply::new(421, "Service not available, closing transmission channel");
                self.push_reply(chat, &reply);
                chat.close_when_done();
                return;
            }
        };
        self.hooks = hooks;
        let hooks = &mut self.hooks;
        let summary = || format!("{peer} connect");
        let mut scx = ServerCtx::new(ctx);
        let result = catch_unwind(AssertUnwindSafe(|| hooks.on_connect(peer, &mut scx)));
        let issued = scx.issued();
        let outcome = result.unwrap_or_else(|_| {
            log::error!("{peer}: on_connect panicked; refusing the connection");
            Outcome::Reply(Reply::new(
                421,
                "Service not available, closing transmission channel",
            ))
        });
        self.settle_outcome(Kind::Connect, &summary, (outcome, issued), chat, ctx);
        if self.pending.is_none() {
            self.act(chat, ctx);
            if !chat.is_closing() {
                self.arm_idle(ctx);
            }
        }
    }

    fn on_timer(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, timer: TimerId) {
        if self.idle == Some(timer) {
            self.idle = None;
            log::info!("{}: idle timeout", self.peer);
            let reply = self.timeout_reply();
            self.push_reply(chat, &reply);
            chat.close_when_done();
        } else if self.greeting == Some(timer) {
            self.greeting = None;
            if self.early {
                self.refuse_early_talker(chat, ctx);
            } else {
                let custom = self.greeting_reply.take().map(|r| *r);
                self.greet(custom);
                self.act(chat, ctx);
            }
        } else if self.data_clock.as_ref().is_some_and(|c| c.timer == timer) {
            if self.data_deadline_passed(ctx) {
                self.data_clock = None;
                let reply = self.timeout_reply();
                self.push_reply(chat, &reply);
                chat.close_when_done();
            }
        } else if self.pending.as_ref().is_some_and(|p| p.timer == timer) {
            let pending = self.pending.take().expect("checked above");
            log::warn!(
                "{}: no answer within the deferral deadline; answering 451",
                pending.summary
            );
            self.finish(
                pending.kind,
                local_error(),
                &|| pending.summary.clone(),
                ctx,
            );
            self.resume(chat, ctx);
        } else if self.shutdown == Some(timer) {
            self.shutdown = None;
            let reply = self.closing_reply();
            self.push_reply(chat, &reply);
            chat.close_when_done();
        }
    }

    fn on_notify(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        let message = match message.downcast::<Completion>() {
            Ok(completion) => return self.complete(*completion, chat, ctx),
            Err(other) => other,
        };
        if let Ok(shutdown) = message.downcast::<ChannelShutdown>() {
            self.begin_shutdown(shutdown.grace, chat, ctx);
        }
    }

    fn on_close(&mut self, _chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        log::debug!("{} closed", self.peer);
        if let Some(pending) = self.pending.take() {
            log::warn!(
                "{}: client gone before the deferred answer",
                pending.summary
            );
            ctx.cancel_timer(pending.timer);
        }
        // Timers of a closed dispatcher would be dropped when due; cancelling frees them now.
        let data_timer = self.data_clock.take().map(|c| c.timer);
        for timer in [
            self.idle.take(),
            self.shutdown.take(),
            self.greeting.take(),
            data_timer,
        ]
        .into_iter()
        .flatten()
        {
            ctx.cancel_timer(timer);
        }
        if self.in_transaction && !self.delivered {
            self.notify_session(ctx, |session, cx| session.on_reset(cx));
        }
        self.notify_session(ctx, |session, cx| session.on_disconnect(cx));
        self.hooks = Box::new(Unopened);
        self.unit = Vec::new();
        self.release_data();
        self.shared.channels.borrow_mut().remove(&ctx.handle());
        self.shared.connection_closed(self.peer.ip().to_canonical());
    }
}
