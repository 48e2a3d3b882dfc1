//! Driving the loop, way 3 of 3: a host with its own poller (epoll here; `poll(2)`, `select`,
//! a GLib source work alike) waits on the reactor's file descriptor next to its own
//! descriptors, and runs one reactor step when that descriptor is readable.
//!
//! The one rule: work the reactor already knows about — an expired timer, a notification, a
//! channel with cached readiness — does **not** make its descriptor readable. So the host
//! never waits longer than `reactor.next_timeout()` (zero while such work is pending).
//!
//! Here the host's own descriptor is a control pipe on which another thread writes `ping` and
//! `quit`; the SMTP server defers each answer to a loop timer, which only fires because the
//! host honours `next_timeout()`. Run it with `cargo run --example nested_epoll`.
//!
//! Portability: needs a reactor whose selector has a descriptor (epoll, kqueue).

use std::any::Any;
use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::unix::pipe;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use smtpd::reactor::{Ctx, Dispatcher, Handle, Reactor, TimerId};
use smtpd::server::{
    Listener, Message, Outcome, Reply, ServerCtx, ServerOptions, SmtpServer, Ticket,
};
use smtpd::testing::Client;

/// The host's tokens in the host's own poller.
const REACTOR: Token = Token(0);
const CONTROL: Token = Token(1);

/// Answers each message after `delay`, from a timer in the loop (`Ticket::complete_in`).
struct Delayed(Duration);

impl SmtpServer for Delayed {
    fn process_message(&mut self, _m: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let ticket = cx.defer();
        let deferred = Outcome::deferred(&ticket); // made from the ticket it promises
        cx.ctx().spawn(Delayer {
            ticket: Some(ticket),
            after: self.0,
        });
        deferred
    }
}

/// A dispatcher with no socket: a timer, then the deferred answer.
struct Delayer {
    ticket: Option<Ticket>,
    after: Duration,
}

impl Dispatcher for Delayer {
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.set_timer(self.after);
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _timer: TimerId) {
        if let Some(ticket) = self.ticket.take() {
            ticket.complete_in(ctx, Reply::new(250, "OK: answered by a loop timer"));
        }
        ctx.close();
    }
}

/// Counts the pings the host forwards with `Reactor::notify`.
struct PingCounter(Rc<RefCell<usize>>);

struct Ping;

impl Dispatcher for PingCounter {
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }
    fn on_notify(&mut self, _ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        if message.is::<Ping>() {
            *self.0.borrow_mut() += 1;
        }
    }
}

/// What the host loop saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Times the host poller reported the reactor's descriptor readable.
    pub reactor_wakeups: usize,
    /// Times the reactor had work pending (`next_timeout() == Some(ZERO)`) while the host
    /// poller did **not** report its descriptor readable — the case a naive host gets wrong.
    pub invisible_work: usize,
    /// Pings delivered to the dispatcher.
    pub pings: usize,
    /// Replies the client got to its messages.
    pub replies: Vec<String>,
}

/// Runs the host loop until the control thread says `quit` (after `messages` messages and as
/// many pings), or `limit` passes.
pub fn demo(messages: usize, delay: Duration, limit: Duration) -> io::Result<Stats> {
    let mut reactor = Reactor::new()?;
    let mut options = ServerOptions::default();
    options.session.hostname = "nested.example".into();
    let listener = Listener::bind(
        &mut reactor,
        "127.0.0.1:0".parse().unwrap(),
        Rc::new(RefCell::new(Delayed(delay))),
        options,
    )?;
    let pings = Rc::new(RefCell::new(0));
    let counter: Handle = reactor.add(PingCounter(pings.clone()))?;

    // The host's own poller, with the reactor's descriptor and the host's control pipe in it.
    let mut host = Poll::new()?;
    let reactor_fd = reactor.as_raw_fd();
    host.registry()
        .register(&mut SourceFd(&reactor_fd), REACTOR, Interest::READABLE)?;
    let (mut control_tx, mut control_rx) = pipe::new()?;
    host.registry()
        .register(&mut control_rx, CONTROL, Interest::READABLE)?;

    // Another thread: sends mail (each answer deferred to a timer), then pings, then quits.
    let addr = listener.local_addr();
    let peer = thread::spawn(move || -> io::Result<Vec<String>> {
        control_tx.set_nonblocking(false)?;
        let mut c = Client::connect(addr)?;
        c.ehlo("client.example")?;
        let mut replies = Vec::new();
        for _ in 0..messages {
            let reply = c.send_mail("a@example.com", &["b@example.com"], b"hi")?;
            replies.push(reply.to_string());
            control_tx.write_all(b"ping\n")?;
        }
        c.quit()?;
        control_tx.write_all(b"quit\n")?;
        Ok(replies)
    });

    let mut stats = Stats::default();
    let mut events = Events::with_capacity(8);
    let mut control = Vec::new();
    let mut quit = false;
    let deadline = Instant::now() + limit;
    // Leave once told to, but only when the reactor has nothing left to do.
    while !quit || reactor.has_pending_work() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        // The host's own timeout, cut to what the reactor allows.
        let host_timeout = deadline - now;
        let timeout = reactor
            .next_timeout()
            .map_or(host_timeout, |t| t.min(host_timeout));
        match host.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let reactor_ready = events.iter().any(|e| e.token() == REACTOR);
        stats.reactor_wakeups += usize::from(reactor_ready);
        if timeout.is_zero() && !reactor_ready {
            stats.invisible_work += 1;
        }
        // One reactor step, never blocking: the wait happened above.
        reactor.poll_once(Some(Duration::ZERO))?;

        if events.iter().any(|e| e.token() == CONTROL) {
            let mut buf = [0; 256];
            loop {
                match control_rx.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => control.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            while let Some(end) = control.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = control.drain(..=end).collect();
                match &line[..] {
                    // Work handed to the reactor by the host: it does not make the reactor's
                    // descriptor readable, but `next_timeout()` is zero from now on.
                    b"ping\n" => reactor.notify(counter, Ping),
                    b"quit\n" => quit = true,
                    _ => {}
                }
            }
        }
    }
    stats.pings = *pings.borrow();
    stats.replies = peer.join().expect("peer thread panicked")?;
    Ok(stats)
}

fn main() -> io::Result<()> {
    let stats = demo(3, Duration::from_millis(100), Duration::from_secs(20))?;
    println!("{stats:#?}");
    Ok(())
}
