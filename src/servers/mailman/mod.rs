//! [`MailmanProxy`]: list mail handed to Mailman (3 over LMTP, or 2 through its mail wrapper),
//! everything else relayed upstream as [`PureProxy`](super::PureProxy) relays it — inside the
//! one loop, and with every recipient's fate known before the client is told `250`.
//!
//! ```text
//!              RCPT list candidate? ──yes──► Mailman 3: RCPT over LMTP ── 250 ──► Mailman's
//!   client ──►       │                        (Mailman 2: lists/NAME/config.pck)   │
//!                    no ◄──────────────────────────── 550: not a list ◄────────────┘
//!                    ▼                                4xx / unreachable: 451, never relayed
//!              upstream: MAIL/RCPT relayed live, the upstream's own reply
//!
//!   end of data: DATA to the upstream and over LMTP (one reply per recipient), or the
//!   wrapper `mail/mailman post LIST` per Mailman 2 recipient; 250 only if all delivered.
//! ```
//!
//! CPython's `MailmanProxy` answered `250` whatever happened: refusals upstream were printed,
//! and list mail was queued with Mailman 2.0's in-process API (which no longer exists). Here
//! the routing decisions are CPython's (its recipient split) and the hand-over uses the interfaces
//! Mailman supports. A temporary failure on either side gets the client `451` for the whole
//! message, even when the other side already took it: a duplicate on retry is better than a
//! loss.

mod classify;
mod mm2;

pub use classify::Suffixes;
use classify::{classify, Candidate};
pub use mm2::Mailman2;
use mm2::WrapperRun;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime};

use super::headers::{count_received, header_end, rfc5322_date};
use super::pure_proxy::{may_relay, trace_header, upstream_data, upstream_mail};
use super::ProxyOptions;
use crate::client::{ClientConfig, Event, MailParams, Relay, RelayCommand, RelayOptions};
use crate::reactor::{Ctx, Handle};
use crate::server::{
    AddressRequest, Backend, Message, Outcome, Peer, Reply, ServerCtx, SmtpSession, Ticket,
};
use crate::smtp::EnhancedCode;

/// Where Mailman 3's LMTP runner listens (`[mta] lmtp_host`/`lmtp_port`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LmtpAddr {
    /// TCP; Mailman's default is `127.0.0.1:8024`.
    Tcp(SocketAddr),
    /// A unix-domain socket.
    Unix(PathBuf),
}

impl Default for LmtpAddr {
    fn default() -> Self {
        LmtpAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 8024)))
    }
}

impl std::fmt::Display for LmtpAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpAddr::Tcp(a) => write!(f, "{a}"),
            LmtpAddr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Which Mailman the list mail goes to.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum MailmanVersion {
    /// Mailman 3, over LMTP. Whether an address is a list is Mailman's own answer to `RCPT`.
    Mailman3(LmtpAddr),
    /// Mailman 2: a list exists when its `config.pck` does; mail is piped to its wrapper.
    Mailman2(Mailman2),
}

impl Default for MailmanVersion {
    fn default() -> Self {
        MailmanVersion::Mailman3(LmtpAddr::default())
    }
}

/// Settings of a [`MailmanProxy`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MailmanOptions {
    /// The relay side: our name, who may relay, hop limit, upstream timeouts. (Its `mode` is
    /// ignored: the upstream is always asked live, at RCPT time.)
    pub proxy: ProxyOptions,
    /// Where list mail goes. Default: Mailman 3 at `127.0.0.1:8024`.
    pub mailman: MailmanVersion,
    /// Which addresses are list candidates. Default: CPython's.
    pub suffixes: Suffixes,
    /// Mailman 3 only: the list domain to ask Mailman about, whatever the recipient's domain
    /// (CPython ignored the domain; Mailman 3 lists are domain-qualified). Default: the
    /// recipient's own domain.
    pub mailman_domain: Option<String>,
    /// Timeouts towards Mailman 3's LMTP runner.
    pub lmtp: RelayOptions,
    /// Mailman 2: how long the wrapper may take before it is killed and the client gets `451`.
    /// Default 60 s.
    pub wrapper_timeout: Duration,
}

impl Default for MailmanOptions {
    fn default() -> Self {
        let lmtp = RelayOptions {
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            // Mailman's LMTP runner is local: no STARTTLS on that leg.
            tls: crate::client::UpstreamTls::new(crate::client::UpstreamTlsMode::Off),
            ..RelayOptions::default()
        };
        MailmanOptions {
            proxy: ProxyOptions::default(),
            mailman: MailmanVersion::default(),
            suffixes: Suffixes::default(),
            mailman_domain: None,
            lmtp,
            wrapper_timeout: Duration::from_secs(60),
        }
    }
}

/// CPython's `MailmanProxy(localaddr, remoteaddr)`, for Mailman 3 (LMTP) and Mailman 2 (its
/// mail wrapper), on the reactor.
///
/// * A recipient is a list candidate by CPython's rules (its recipient split; [`Suffixes::Mailman3`]
///   for Mailman 3's own addresses). Mailman 3 is asked at `RCPT` time over LMTP (it answers
///   `550` for an unknown list); Mailman 2's list directory is looked at. A list's recipient is
///   Mailman's; every other recipient is relayed upstream live, with the upstream's own reply,
///   from loopback and [trusted](ProxyOptions::trusted) clients only.
/// * While Mailman cannot be reached, list candidates get `451`: they are never relayed
///   upstream by mistake.
/// * After the data: `From:` and `Date:` are added to Mailman's copy when missing (as CPython
///   did; `To:` is never touched, Mailman 3's `-confirm` reads it), and a `Received:` header to
///   both copies (plus `X-Peer:` upstream, as PureProxy). The reply is `250` only when every
///   recipient was delivered; any temporary failure gives `451` for the whole message (the
///   client retries; recipients already delivered may get a duplicate — never a loss); only
///   permanent failures give the first permanent reply.
/// * `-admin` becomes `-bounces` for Mailman 3; join and leave go to Mailman's own join/leave
///   addresses and commands (CPython's extra `Subject: subscribe` header is not needed).
///
/// A [`Backend`]: give it to [`Listener::bind`](crate::server::Listener::bind) as it is. Each
/// client connection gets its own session, which owns that connection's relay legs.
pub struct MailmanProxy {
    shared: Rc<Shared>,
}

/// One client connection of a [`MailmanProxy`]: its state, shared with the relay legs it
/// spawned (they hold a weak reference and report their events to it).
struct MailmanSession {
    conn: Rc<RefCell<Conn>>,
}

struct Shared {
    upstream: SocketAddr,
    options: MailmanOptions,
}

impl std::fmt::Debug for MailmanProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailmanProxy")
            .field("upstream", &self.shared.upstream)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl MailmanProxy {
    /// A proxy relaying non-list mail to `upstream` (resolved by the caller: the loop never
    /// looks names up) and list mail to `options.backend`.
    pub fn new(upstream: SocketAddr, options: MailmanOptions) -> MailmanProxy {
        if options.proxy.open_relay {
            log::warn!(
                "MailmanProxy is an open relay: anybody who can connect can send mail through it"
            );
        }
        MailmanProxy {
            shared: Rc::new(Shared { upstream, options }),
        }
    }

    /// The upstream address.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Checks, blocking for at most `timeout`, that Mailman can be reached (its LMTP runner
    /// accepts a connection; Mailman 2's directory and wrapper exist). For start-up only: the
    /// proxy runs without it, answering `451` to list mail while Mailman is away.
    ///
    /// # Errors
    /// What is wrong, in words fit for a log line.
    pub fn check_backend(&self, timeout: Duration) -> Result<(), String> {
        match &self.shared.options.mailman {
            MailmanVersion::Mailman3(LmtpAddr::Tcp(addr)) => {
                std::net::TcpStream::connect_timeout(addr, timeout)
                    .map(drop)
                    .map_err(|e| format!("Mailman's LMTP runner at {addr} does not answer: {e}"))
            }
            MailmanVersion::Mailman3(LmtpAddr::Unix(path)) => {
                std::os::unix::net::UnixStream::connect(path)
                    .map(drop)
                    .map_err(|e| {
                        format!(
                            "Mailman's LMTP runner at {} does not answer: {e}",
                            path.display()
                        )
                    })
            }
            MailmanVersion::Mailman2(mm2) => mm2.check(),
        }
    }
}

impl Backend for MailmanProxy {
    fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession> {
        Box::new(MailmanSession {
            conn: Conn::new(self.shared.clone(), peer.addr),
        })
    }
}

/// One side of a connection's transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Upstream = 0,
    Mailman = 1,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// No transaction open on this side.
    #[default]
    Idle,
    /// MAIL sent, its reply awaited.
    MailSent,
    /// MAIL accepted: RCPTs may follow.
    Open,
}

/// A relay session (upstream SMTP, or Mailman's LMTP), opened when first needed and kept for
/// the connection's later transactions.
#[derive(Debug, Default)]
struct Leg {
    relay: Option<Handle>,
    /// Tells events of the current relay from those of one that went before.
    generation: u64,
    phase: Phase,
    /// The session died during this transaction: recipients it accepted are lost, so the
    /// transaction can only end in `451`.
    broken: Option<Reply>,
}

/// Where an accepted recipient goes.
#[derive(Debug)]
enum Route {
    Upstream,
    /// The `n`th RCPT of the LMTP transaction.
    Lmtp(usize),
    Mailman2(Candidate),
}

#[derive(Debug)]
struct Accepted {
    rcpt: String,
    route: Route,
}

/// What the waiting client command (the ticket) is waiting for.
#[derive(Debug, Default)]
enum Op {
    #[default]
    Idle,
    RelayMail {
        rcpt: String,
    },
    RelayRcpt {
        rcpt: String,
    },
    ProbeMail {
        rcpt: String,
        address: String,
    },
    ProbeRcpt {
        rcpt: String,
    },
    Data {
        txn: u64,
        results: Vec<Option<Reply>>,
    },
}

/// The outcome of a step: an answer now, or later through the ticket.
enum Step {
    Done(Reply),
    Wait,
}

/// The state of one client connection.
struct Conn {
    shared: Rc<Shared>,
    me: Weak<RefCell<Conn>>,
    peer: SocketAddr,
    mail_from: String,
    params: MailParams,
    legs: [Leg; 2],
    accepted: Vec<Accepted>,
    op: Op,
    ticket: Option<Ticket>,
    /// Counts deliveries (stale wrapper results are told apart by it) and relay generations.
    counter: u64,
}

/// Allowance for the headers we add, in the SIZE announced before the message is known.
const HEADER_ALLOWANCE: u64 = 1024;

fn unavailable() -> Reply {
    Reply::enhanced(
        451,
        EnhancedCode::new(4, 4, 1),
        "Requested action aborted: the mailing list server is not available, try again later",
    )
}

fn temporary(side: Side, reply: &Reply) -> Reply {
    let who = match side {
        Side::Upstream => "upstream",
        Side::Mailman => "Mailman",
    };
    Reply::enhanced(
        451,
        EnhancedCode::new(4, 3, 0),
        format!(
            "Requested action aborted: {who} said {} {}",
            reply.code,
            reply.text()
        ),
    )
}

impl Conn {
    fn new(shared: Rc<Shared>, peer: SocketAddr) -> Rc<RefCell<Conn>> {
        Rc::new_cyclic(|me| {
            RefCell::new(Conn {
                shared,
                me: me.clone(),
                peer,
                mail_from: String::new(),
                params: MailParams::default(),
                legs: Default::default(),
                accepted: Vec::new(),
                op: Op::Idle,
                ticket: None,
                counter: 0,
            })
        })
    }

    fn leg(&mut self, side: Side) -> &mut Leg {
        &mut self.legs[side as usize]
    }

    fn answer(&mut self, reply: Reply, ctx: &mut Ctx<'_>) {
        self.op = Op::Idle;
        if let Some(ticket) = self.ticket.take() {
            ticket.complete_in(ctx, reply);
        }
    }

    fn finish_step(&mut self, step: Step, ctx: &mut Ctx<'_>) {
        if let Step::Done(reply) = step {
            self.answer(reply, ctx);
        }
    }

    /// The relay of `side`, opened if there is none. `Err`: the reply for the client.
    fn ensure_relay(&mut self, side: Side, ctx: &mut Ctx<'_>) -> Result<Handle, Reply> {
        if let Some(broken) = &self.leg(side).broken {
            return Err(broken.clone());
        }
        if let Some(relay) = self.leg(side).relay {
            return Ok(relay);
        }
        self.counter += 1;
        let generation = self.counter;
        let me = self.me.clone();
        let on_event: crate::client::EventHandler = Box::new(move |event, _client, ctx| {
            if let Some(conn) = me.upgrade() {
                conn.borrow_mut().on_event(side, generation, event, ctx);
            }
        });
        let shared = self.shared.clone();
        let hostname = shared.options.proxy.hostname.clone();
        let relay = match (side, &shared.options.mailman) {
            (Side::Upstream, _) => Relay::open(
                shared.upstream,
                ClientConfig::smtp(hostname),
                shared.options.proxy.relay.clone(),
                on_event,
            ),
            (Side::Mailman, MailmanVersion::Mailman3(LmtpAddr::Tcp(addr))) => Relay::open(
                *addr,
                ClientConfig::lmtp(hostname),
                shared.options.lmtp.clone(),
                on_event,
            ),
            (Side::Mailman, MailmanVersion::Mailman3(LmtpAddr::Unix(path))) => Relay::open(
                path,
                ClientConfig::lmtp(hostname),
                shared.options.lmtp.clone(),
                on_event,
            ),
            (Side::Mailman, MailmanVersion::Mailman2(_)) => {
                return Err(Reply::enhanced(
                    451,
                    EnhancedCode::new(4, 3, 0),
                    "Requested action aborted: no LMTP",
                ))
            }
        };
        match relay {
            Ok(relay) => {
                let handle = ctx.spawn(relay);
                let leg = self.leg(side);
                leg.relay = Some(handle);
                leg.generation = generation;
                leg.phase = Phase::Idle;
                Ok(handle)
            }
            Err(e) => {
                match side {
                    Side::Upstream => {
                        log::error!("cannot connect to the upstream {}: {e}", shared.upstream)
                    }
                    Side::Mailman => log::warn!("cannot connect to Mailman: {e}"),
                }
                Err(match side {
                    Side::Upstream => Reply::enhanced(
                        451,
                        EnhancedCode::new(4, 4, 1),
                        "Requested action aborted: cannot reach the upstream server",
                    ),
                    Side::Mailman => unavailable(),
                })
            }
        }
    }

    /// Sends MAIL (if this side has no transaction yet) or RCPT `to` on `side`.
    /// Returns whether MAIL was sent (the RCPT then waits for its reply).
    fn send_mail_or_rcpt(
        &mut self,
        side: Side,
        relay: Handle,
        to: &str,
        ctx: &mut Ctx<'_>,
    ) -> bool {
        let leg = &mut self.legs[side as usize];
        if leg.phase == Phase::Idle {
            leg.phase = Phase::MailSent;
            ctx.notify(
                relay,
                RelayCommand::Mail(self.mail_from.clone(), self.params.clone()),
            );
            true
        } else {
            ctx.notify(relay, RelayCommand::Rcpt(to.to_string()));
            false
        }
    }

    /// RCPT: a list candidate goes to Mailman first; the rest (and non-lists) upstream.
    fn rcpt(&mut self, rcpt: &str, ctx: &mut Ctx<'_>) -> Step {
        let shared = self.shared.clone();
        let options = &shared.options;
        let Some(candidate) = classify(rcpt, options.suffixes) else {
            return self.relay_rcpt(rcpt, ctx);
        };
        match &options.mailman {
            MailmanVersion::Mailman2(mm2) => {
                if mm2.list_exists(&candidate.list) {
                    log::debug!("<{rcpt}> is Mailman 2 list {}", candidate.list);
                    self.accepted.push(Accepted {
                        rcpt: rcpt.to_string(),
                        route: Route::Mailman2(candidate),
                    });
                    Step::Done(Reply::ok())
                } else {
                    self.relay_rcpt(rcpt, ctx)
                }
            }
            MailmanVersion::Mailman3(_) => {
                let mut candidate = candidate;
                if let Some(domain) = &options.mailman_domain {
                    candidate.domain = domain.to_ascii_lowercase();
                }
                match candidate.mailman3_address() {
                    Some(address) => self.probe(rcpt, address, ctx),
                    None => self.relay_rcpt(rcpt, ctx),
                }
            }
        }
    }

    /// Asks Mailman 3 whether `address` is one of its lists.
    fn probe(&mut self, rcpt: &str, address: String, ctx: &mut Ctx<'_>) -> Step {
        let relay = match self.ensure_relay(Side::Mailman, ctx) {
            Ok(relay) => relay,
            Err(reply) => return Step::Done(reply),
        };
        let rcpt = rcpt.to_string();
        if self.send_mail_or_rcpt(Side::Mailman, relay, &address, ctx) {
            self.op = Op::ProbeMail { rcpt, address };
        } else {
            self.op = Op::ProbeRcpt { rcpt };
        }
        Step::Wait
    }

    /// Relays `rcpt` upstream: its reply is the upstream's.
    fn relay_rcpt(&mut self, rcpt: &str, ctx: &mut Ctx<'_>) -> Step {
        if !may_relay(&self.shared.options.proxy, self.peer.ip()) {
            log::warn!("{}: relay access denied for <{rcpt}>", self.peer);
            return Step::Done(Reply::enhanced(
                554,
                EnhancedCode::new(5, 7, 1),
                format!("<{rcpt}>: Relay access denied"),
            ));
        }
        let relay = match self.ensure_relay(Side::Upstream, ctx) {
            Ok(relay) => relay,
            Err(reply) => return Step::Done(reply),
        };
        let rcpt = rcpt.to_string();
        if self.send_mail_or_rcpt(Side::Upstream, relay, &rcpt, ctx) {
            self.op = Op::RelayMail { rcpt };
        } else {
            self.op = Op::RelayRcpt { rcpt };
        }
        Step::Wait
    }

    fn on_event(&mut self, side: Side, generation: u64, event: Event, ctx: &mut Ctx<'_>) {
        if self.leg(side).generation != generation {
            return; // a relay that was replaced
        }
        match event {
            Event::Mail(reply) => self.on_mail_reply(side, reply, ctx),
            Event::Rcpt(n, reply) => self.on_rcpt_reply(side, n, reply, ctx),
            Event::Data(reply) | Event::DataRefused(reply) => {
                self.fill(|route| route_side(route) == Some(side), &reply, ctx)
            }
            Event::LmtpData(n, reply) => self.fill(
                |route| matches!(route, Route::Lmtp(i) if *i == n),
                &reply,
                ctx,
            ),
            Event::Failed(reply) => self.lost(side, reply, ctx),
            Event::Closed => {
                let reply = Reply::enhanced(
                    451,
                    EnhancedCode::new(4, 4, 2),
                    "Requested action aborted: connection closed",
                );
                self.lost(side, reply, ctx)
            }
            _ => {}
        }
    }

    fn on_mail_reply(&mut self, side: Side, reply: Reply, ctx: &mut Ctx<'_>) {
        let ok = reply.code / 100 == 2;
        self.leg(side).phase = if ok { Phase::Open } else { Phase::Idle };
        let op = std::mem::take(&mut self.op);
        let step = match (side, op) {
            (Side::Upstream, Op::RelayMail { rcpt }) if ok => {
                let relay = self.leg(side).relay;
                if let Some(relay) = relay {
                    self.send_mail_or_rcpt(side, relay, &rcpt, ctx);
                }
                self.op = Op::RelayRcpt { rcpt };
                Step::Wait
            }
            (Side::Mailman, Op::ProbeMail { rcpt, address }) if ok => {
                let relay = self.leg(side).relay;
                if let Some(relay) = relay {
                    self.send_mail_or_rcpt(side, relay, &address, ctx);
                }
                self.op = Op::ProbeRcpt { rcpt };
                Step::Wait
            }
            (Side::Upstream, Op::RelayMail { .. }) if reply.code / 100 == 5 => Step::Done(reply),
            (Side::Upstream, Op::RelayMail { .. }) => Step::Done(temporary(side, &reply)),
            (Side::Mailman, Op::ProbeMail { rcpt, .. }) => {
                log::warn!(
                    "Mailman refused the sender <{}> for <{rcpt}>: {} {}",
                    self.mail_from,
                    reply.code,
                    reply.text()
                );
                Step::Done(if reply.code / 100 == 5 {
                    reply
                } else {
                    temporary(side, &reply)
                })
            }
            (_, other) => {
                self.op = other;
                return;
            }
        };
        self.finish_step(step, ctx);
    }

    fn on_rcpt_reply(&mut self, side: Side, n: usize, reply: Reply, ctx: &mut Ctx<'_>) {
        let op = std::mem::take(&mut self.op);
        let class = reply.code / 100;
        let step = match (side, op) {
            (Side::Upstream, Op::RelayRcpt { rcpt }) => {
                if class == 2 {
                    self.accepted.push(Accepted {
                        rcpt,
                        route: Route::Upstream,
                    });
                }
                Step::Done(reply)
            }
            (Side::Mailman, Op::ProbeRcpt { rcpt }) => match (class, reply.code) {
                (2, _) => {
                    log::debug!("<{rcpt}> is a Mailman list address");
                    self.accepted.push(Accepted {
                        rcpt,
                        route: Route::Lmtp(n),
                    });
                    Step::Done(reply)
                }
                // Mailman's LMTP runner: no such list (or suffix, or domain) — not Mailman's.
                (_, 550) => {
                    log::debug!("<{rcpt}> is not a Mailman list: relayed");
                    self.relay_rcpt(&rcpt, ctx)
                }
                (5, _) => Step::Done(reply),
                _ => {
                    log::warn!(
                        "Mailman answered {} {} for <{rcpt}>",
                        reply.code,
                        reply.text()
                    );
                    Step::Done(unavailable())
                }
            },
            (_, other) => {
                self.op = other;
                return;
            }
        };
        self.finish_step(step, ctx);
    }

    /// The relay of `side` failed or closed.
    fn lost(&mut self, side: Side, reply: Reply, ctx: &mut Ctx<'_>) {
        // Recipients this side accepted in the transaction are lost with it: the transaction
        // can only end in 451. Without any, the next recipient simply opens a new session.
        let stranded = self
            .accepted
            .iter()
            .any(|a| route_side(&a.route) == Some(side))
            && !matches!(self.op, Op::Data { .. });
        let leg = self.leg(side);
        leg.relay = None;
        leg.generation = 0;
        leg.phase = Phase::Idle;
        if stranded {
            leg.broken = Some(if reply.code / 100 == 4 {
                reply.clone()
            } else {
                temporary(side, &reply)
            });
        }
        let awaited = match &self.op {
            Op::RelayMail { .. } | Op::RelayRcpt { .. } => side == Side::Upstream,
            Op::ProbeMail { .. } | Op::ProbeRcpt { .. } => side == Side::Mailman,
            Op::Data { .. } => {
                let reply = if reply.code / 100 == 5 {
                    temporary(side, &reply)
                } else {
                    reply
                };
                return self.fill(|route| route_side(route) == Some(side), &reply, ctx);
            }
            Op::Idle => false,
        };
        if awaited {
            let answer = match side {
                Side::Mailman => {
                    log::warn!(
                        "Mailman is not available ({}): list mail deferred",
                        reply.text()
                    );
                    unavailable()
                }
                Side::Upstream if reply.code / 100 == 4 => reply,
                Side::Upstream => temporary(side, &reply),
            };
            self.answer(answer, ctx);
        }
    }

    /// Ends the client's transaction on both sides (RSET where one is open).
    fn end_transaction(&mut self, ctx: &mut Ctx<'_>) {
        for leg in &mut self.legs {
            if leg.phase != Phase::Idle {
                if let Some(relay) = leg.relay {
                    ctx.notify(relay, RelayCommand::Rset);
                }
            }
            leg.phase = Phase::Idle;
            leg.broken = None;
        }
        self.accepted.clear();
        if !matches!(self.op, Op::Data { .. }) {
            self.op = Op::Idle;
        }
        self.ticket = None;
    }

    /// End of data: hands the message to every side that has recipients.
    fn deliver(&mut self, message: &Message, ctx: &mut Ctx<'_>) -> Step {
        if let Some(broken) = self.legs.iter().find_map(|l| l.broken.clone()) {
            self.end_transaction(ctx);
            return Step::Done(broken);
        }
        let hostname = self.shared.options.proxy.hostname.clone();
        let to_upstream = self
            .accepted
            .iter()
            .any(|a| matches!(a.route, Route::Upstream));
        let to_lmtp = self
            .accepted
            .iter()
            .any(|a| matches!(a.route, Route::Lmtp(_)));
        let mut mailman_copy = None;
        if self
            .accepted
            .iter()
            .any(|a| route_side(&a.route) != Some(Side::Upstream))
        {
            let mut data = trace_header(&hostname, message).into_bytes();
            data.extend_from_slice(&complete_headers(
                &message.data,
                &message.mail_from,
                SystemTime::now(),
            ));
            mailman_copy = Some(data);
        }
        self.counter += 1;
        let txn = self.counter;
        let mut results: Vec<Option<Reply>> = vec![None; self.accepted.len()];
        for (side, wanted) in [(Side::Upstream, to_upstream), (Side::Mailman, to_lmtp)] {
            let leg = &mut self.legs[side as usize];
            if let Some(relay) = leg.relay.filter(|_| leg.phase != Phase::Idle) {
                let command = match (wanted, side) {
                    (true, Side::Upstream) => RelayCommand::Data(upstream_data(&hostname, message)),
                    (true, Side::Mailman) => {
                        RelayCommand::Data(mailman_copy.clone().unwrap_or_default())
                    }
                    (false, _) => RelayCommand::Rset,
                };
                ctx.notify(relay, command);
            }
            leg.phase = Phase::Idle;
        }
        if let MailmanVersion::Mailman2(mm2) = &self.shared.options.mailman {
            let timeout = self.shared.options.wrapper_timeout;
            for (i, accepted) in self.accepted.iter().enumerate() {
                let Route::Mailman2(candidate) = &accepted.route else {
                    continue;
                };
                let me = self.me.clone();
                let done: mm2::Done = Box::new(move |reply, ctx| {
                    if let Some(conn) = me.upgrade() {
                        conn.borrow_mut().wrapper_done(txn, i, reply, ctx);
                    }
                });
                let command = candidate.command.wrapper_command();
                match WrapperRun::spawn(
                    &mm2.wrapper,
                    command,
                    &candidate.list,
                    mailman_copy.clone().unwrap_or_default(),
                    timeout,
                    done,
                ) {
                    Ok(run) => {
                        log::debug!(
                            "piping to {} {command} {}",
                            mm2.wrapper.display(),
                            candidate.list
                        );
                        ctx.spawn(run);
                    }
                    Err(e) => {
                        log::error!("cannot run {}: {e}", mm2.wrapper.display());
                        results[i] = Some(Reply::enhanced(
                            451,
                            EnhancedCode::new(4, 3, 0),
                            "Requested action aborted: cannot run Mailman's mail wrapper",
                        ));
                    }
                }
            }
        }
        self.op = Op::Data { txn, results };
        match self.verdict() {
            Some(reply) => Step::Done(reply),
            None => Step::Wait,
        }
    }

    fn wrapper_done(&mut self, txn: u64, i: usize, reply: Reply, ctx: &mut Ctx<'_>) {
        if let Op::Data {
            txn: current,
            results,
        } = &mut self.op
        {
            if *current == txn {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(reply);
                }
                if let Some(verdict) = self.verdict() {
                    self.answer(verdict, ctx);
                    self.accepted.clear();
                }
            }
        }
    }

    /// Records `reply` for the recipients whose route matches, and answers once all have one.
    fn fill(&mut self, matches: impl Fn(&Route) -> bool, reply: &Reply, ctx: &mut Ctx<'_>) {
        let Op::Data { results, .. } = &mut self.op else {
            return;
        };
        for (slot, accepted) in results.iter_mut().zip(&self.accepted) {
            if slot.is_none() && matches(&accepted.route) {
                *slot = Some(reply.clone());
            }
        }
        if let Some(verdict) = self.verdict() {
            self.answer(verdict, ctx);
            self.accepted.clear();
        }
    }

    /// The end-of-data reply, once every recipient has a result.
    fn verdict(&self) -> Option<Reply> {
        let Op::Data { results, .. } = &self.op else {
            return None;
        };
        let results: Vec<&Reply> = results.iter().map(Option::as_ref).collect::<Option<_>>()?;
        let failures: Vec<(&str, &Reply)> = self
            .accepted
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.code / 100 != 2)
            .map(|(a, r)| (a.rcpt.as_str(), *r))
            .collect();
        let total = results.len();
        let delivered = total - failures.len();
        for (rcpt, reply) in &failures {
            log::warn!(
                "<{rcpt}> (from <{}>) not delivered: {} {}",
                self.mail_from,
                reply.code,
                reply.text()
            );
        }
        let Some(&(first_rcpt, first)) = failures.first() else {
            return Some(Reply::ok());
        };
        let also = if delivered > 0 {
            format!(" ({delivered} of {total} recipients were delivered)")
        } else {
            String::new()
        };
        if let Some((rcpt, temp)) = failures.iter().find(|(_, r)| r.code / 100 != 5) {
            if delivered > 0 {
                log::warn!(
                    "451 for a message partly delivered: a retry duplicates it for {delivered} recipients"
                );
            }
            return Some(Reply::enhanced(
                451,
                EnhancedCode::new(4, 3, 0),
                format!(
                    "Requested action aborted: <{rcpt}>: {} {}{also}",
                    temp.code,
                    temp.text()
                ),
            ));
        }
        Some(Reply::new(
            first.code,
            format!("<{first_rcpt}>: {}{also}", first.text()),
        ))
    }
}

fn route_side(route: &Route) -> Option<Side> {
    match route {
        Route::Upstream => Some(Side::Upstream),
        Route::Lmtp(_) => Some(Side::Mailman),
        Route::Mailman2(_) => None,
    }
}

/// Adds `From: <sender>` and `Date:` when the header section lacks them, after its last header,
/// as CPython's `MailmanProxy` did before queueing (Mailman 3 adds neither). The null sender
/// gets no `From:`. The date is RFC 5322's (CPython wrote `time.ctime()`).
pub(crate) fn complete_headers(data: &[u8], mail_from: &str, now: SystemTime) -> Vec<u8> {
    let end = header_end(data).unwrap_or(data.len());
    let has = |name: &[u8]| {
        data[..end].split(|&b| b == b'\n').any(|line| {
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()] == b':'
        })
    };
    let mut added = String::new();
    let sender = mail_from.trim_start_matches('<').trim_end_matches('>');
    if !has(b"from") && !sender.is_empty() {
        added.push_str(&format!("From: {sender}\r\n"));
    }
    if !has(b"date") {
        added.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
    }
    if added.is_empty() {
        return data.to_vec();
    }
    let mut out = Vec::with_capacity(data.len() + added.len() + 2);
    match header_end(data) {
        Some(at) => {
            out.extend_from_slice(&data[..at]);
            out.extend_from_slice(added.as_bytes());
            out.extend_from_slice(&data[at..]);
        }
        None => {
            out.extend_from_slice(data);
            if !data.is_empty() && !data.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(added.as_bytes());
            out.truncate(out.len() - 2);
        }
    }
    out
}

impl SmtpSession for MailmanSession {
    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let mut conn = self.conn.borrow_mut();
        let hops = count_received(&message.data);
        if hops > conn.shared.options.proxy.max_hops {
            log::warn!("{}: {hops} hops, a mail loop?", message.peer);
            conn.end_transaction(cx.ctx());
            return Outcome::Reply(Reply::enhanced(
                554,
                EnhancedCode::new(5, 4, 6),
                "Too many hops",
            ));
        }
        match conn.deliver(message, cx.ctx()) {
            Step::Done(reply) => {
                conn.op = Op::Idle;
                conn.accepted.clear();
                Outcome::Reply(reply)
            }
            Step::Wait => {
                let ticket = cx.defer();
                let deferred = Outcome::deferred(&ticket);
                conn.ticket = Some(ticket);
                deferred
            }
        }
    }

    fn on_mail(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let mut conn = self.conn.borrow_mut();
        conn.end_transaction(cx.ctx());
        conn.op = Op::Idle;
        (conn.mail_from, conn.params) = upstream_mail(request, HEADER_ALLOWANCE);
        Outcome::Accept
    }

    fn on_rcpt(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let mut conn = self.conn.borrow_mut();
        match conn.rcpt(request.address, cx.ctx()) {
            Step::Done(reply) => {
                conn.op = Op::Idle;
                Outcome::Reply(reply)
            }
            Step::Wait => {
                let ticket = cx.defer();
                let deferred = Outcome::deferred(&ticket);
                conn.ticket = Some(ticket);
                deferred
            }
        }
    }

    fn on_reset(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.conn.borrow_mut().end_transaction(cx.ctx());
    }

    fn on_disconnect(&mut self, cx: &mut ServerCtx<'_, '_>) {
        let mut conn = self.conn.borrow_mut();
        // An answer still awaited has nobody left to hear it.
        conn.ticket = None;
        for leg in &mut conn.legs {
            if let Some(relay) = leg.relay.take() {
                cx.ctx().notify(relay, RelayCommand::Quit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn from_and_date_are_added_only_when_missing() {
        let t = UNIX_EPOCH;
        assert_eq!(
            complete_headers(b"Subject: x\r\n\r\nbody", "a@b", t),
            b"Subject: x\r\nFrom: a@b\r\nDate: Thu, 01 Jan 1970 00:00:00 -0000\r\n\r\nbody"
        );
        let full = b"from: c@d\r\nDATE: today\r\nTo: l@x\r\n\r\nFrom: body line\r\n";
        assert_eq!(complete_headers(full, "a@b", t), full);
        // A From in the body does not count; To is never touched.
        assert_eq!(
            complete_headers(b"To: l@x\r\n\r\nFrom: x\r\nDate: y", "a@b", t),
            b"To: l@x\r\nFrom: a@b\r\nDate: Thu, 01 Jan 1970 00:00:00 -0000\r\n\r\nFrom: x\r\nDate: y"
        );
        // The null sender gets no From.
        assert_eq!(
            complete_headers(b"Date: d\r\n\r\nb", "", t),
            b"Date: d\r\n\r\nb"
        );
        // No blank line: appended at the end.
        assert_eq!(
            complete_headers(b"Subject: x", "a@b", t),
            b"Subject: x\r\nFrom: a@b\r\nDate: Thu, 01 Jan 1970 00:00:00 -0000"
        );
        // "Fromage:" is not From.
        assert!(complete_headers(b"Fromage: x\r\nDate: d\r\n\r\n", "a@b", t)
            .starts_with(b"Fromage: x\r\nDate: d\r\nFrom: a@b\r\n"));
    }
}
