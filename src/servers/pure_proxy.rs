//! [`PureProxy`]: relays every message to an upstream server, inside the one loop, and never
//! answers `250` for mail the upstream did not take.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::SystemTime;

use ipnet::IpNet;

use super::headers::{count_received, insert_x_peer, received_header};
use crate::client::{Client, ClientConfig, Event, EventHandler, MailParams, Relay, RelayOptions};
use crate::smtp::EnhancedCode;

use crate::client::RelayCommand;
use crate::reactor::{Ctx, Handle};
use crate::server::{
    AddressRequest, Backend, Message, Outcome, Peer, Reply, ServerCtx, SmtpSession, Ticket,
};
use crate::sys::fqdn;

/// When the upstream is contacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayMode {
    /// The semantics of Postfix's before-queue proxy (the default): the upstream session opens
    /// at MAIL, each MAIL and RCPT is forwarded and answered with the upstream's own reply, and
    /// the reply after the data is the upstream's. The client learns the exact fate of every
    /// recipient, so nothing needs reporting afterwards.
    Live,
    /// CPython's timing: after the whole message has been received. All recipients accepted →
    /// `250 OK`; any temporary refusal → `451` for the whole message (nothing is sent, so a
    /// retry duplicates nothing); all refused permanently → the upstream's reply; some refused
    /// permanently and the rest accepted → `250`, with each refusal logged, reported to the
    /// [refusal hook](PureProxy::on_refusal), and named in a delivery status notification to the
    /// sender ([`ProxyOptions::send_dsn`]).
    AfterData,
}

/// A recipient the upstream refused permanently while the message went to the others (only
/// possible in [`RelayMode::AfterData`]).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Refusal {
    /// The envelope sender.
    pub mail_from: String,
    /// The refused recipient.
    pub rcpt: String,
    /// The upstream's reply.
    pub reply: Reply,
}

/// Settings of a [`PureProxy`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProxyOptions {
    /// When to contact the upstream.
    pub mode: RelayMode,
    /// Upstream timeouts.
    pub relay: RelayOptions,
    /// Our name: in EHLO to the upstream and in the `Received:` header. Default: the FQDN.
    pub hostname: String,
    /// Clients allowed to relay, besides loopback.
    pub trusted: Vec<IpNet>,
    /// Whether loopback clients may relay. Default true.
    pub trust_loopback: bool,
    /// Relay for anybody (an open relay: only behind other access control).
    pub open_relay: bool,
    /// Refuse messages that already carry more `Received:` headers than this (a mail loop).
    /// Default 50, as Postfix's `hopcount_limit`.
    pub max_hops: usize,
    /// After-data mode: when the upstream refuses some recipients permanently after the client
    /// was told `250` for the message, send the envelope sender a delivery status notification
    /// (RFC 3464) through the upstream, naming each refused recipient with the upstream's reply
    /// (never for the null sender). Default true; off, the refusals are only logged and given
    /// to the [refusal hook](PureProxy::on_refusal).
    pub send_dsn: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            mode: RelayMode::Live,
            relay: RelayOptions::default(),
            hostname: fqdn(),
            trusted: Vec::new(),
            trust_loopback: true,
            open_relay: false,
            max_hops: 50,
            send_dsn: true,
        }
    }
}

type RefusalHook = Rc<RefCell<dyn FnMut(&Refusal)>>;

/// CPython's `PureProxy(localaddr, remoteaddr)`, done right: the relay runs on the reactor
/// (no thread, no blocking `smtplib`), the client's answer is the upstream's verdict, and an
/// upstream that is down, slow or drops the connection gets the client a `451` so it retries —
/// never a `250` for mail that did not arrive.
///
/// Each message gets a `Received:` header (RFC 5321 4.4) and `X-Peer: <client ip>` after its
/// last header, as CPython added. Relaying is allowed from loopback and
/// [`trusted`](ProxyOptions::trusted) networks only, unless [`open_relay`](ProxyOptions::open_relay).
///
/// A [`Backend`]: give it to [`Listener::bind`](crate::server::Listener::bind) as it is. Each
/// client connection gets its own session, which owns that connection's upstream session (in
/// live mode).
pub struct PureProxy {
    settings: Rc<Settings>,
}

/// What every session of a proxy shares.
#[derive(Clone)]
struct Settings {
    upstream: SocketAddr,
    options: ProxyOptions,
    on_refusal: Option<RefusalHook>,
}

/// One client connection of a [`PureProxy`].
struct ProxySession {
    settings: Rc<Settings>,
    /// Live mode: the connection's upstream session, once MAIL opened it.
    live: Option<Live>,
}

/// Allowance for the `Received:` and `X-Peer:` headers in the SIZE announced upstream before
/// the message is known (live mode).
const HEADER_ALLOWANCE: u64 = 512;

/// The sender and MAIL parameters to send upstream for a client's MAIL FROM: the null path as
/// an empty address, the client's SIZE plus `header_allowance` for the headers the relay adds,
/// and its BODY=8BITMIME and SMTPUTF8.
pub(crate) fn upstream_mail(
    request: &AddressRequest<'_>,
    header_allowance: u64,
) -> (String, MailParams) {
    let from = if request.address == "<>" {
        String::new()
    } else {
        request.address.to_string()
    };
    let params = MailParams {
        size: request
            .options
            .iter()
            .find_map(|o| o.strip_prefix("SIZE="))
            .and_then(|n| n.parse::<u64>().ok())
            .map(|n| n + header_allowance),
        eight_bit: request.options.iter().any(|o| o == "BODY=8BITMIME"),
        smtputf8: request.options.iter().any(|o| o == "SMTPUTF8"),
    };
    (from, params)
}

/// The upstream side of one client connection in live mode.
struct Live {
    relay: Handle,
    state: Rc<RefCell<LiveState>>,
}

#[derive(Default)]
struct LiveState {
    /// The client's command waiting for the upstream's answer (at most one: the channel reads
    /// nothing more while it waits).
    waiting: Option<Ticket>,
    /// Why the upstream session is unusable, once it is.
    dead: Option<Reply>,
}

impl LiveState {
    fn answer(&mut self, reply: Reply, ctx: &mut Ctx<'_>) {
        if let Some(ticket) = self.waiting.take() {
            ticket.complete_in(ctx, reply);
        }
    }

    fn handle(&mut self, event: Event, ctx: &mut Ctx<'_>) {
        match event {
            Event::Mail(reply)
            | Event::Rcpt(_, reply)
            | Event::DataRefused(reply)
            | Event::Data(reply) => self.answer(reply, ctx),
            Event::Failed(reply) => {
                self.dead = Some(reply.clone());
                self.answer(reply, ctx);
            }
            Event::Closed => {
                let reply =
                    Reply::new(451, "Requested action aborted: upstream closed the session");
                self.dead = Some(reply.clone());
                self.answer(reply, ctx);
            }
            _ => {}
        }
    }
}

impl PureProxy {
    /// A proxy to `upstream`, resolved by the caller at start-up (a lookup blocks; the loop
    /// never does one).
    pub fn new(upstream: SocketAddr, options: ProxyOptions) -> PureProxy {
        if options.open_relay {
            log::warn!(
                "PureProxy is an open relay: anybody who can connect can send mail through it"
            );
        }
        PureProxy {
            settings: Rc::new(Settings {
                upstream,
                options,
                on_refusal: None,
            }),
        }
    }

    /// Calls `hook` for each recipient refused permanently while the message was delivered to
    /// the others.
    pub fn on_refusal(&mut self, hook: impl FnMut(&Refusal) + 'static) {
        Rc::make_mut(&mut self.settings).on_refusal = Some(Rc::new(RefCell::new(hook)));
    }

    /// The upstream address.
    pub fn upstream(&self) -> SocketAddr {
        self.settings.upstream
    }
}

impl Backend for PureProxy {
    fn open_session(&mut self, _peer: &Peer) -> Box<dyn SmtpSession> {
        Box::new(ProxySession {
            settings: self.settings.clone(),
            live: None,
        })
    }
}

impl Settings {
    fn may_relay(&self, ip: IpAddr) -> bool {
        may_relay(&self.options, ip)
    }

    fn upstream_data(&self, message: &Message) -> Vec<u8> {
        upstream_data(&self.options.hostname, message)
    }
}

/// Whether a client at `ip` may relay under `options`.
pub(super) fn may_relay(options: &ProxyOptions, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    options.open_relay
        || (options.trust_loopback && ip.is_loopback())
        || options.trusted.iter().any(|net| net.contains(&ip))
}

/// The message as it goes upstream: trace header, then the data with `X-Peer`.
pub(super) fn upstream_data(hostname: &str, message: &Message) -> Vec<u8> {
    let peer_ip = message.peer.ip().to_string();
    let mut data = trace_header(hostname, message).into_bytes();
    data.extend_from_slice(&insert_x_peer(&message.data, &peer_ip));
    data
}

/// The `Received:` header this relay adds to `message`.
pub(super) fn trace_header(hostname: &str, message: &Message) -> String {
    let single = match message.rcpt_tos.as_slice() {
        [one] => Some(one.as_str()),
        _ => None,
    };
    received_header(
        message.helo.as_deref(),
        &message.peer.ip().to_string(),
        hostname,
        (true, message.tls.is_some()),
        single,
        SystemTime::now(),
    )
}

impl std::fmt::Debug for PureProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PureProxy")
            .field("upstream", &self.settings.upstream)
            .field("options", &self.settings.options)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// A relay to the upstream (not yet spawned), or the `451` to answer if no socket can be
    /// had.
    fn open_relay(&self, on_event: EventHandler) -> Result<Relay, Outcome> {
        Relay::open(
            self.upstream,
            ClientConfig::smtp(self.options.hostname.clone()),
            self.options.relay.clone(),
            on_event,
        )
        .map_err(|e| {
            log::error!("cannot open a connection to {}: {e}", self.upstream);
            Outcome::Reply(Reply::new(
                451,
                "Requested action aborted: cannot reach the upstream server",
            ))
        })
    }
}

impl ProxySession {
    fn after_data(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let settings = &self.settings;
        let data = settings.upstream_data(message);
        let params = MailParams::for_message(&data, message.smtputf8);
        let ticket = cx.defer();
        let deferred = Outcome::deferred(&ticket);
        let headers_end = super::headers::header_end(&message.data).unwrap_or(message.data.len());
        let mut state = AfterData {
            ticket: Some(ticket),
            mail_from: message.mail_from.clone(),
            rcpts: message.rcpt_tos.clone(),
            replies: vec![None; message.rcpt_tos.len()],
            data: Some(data),
            on_refusal: settings.on_refusal.clone(),
            dsn: settings.options.send_dsn.then(|| DsnSource {
                hostname: settings.options.hostname.clone(),
                next_hop: settings.upstream.to_string(),
                headers: message.data[..headers_end].to_vec(),
            }),
            sending_dsn: None,
        };
        let relay = settings.open_relay(Box::new(move |event, client, ctx| {
            state.handle(event, client, ctx)
        }));
        let mut relay = match relay {
            Ok(relay) => relay,
            Err(refusal) => return refusal,
        };
        let mail_from = if message.mail_from == "<>" {
            ""
        } else {
            message.mail_from.as_str()
        };
        relay.client().mail(mail_from, params);
        for rcpt in &message.rcpt_tos {
            relay.client().rcpt(rcpt.clone());
        }
        cx.ctx().spawn(relay);
        deferred
    }

    /// Live mode: the connection's upstream session, opened (and the MAIL queued) if needed.
    fn live_mail(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let (from, params) = upstream_mail(request, HEADER_ALLOWANCE);
        if let Some(live) = self
            .live
            .as_ref()
            .filter(|live| live.state.borrow().dead.is_none())
        {
            let ticket = cx.defer();
            let deferred = Outcome::deferred(&ticket);
            live.state.borrow_mut().waiting = Some(ticket);
            cx.ctx()
                .notify(live.relay, RelayCommand::Mail(from, params));
            return deferred;
        }
        let state: Rc<RefCell<LiveState>> = Rc::default();
        let events = state.clone();
        let relay = self
            .settings
            .open_relay(Box::new(move |event, _client, ctx| {
                events.borrow_mut().handle(event, ctx)
            }));
        let mut relay = match relay {
            Ok(relay) => relay,
            Err(refusal) => return refusal,
        };
        relay.client().mail(from, params);
        let ticket = cx.defer();
        let deferred = Outcome::deferred(&ticket);
        state.borrow_mut().waiting = Some(ticket);
        let relay = cx.ctx().spawn(relay);
        // A dead session this replaces has already closed (that is how it died).
        self.live = Some(Live { relay, state });
        deferred
    }

    /// Live mode: forwards a command to the connection's upstream session and defers.
    fn live_forward(&mut self, command: RelayCommand, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let Some(live) = &self.live else {
            return Outcome::Reply(Reply::new(
                451,
                "Requested action aborted: no upstream session",
            ));
        };
        if let Some(dead) = live.state.borrow().dead.clone() {
            return Outcome::Reply(dead);
        }
        let ticket = cx.defer();
        let deferred = Outcome::deferred(&ticket);
        live.state.borrow_mut().waiting = Some(ticket);
        cx.ctx().notify(live.relay, command);
        deferred
    }
}

impl SmtpSession for ProxySession {
    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let settings = &self.settings;
        if !settings.may_relay(message.peer.ip()) {
            log::warn!("{}: relay access denied", message.peer);
            return Outcome::Reply(Reply::enhanced(
                554,
                EnhancedCode::new(5, 7, 1),
                "Relay access denied",
            ));
        }
        let hops = count_received(&message.data);
        if hops > settings.options.max_hops {
            log::warn!("{}: {hops} hops, a mail loop?", message.peer);
            return Outcome::Reply(Reply::enhanced(
                554,
                EnhancedCode::new(5, 4, 6),
                "Too many hops",
            ));
        }
        match settings.options.mode {
            RelayMode::AfterData => self.after_data(message, cx),
            RelayMode::Live => {
                let data = settings.upstream_data(message);
                self.live_forward(RelayCommand::Data(data), cx)
            }
        }
    }

    fn on_mail(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        match self.settings.options.mode {
            RelayMode::Live => self.live_mail(request, cx),
            RelayMode::AfterData => Outcome::Accept,
        }
    }

    fn on_rcpt(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        if !self.settings.may_relay(request.peer.ip()) {
            log::warn!(
                "{}: relay access denied for <{}>",
                request.peer,
                request.address
            );
            return Outcome::Reply(Reply::enhanced(
                554,
                EnhancedCode::new(5, 7, 1),
                format!("<{}>: Relay access denied", request.address),
            ));
        }
        match self.settings.options.mode {
            RelayMode::Live => {
                self.live_forward(RelayCommand::Rcpt(request.address.to_string()), cx)
            }
            RelayMode::AfterData => Outcome::Accept,
        }
    }

    fn on_reset(&mut self, cx: &mut ServerCtx<'_, '_>) {
        if let Some(live) = &self.live {
            if live.state.borrow().dead.is_none() {
                cx.ctx().notify(live.relay, RelayCommand::Rset);
            }
        }
    }

    fn on_disconnect(&mut self, cx: &mut ServerCtx<'_, '_>) {
        if let Some(live) = self.live.take() {
            // An answer still awaited has nobody left to hear it.
            live.state.borrow_mut().waiting = None;
            if live.state.borrow().dead.is_none() {
                cx.ctx().notify(live.relay, RelayCommand::Quit);
            }
        }
    }
}

/// The after-data relay of one message: turns the upstream's replies into one verdict.
struct AfterData {
    ticket: Option<Ticket>,
    mail_from: String,
    rcpts: Vec<String>,
    replies: Vec<Option<Reply>>,
    data: Option<Vec<u8>>,
    on_refusal: Option<RefusalHook>,
    /// What a notification is made of, when notifications are sent.
    dsn: Option<DsnSource>,
    /// The recipients a notification being sent names (for the log).
    sending_dsn: Option<Vec<String>>,
}

/// What a delivery status notification quotes.
struct DsnSource {
    hostname: String,
    next_hop: String,
    /// The original message's header section.
    headers: Vec<u8>,
}

fn upstream_temporary(reply: &Reply) -> Reply {
    Reply::new(
        451,
        format!(
            "Requested action aborted: upstream said {} {}",
            reply.code,
            reply.text()
        ),
    )
}

impl AfterData {
    fn finish(&mut self, reply: Reply, ctx: &mut Ctx<'_>) {
        if let Some(ticket) = self.ticket.take() {
            ticket.complete_in(ctx, reply);
        }
    }

    fn handle(&mut self, event: Event, client: &mut Client, ctx: &mut Ctx<'_>) {
        if self.sending_dsn.is_some() {
            return self.handle_dsn(event, client);
        }
        match event {
            Event::Ready(_) => {}
            Event::Mail(reply) if reply.code / 100 == 2 => {}
            Event::Mail(reply) => {
                let verdict = if reply.code / 100 == 5 {
                    reply
                } else {
                    upstream_temporary(&reply)
                };
                self.finish(verdict, ctx);
                client.quit();
            }
            Event::Rcpt(n, reply) => {
                if let Some(slot) = self.replies.get_mut(n) {
                    *slot = Some(reply);
                }
                if n + 1 == self.rcpts.len() {
                    self.all_rcpts_answered(client, ctx);
                }
            }
            Event::DataRefused(reply) | Event::Data(reply) => {
                let delivered = reply.code / 100 == 2;
                let verdict = match reply.code / 100 {
                    2 => Reply::ok(),
                    5 => reply,
                    _ => upstream_temporary(&reply),
                };
                self.finish(verdict, ctx);
                if delivered {
                    let refused = self.report_refusals();
                    if self.start_dsn(&refused, client) {
                        return;
                    }
                }
                client.quit();
            }
            Event::Failed(reply) => self.finish(reply, ctx),
            Event::Closed => self.finish(
                Reply::new(451, "Requested action aborted: upstream closed the session"),
                ctx,
            ),
            _ => {}
        }
    }

    fn all_rcpts_answered(&mut self, client: &mut Client, ctx: &mut Ctx<'_>) {
        let replies: Vec<&Reply> = self.replies.iter().flatten().collect();
        if let Some(temp) = replies.iter().find(|r| r.code / 100 == 4) {
            let verdict = upstream_temporary(temp);
            self.finish(verdict, ctx);
            client.rset();
            client.quit();
        } else if replies.iter().all(|r| r.code / 100 != 2) {
            let first = replies.first().map(|r| (*r).clone()).unwrap_or_else(|| {
                Reply::enhanced(554, EnhancedCode::new(5, 5, 1), "No valid recipients")
            });
            self.finish(first, ctx);
            client.quit();
        } else if let Some(data) = self.data.take() {
            client.data(data);
        }
    }

    /// Sends the sender a notification naming `refused` on the same upstream session (the
    /// message itself is done); false when there is nothing to send.
    fn start_dsn(&mut self, refused: &[usize], client: &mut Client) -> bool {
        let Some(source) = &self.dsn else {
            return false;
        };
        if refused.is_empty() || self.mail_from == "<>" || self.mail_from.is_empty() {
            return false;
        }
        let failed: Vec<super::dsn::Failed<'_>> = refused
            .iter()
            .filter_map(|&i| {
                Some(super::dsn::Failed {
                    rcpt: self.rcpts.get(i)?,
                    reply: self.replies.get(i)?.as_ref()?,
                })
            })
            .collect();
        let report = super::dsn::report(
            &source.hostname,
            &source.next_hop,
            &self.mail_from,
            &failed,
            &source.headers,
            std::time::SystemTime::now(),
        );
        let names = failed.iter().map(|f| f.rcpt.to_string()).collect();
        client.mail("", MailParams::for_message(&report, false));
        client.rcpt(self.mail_from.clone());
        self.data = Some(report);
        self.sending_dsn = Some(names);
        true
    }

    /// The notification's own transaction.
    fn handle_dsn(&mut self, event: Event, client: &mut Client) {
        let names = self
            .sending_dsn
            .as_ref()
            .map_or(String::new(), |n| n.join(", "));
        let failed = |what: &str, reply: &Reply| {
            log::error!(
                "delivery status notification to <{}> for {names} not sent: {what} {} {}",
                self.mail_from,
                reply.code,
                reply.text()
            );
        };
        match event {
            Event::Mail(reply) | Event::Rcpt(_, reply) | Event::DataRefused(reply)
                if reply.code / 100 != 2 && reply.code != 354 =>
            {
                failed("the upstream said", &reply);
                client.quit();
            }
            Event::Rcpt(_, _) => {
                if let Some(report) = self.data.take() {
                    client.data(report);
                }
            }
            Event::Data(reply) if reply.code / 100 == 2 => {
                log::info!(
                    "delivery status notification sent to <{}> for {names}",
                    self.mail_from
                );
                self.sending_dsn = Some(Vec::new());
                client.quit();
            }
            Event::Data(reply) => {
                failed("the upstream said", &reply);
                client.quit();
            }
            Event::Failed(reply) => failed("the upstream session failed:", &reply),
            _ => {}
        }
    }

    /// Logs and reports each recipient refused permanently; returns their indexes.
    fn report_refusals(&mut self) -> Vec<usize> {
        let mut refused = Vec::new();
        for (i, (rcpt, reply)) in self.rcpts.iter().zip(&self.replies).enumerate() {
            let Some(reply) = reply.as_ref().filter(|r| r.code / 100 == 5) else {
                continue;
            };
            log::warn!(
                "upstream refused <{rcpt}> (from <{}>): {} {}",
                self.mail_from,
                reply.code,
                reply.text()
            );
            if let Some(hook) = &self.on_refusal {
                (hook.borrow_mut())(&Refusal {
                    mail_from: self.mail_from.clone(),
                    rcpt: rcpt.clone(),
                    reply: reply.clone(),
                });
            }
            refused.push(i);
        }
        refused
    }
}
