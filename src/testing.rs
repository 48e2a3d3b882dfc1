//! Helpers for *your* test suites: a real SMTP server on a loopback port in a background thread,
//! and a small blocking client that records the dialogue.
//!
//! ```
//! use std::time::Duration;
//! use smtpd::testing::{Client, TestServer};
//!
//! // Port 0 on 127.0.0.1, a reactor on its own thread, accepting every message.
//! let server = TestServer::start()?;
//!
//! // What your code under test would do; here the helper client does it.
//! let mut client = Client::connect(server.addr())?;
//! assert_eq!(client.greeting().code, 220);
//! client.ehlo("client.example")?;
//! let reply = client.send_mail("a@example.com", &["b@example.com"], b"Subject: hi\r\n\r\nhello\r\n")?;
//! assert_eq!(reply.code, 250);
//! client.quit()?;
//!
//! // What the server received, as `process_message` saw it.
//! let message = server.wait_for_message(Duration::from_secs(5)).expect("no message");
//! assert_eq!(message.mail_from, "a@example.com");
//! assert_eq!(message.rcpt_tos, ["b@example.com"]);
//! assert_eq!(message.data, b"Subject: hi\r\n\r\nhello");
//!
//! // The whole dialogue, as the client saw it.
//! assert!(client.transcript_text().contains("C: MAIL FROM:<a@example.com>\nS: 250 OK\n"));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A server with your own [`SmtpServer`] and [`ServerOptions`] comes from the builder; the
//! server object is built *on* the server thread (the reactor and its servers are `!Send`), so
//! the builder takes a `Send` closure that makes it:
//!
//! ```
//! use std::time::Duration;
//! use smtpd::server::{Message, Outcome, Reply, ServerCtx, ServerOptions, SmtpServer};
//! use smtpd::testing::{Client, TestServer};
//!
//! struct NoBob;
//! impl SmtpServer for NoBob {
//!     fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
//!         if m.rcpt_tos.iter().any(|r| r.starts_with("bob@")) {
//!             Outcome::Reply(Reply::new(550, "No Bob here"))
//!         } else {
//!             Outcome::Accept
//!         }
//!     }
//! }
//!
//! let mut options = ServerOptions::default();
//! options.session.data_size_limit = 1000;
//! let server = TestServer::builder().options(options).server(|| NoBob).start()?;
//! let mut client = Client::connect(server.addr())?;
//! client.ehlo("me")?;
//! assert_eq!(client.send_mail("a@x.org", &["bob@x.org"], b"hi")?.to_string(), "550 No Bob here");
//! // The server still received it: every message handed to `process_message` is recorded.
//! assert!(server.wait_for_message(Duration::from_secs(5)).is_some());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A [`Backend`] with sessions of its own (or a built-in such as
//! [`PureProxy`](crate::servers::PureProxy)) goes in with [`TestServerBuilder::backend`]. To
//! call a session's hooks without any socket, see
//! [`ServerCtx::detached`](crate::server::ServerCtx::detached).
//!
//! What arrived can be waited for by content ([`TestServer::wait_for`], with
//! [`MessageExt::headers`] for header assertions) or by number ([`TestServer::wait_for_count`]);
//! [`TestServer::transcripts`] gives the server's side of each connection, and
//! [`TestServerBuilder::faults`] puts deterministic [`Faults`] in front of the server.
//! `docs/testing.md` is the guide.
//!
//! Every wait is bounded: each server stops by itself after [its
//! lifetime](TestServerBuilder::lifetime) (60 s by default), the client's reads time out (5 s by
//! default), and dropping the [`TestServer`] stops its thread and joins it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use mio::event::Source;

use crate::reactor::{Ctx, Dispatcher, Handle, Reactor, RemoteHandle, StopHandle, TimerId};
use crate::server::{
    AddressRequest, Backend, CommandRequest, Deferral, DetachedCtx, HeloRequest, Listener, Message,
    Outcome, Peer, Reply, ServerCtx, ServerOptions, Shutdown, SmtpServer, SmtpSession,
    TicketAnswer,
};
pub use crate::servers::capture::Headers;
pub use crate::servers::faults::Faults;

/// [`Headers`] of a captured message, for assertions: `message.headers().get("subject")`
/// (unfolded, names ignoring ASCII case).
pub trait MessageExt {
    /// The message's header section, parsed.
    fn headers(&self) -> Headers;
}

impl MessageExt for Message {
    fn headers(&self) -> Headers {
        Headers::parse(&self.data)
    }
}

/// The host name test servers greet with unless [options](TestServerBuilder::options) say
/// otherwise (no DNS lookup of the machine's name).
pub const TEST_HOSTNAME: &str = "smtpd.test";

type Factory = Box<dyn FnOnce() -> Box<dyn Backend> + Send>;

/// Configures a [`TestServer`] before it starts.
pub struct TestServerBuilder {
    options: ServerOptions,
    lifetime: Duration,
    addr: SocketAddr,
    factory: Factory,
    faults: Faults,
}

impl std::fmt::Debug for TestServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServerBuilder")
            .field("options", &self.options)
            .field("lifetime", &self.lifetime)
            .field("addr", &self.addr)
            .field("faults", &self.faults)
            .finish()
    }
}

struct AcceptAll;

impl SmtpServer for AcceptAll {
    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }
}

impl TestServerBuilder {
    /// The listener's options. The default is [`ServerOptions::default`] with the host name
    /// [`TEST_HOSTNAME`].
    pub fn options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }

    /// The server object, made on the server thread by `make`. The default accepts every
    /// message (`250 OK`).
    pub fn server<S, F>(mut self, make: F) -> Self
    where
        S: SmtpServer,
        F: FnOnce() -> S + Send + 'static,
    {
        self.factory = Box::new(move || Box::new(Rc::new(RefCell::new(make()))));
        self
    }

    /// A [`Backend`] (per-connection [`SmtpSession`]s, or a built-in such as
    /// [`PureProxy`](crate::servers::PureProxy)) instead of a server object, made on the server
    /// thread by `make`.
    pub fn backend<B, F>(mut self, make: F) -> Self
    where
        B: Backend,
        F: FnOnce() -> B + Send + 'static,
    {
        self.factory = Box::new(move || Box::new(make()));
        self
    }

    /// How long the server runs at most, whatever the test does (default 60 s): a hung test
    /// ends instead of hanging CI.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The address to bind (default `127.0.0.1:0`, a free port).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Faults in front of the server ([`Faults::wrap`]): what they refuse, drop or discard
    /// never reaches the server, so it is not captured either.
    ///
    /// ```
    /// use std::time::Duration;
    /// use smtpd::servers::faults::Faults;
    /// use smtpd::testing::{Client, TestServer};
    ///
    /// let faults = Faults::parse(["rcpt=bad@*:550 5.1.1 No such user"]).unwrap();
    /// let server = TestServer::builder().faults(faults).start()?;
    /// let mut client = Client::connect(server.addr())?;
    /// client.ehlo("me")?;
    /// client.command("MAIL FROM:<a@x.org>")?;
    /// assert_eq!(client.command("RCPT TO:<bad@x.org>")?.to_string(), "550 5.1.1 No such user");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Starts the reactor thread and returns once the server listens.
    ///
    /// # Errors
    /// When the address cannot be bound, the options are inconsistent, or the server thread
    /// could not start (or panicked in the server factory).
    pub fn start(self) -> io::Result<TestServer> {
        let TestServerBuilder {
            options,
            lifetime,
            addr,
            factory,
            faults,
        } = self;
        let captured = Arc::new(Captured::default());
        let message_tx = captured.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(format!("smtpd-test-server-{addr}"))
            .spawn(move || {
                let started = (|| {
                    // The reactor is !Send: it is built on the thread that runs it.
                    let mut reactor = Reactor::new()?;
                    let server = Recording {
                        inner: factory(),
                        seen: message_tx,
                        next_connection: 0,
                    };
                    let server: Box<dyn Backend> = if faults.is_empty() {
                        Box::new(server)
                    } else {
                        Box::new(faults.wrap(server))
                    };
                    let listener = Listener::bind(&mut reactor, addr, server, options)?;
                    reactor.add(Watchdog(lifetime))?;
                    io::Result::Ok((reactor, listener))
                })();
                match started {
                    Ok((mut reactor, listener)) => {
                        let _ = ready_tx.send(Ok(Ready {
                            addr: listener.local_addr(),
                            listener: listener.handle(),
                            stop: reactor.stop_handle(),
                            remote: reactor.remote(),
                        }));
                        if let Err(e) = reactor.run() {
                            log::error!("test server: {e}");
                        }
                        reactor.close_all();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(ready)) => Ok(TestServer {
                addr: ready.addr,
                listener: ready.listener,
                stop: ready.stop,
                remote: ready.remote,
                captured,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other(
                    "the test server thread died while starting",
                ))
            }
        }
    }
}

struct Ready {
    addr: SocketAddr,
    listener: Handle,
    stop: StopHandle,
    remote: RemoteHandle,
}

/// What the server thread hands to the test thread: the messages and the connections' logs.
#[derive(Default)]
struct Captured {
    state: Mutex<CapturedState>,
    changed: Condvar,
}

#[derive(Default)]
struct CapturedState {
    messages: Vec<Message>,
    /// How many of `messages` `wait_for_message` / `take_messages` handed out.
    taken: usize,
    connections: Vec<Transcript>,
}

impl Captured {
    fn update(&self, change: impl FnOnce(&mut CapturedState)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        drop(state);
        self.changed.notify_all();
    }

    fn log(&self, connection: usize, line: String) {
        self.update(|state| {
            if let Some(t) = state.connections.get_mut(connection) {
                t.lines.push(line);
            }
        });
    }

    /// Waits until `ready` returns something, at most `timeout`.
    fn wait<T>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&mut CapturedState) -> Option<T>,
    ) -> Option<T> {
        let deadline = std::time::Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(found) = ready(&mut state) {
                return Some(found);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The server's side of one connection, as its hooks saw it: a line per hook call (`C:` the
/// request, `S:` the hook's decision). A decision left to the built-in handling shows as
/// `S: (built-in)` for HELO/EHLO and commands, `S: 250 OK` for MAIL, RCPT and the data;
/// replies the hooks never see (syntax errors, limits) are not in it. The client's own view,
/// with every line, is [`Client::transcript`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transcript {
    /// The client's address.
    pub peer: SocketAddr,
    /// The lines, in order: `C: MAIL FROM:<a@x.org> SIZE=10`, `S: 250 OK`, ..., `C: (closed)`.
    pub lines: Vec<String>,
    /// Whether the connection has closed.
    pub closed: bool,
}

impl Transcript {
    /// The lines joined, each followed by `\n`.
    pub fn text(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// Wraps each session the real backend opens in a [`RecordingSession`].
struct Recording {
    inner: Box<dyn Backend>,
    seen: Arc<Captured>,
    next_connection: usize,
}

impl Backend for Recording {
    fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession> {
        let connection = self.next_connection;
        self.next_connection += 1;
        self.seen.update(|state| {
            state.connections.push(Transcript {
                peer: peer.addr,
                lines: Vec::new(),
                closed: false,
            });
        });
        Box::new(RecordingSession {
            inner: self.inner.open_session(peer),
            seen: self.seen.clone(),
            connection,
        })
    }

    fn commands(&self) -> Vec<String> {
        self.inner.commands()
    }

    fn ehlo_keywords(&self, keywords: &mut Vec<String>) {
        self.inner.ehlo_keywords(keywords);
    }
}

/// Hands a copy of every message to the test thread, then lets the real session decide; logs
/// every hook call in the connection's [`Transcript`].
struct RecordingSession {
    inner: Box<dyn SmtpSession>,
    seen: Arc<Captured>,
    connection: usize,
}

impl RecordingSession {
    /// Logs `request` and the decision, and returns the decision.
    fn logged(&self, request: String, default: &str, outcome: Outcome) -> Outcome {
        let answer = match &outcome {
            Outcome::Accept => default.to_string(),
            Outcome::Reply(reply) => reply.to_string(),
            _ => "(deferred)".to_string(),
        };
        self.seen.log(self.connection, format!("C: {request}"));
        self.seen.log(self.connection, format!("S: {answer}"));
        outcome
    }
}

fn with_params(line: String, params: &[crate::server::Param]) -> String {
    params.iter().fold(line, |line, p| format!("{line} {p}"))
}

impl SmtpSession for RecordingSession {
    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.seen
            .update(|state| state.messages.push(message.clone()));
        let outcome = self.inner.process_message(message, cx);
        let request = format!("(message of {} bytes)", message.data.len());
        self.logged(request, "250 OK", outcome)
    }

    fn on_connect(&mut self, peer: &Peer, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let outcome = self.inner.on_connect(peer, cx);
        self.logged("(connected)".into(), "(greeting)", outcome)
    }

    fn on_helo(&mut self, request: &HeloRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let outcome = self.inner.on_helo(request, cx);
        let verb = if request.extended { "EHLO" } else { "HELO" };
        self.logged(format!("{verb} {}", request.name), "(built-in)", outcome)
    }

    fn on_mail(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let outcome = self.inner.on_mail(request, cx);
        let line = with_params(format!("MAIL FROM:<{}>", request.address), request.params);
        self.logged(line, "250 OK", outcome)
    }

    fn on_rcpt(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let outcome = self.inner.on_rcpt(request, cx);
        let line = with_params(format!("RCPT TO:<{}>", request.address), request.params);
        self.logged(line, "250 OK", outcome)
    }

    fn on_command(&mut self, request: &CommandRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let outcome = self.inner.on_command(request, cx);
        let line = format!("{} {}", request.verb, request.arg);
        self.logged(line.trim_end().to_string(), "(built-in)", outcome)
    }

    fn on_reset(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.inner.on_reset(cx);
        self.seen
            .log(self.connection, "C: (transaction reset)".into());
    }

    fn on_disconnect(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.inner.on_disconnect(cx);
        let connection = self.connection;
        self.seen.update(|state| {
            if let Some(t) = state.connections.get_mut(connection) {
                t.lines.push("C: (closed)".into());
                t.closed = true;
            }
        });
    }
}

/// Stops the reactor when the server's lifetime is over.
struct Watchdog(Duration);

impl Dispatcher for Watchdog {
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.set_timer(self.0);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _timer: TimerId) {
        log::warn!("test server: lifetime of {:?} is over; stopping", self.0);
        ctx.stop();
    }
}

/// An SMTP server on a loopback port, run by a reactor on a background thread. Stops (and joins
/// its thread) when dropped. See the [module docs](self).
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    listener: Handle,
    stop: StopHandle,
    remote: RemoteHandle,
    captured: Arc<Captured>,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured").finish_non_exhaustive()
    }
}

impl TestServer {
    /// A server that accepts every message, on `127.0.0.1` and a free port, greeting as
    /// [`TEST_HOSTNAME`].
    ///
    /// # Errors
    /// As [`TestServerBuilder::start`].
    pub fn start() -> io::Result<TestServer> {
        TestServer::builder().start()
    }

    /// A builder for a server with your own options or server object.
    pub fn builder() -> TestServerBuilder {
        let mut options = ServerOptions::default();
        options.session.hostname = TEST_HOSTNAME.into();
        TestServerBuilder {
            options,
            lifetime: Duration::from_secs(60),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            factory: Box::new(|| Box::new(Rc::new(RefCell::new(AcceptAll)))),
            faults: Faults::new(),
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next message handed to `process_message` (in arrival order, each once), waiting at
    /// most `timeout`. `None` if none arrived in time.
    pub fn wait_for_message(&self, timeout: Duration) -> Option<Message> {
        self.captured.wait(timeout, |state| {
            let next = state.messages.get(state.taken).cloned()?;
            state.taken += 1;
            Some(next)
        })
    }

    /// Every message received so far and not yet taken, without waiting.
    pub fn take_messages(&self) -> Vec<Message> {
        let mut state = self
            .captured
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let taken = state.messages[state.taken..].to_vec();
        state.taken = state.messages.len();
        taken
    }

    /// Every message received so far (taken or not), in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        let state = self
            .captured
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        state.messages.clone()
    }

    /// The first message, among all received so far and those that arrive within `timeout`,
    /// for which `predicate` holds; `None` if none did in time. Blocks the calling thread (not
    /// the server). Looks at every message, whether or not
    /// [`wait_for_message`](Self::wait_for_message) or [`take_messages`](Self::take_messages)
    /// handed it out.
    ///
    /// ```
    /// use std::time::Duration;
    /// use smtpd::testing::{Client, MessageExt, TestServer};
    ///
    /// let server = TestServer::start()?;
    /// let mut client = Client::connect(server.addr())?;
    /// client.ehlo("me")?;
    /// client.send_mail("a@x.org", &["b@x.org"], b"Subject: one\r\n\r\n1")?;
    /// client.send_mail("a@x.org", &["b@x.org"], b"Subject: two\r\n\r\n2")?;
    /// let two = server
    ///     .wait_for(|m| m.headers().get("subject") == Some("two"), Duration::from_secs(5))
    ///     .expect("message two");
    /// assert_eq!(two.data, b"Subject: two\r\n\r\n2");
    /// assert!(server.wait_for(|m| m.rcpt_tos.is_empty(), Duration::from_millis(50)).is_none());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn wait_for(
        &self,
        mut predicate: impl FnMut(&Message) -> bool,
        timeout: Duration,
    ) -> Option<Message> {
        let mut seen = 0;
        self.captured.wait(timeout, |state| {
            let found = state.messages[seen..]
                .iter()
                .find(|m| predicate(m))
                .cloned();
            seen = state.messages.len();
            found
        })
    }

    /// Every message received so far, once there are at least `n`, waiting at most `timeout`;
    /// `None` if fewer arrived in time (see [`messages`](Self::messages) for those).
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> Option<Vec<Message>> {
        self.captured.wait(timeout, |state| {
            (state.messages.len() >= n).then(|| state.messages.clone())
        })
    }

    /// The server's side of every connection so far, in the order they opened (see
    /// [`Transcript`]).
    pub fn transcripts(&self) -> Vec<Transcript> {
        let state = self
            .captured
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        state.connections.clone()
    }

    /// Waits until `n` connections have closed (at most `timeout`), then returns every
    /// transcript; `None` on time-out.
    pub fn wait_for_closed(&self, n: usize, timeout: Duration) -> Option<Vec<Transcript>> {
        self.captured.wait(timeout, |state| {
            let closed = state.connections.iter().filter(|t| t.closed).count();
            (closed >= n).then(|| state.connections.clone())
        })
    }

    /// Graceful shutdown of the listener (see [`Shutdown`]): stops accepting, lets transactions
    /// in flight finish within `grace`, answers `421` to the others.
    pub fn shutdown(&self, grace: Duration) {
        self.remote.notify(self.listener, Shutdown { grace });
    }

    /// A handle to the server's reactor, to notify dispatchers you spawned in it.
    pub fn remote(&self) -> &RemoteHandle {
        &self.remote
    }

    /// Stops the reactor and waits for its thread (also done on drop).
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A client (or any other work) on its own thread, for a test or demo that drives the reactor
/// on the current thread: when the work returns, the thread wakes the reactor, so a loop such as
/// `reactor.run_until(deadline, |_| client.is_done())` notices at once — a thread ending is no
/// event the reactor could see by itself.
///
/// The wake-up is a [`StopHandle::stop`]: a later [`Reactor::run`] on the same reactor returns
/// after one tick unless it is woken for another reason first.
///
/// ```
/// use std::time::{Duration, Instant};
/// use smtpd::reactor::Reactor;
/// use smtpd::testing::ClientThread;
///
/// let mut reactor = Reactor::new()?;
/// let work = ClientThread::spawn(&reactor, || 6 * 7);
/// reactor.run_until(Instant::now() + Duration::from_secs(5), |_| work.is_done())?;
/// assert_eq!(work.join(), 42);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct ClientThread<T> {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: thread::JoinHandle<T>,
}

impl<T: Send + 'static> ClientThread<T> {
    /// Runs `work` on a new thread; when it returns (or panics) the reactor is woken.
    pub fn spawn<F>(reactor: &Reactor, work: F) -> ClientThread<T>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        /// Sets the flag and wakes the reactor also when `work` panics.
        struct Finish(std::sync::Arc<std::sync::atomic::AtomicBool>, StopHandle);
        impl Drop for Finish {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                self.1.stop();
            }
        }
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finish = Finish(done.clone(), reactor.stop_handle());
        let thread = thread::spawn(move || {
            let _finish = finish;
            work()
        });
        ClientThread { done, thread }
    }

    /// Whether the work has returned.
    pub fn is_done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for the work and returns its result.
    ///
    /// # Panics
    /// If the work panicked.
    pub fn join(self) -> T {
        match self.thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// One line of a [`Client`]'s dialogue, without its CRLF.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Line {
    /// A line the client sent (`C:` in [`Client::transcript_text`]).
    Sent(String),
    /// A line the server sent (`S:`).
    Received(String),
}

/// A small blocking SMTP client for tests, recording every line it sends and receives. Not a
/// general-purpose client: it trusts the server to speak SMTP and times out (5 s by default)
/// rather than waiting forever.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    greeting: Reply,
    transcript: Vec<Line>,
}

impl Client {
    /// Connects and reads the greeting ([`greeting`](Self::greeting)).
    ///
    /// # Errors
    /// When the connection fails or no well-formed greeting arrives within 5 s.
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Client::greeted(stream)
    }

    fn greeted(stream: TcpStream) -> io::Result<Client> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut client = Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            greeting: Reply::new(0, ""),
            transcript: Vec::new(),
        };
        client.greeting = client.read_reply()?;
        Ok(client)
    }

    /// Changes how long a read or a write may block.
    ///
    /// # Errors
    /// When `timeout` is zero.
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.writer.set_write_timeout(Some(timeout))
    }

    /// The reply the server greeted with.
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }

    /// The client's own address (the `peer` of the messages it sends).
    ///
    /// # Errors
    /// As `TcpStream::local_addr`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.writer.local_addr()
    }

    /// Reads one reply, multi-line or not.
    ///
    /// # Errors
    /// On a timeout, a closed connection (`UnexpectedEof`) or a malformed reply (`InvalidData`).
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let mut code = None;
        let mut lines = Vec::new();
        // A reply has a bounded number of lines; more than this is a broken server.
        for _ in 0..1000 {
            let mut raw = Vec::new();
            (&mut self.reader)
                .take(64 * 1024)
                .read_until(b'\n', &mut raw)?;
            if raw.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line
                .strip_suffix("\r\n")
                .ok_or_else(|| bad_reply(&line))?
                .to_string();
            self.transcript.push(Line::Received(line.clone()));
            let bytes = line.as_bytes();
            let this: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| bad_reply(&line))?;
            if *code.get_or_insert(this) != this {
                return Err(bad_reply(&line));
            }
            let more = match bytes.get(3) {
                None | Some(b' ') => false,
                Some(b'-') => true,
                Some(_) => return Err(bad_reply(&line)),
            };
            lines.push(line.get(4..).unwrap_or("").to_string());
            if !more {
                return Ok(Reply::multiline(this, lines));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "reply has too many lines",
        ))
    }

    /// Sends raw bytes as they are (recorded line by line).
    ///
    /// # Errors
    /// When the write fails or times out.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        let text = String::from_utf8_lossy(bytes);
        let text = text.strip_suffix("\r\n").unwrap_or(&text);
        self.transcript
            .extend(text.split("\r\n").map(|l| Line::Sent(l.to_string())));
        Ok(())
    }

    /// Sends one command line (CRLF is added) and reads the reply.
    ///
    /// # Errors
    /// As [`send_raw`](Self::send_raw) and [`read_reply`](Self::read_reply).
    pub fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.send_raw(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// `EHLO name`.
    ///
    /// # Errors
    /// As [`command`](Self::command).
    pub fn ehlo(&mut self, name: &str) -> io::Result<Reply> {
        self.command(&format!("EHLO {name}"))
    }

    /// `QUIT`.
    ///
    /// # Errors
    /// As [`command`](Self::command).
    pub fn quit(&mut self) -> io::Result<Reply> {
        self.command("QUIT")
    }

    /// One mail transaction: `MAIL FROM`, a `RCPT TO` for each recipient, `DATA`, the data
    /// (dot-stuffed, CRLF added if missing) and the final dot. Returns the reply to the data — or
    /// the first refusal that ends the transaction (to MAIL, to DATA, or to RCPT when no
    /// recipient was accepted): [`Transaction::reply`] of [`transaction`](Self::transaction),
    /// which has every reply (each recipient's too).
    ///
    /// Addresses go in angle brackets; they may have them already (`"<a@example.org>"`).
    /// The null reverse-path (bounces) is `"<>"`, as [`Message::mail_from`] shows it, or `""`:
    /// both send `MAIL FROM:<>`.
    ///
    /// # Errors
    /// As [`command`](Self::command).
    pub fn send_mail(&mut self, from: &str, to: &[&str], data: &[u8]) -> io::Result<Reply> {
        Ok(self.transaction(from, to, data)?.reply().clone())
    }

    /// As [`send_mail`](Self::send_mail), returning every reply of the transaction: to MAIL,
    /// to each RCPT, to DATA and to the data.
    ///
    /// ```
    /// use smtpd::testing::{Client, TestServer};
    /// let mut options = smtpd::server::ServerOptions::default();
    /// options.session.max_recipients = 1;
    /// let server = TestServer::builder().options(options).start()?;
    /// let mut client = Client::connect(server.addr())?;
    /// client.ehlo("me")?;
    /// let t = client.transaction("<>", &["a@example.org", "b@example.org"], b"bounce")?;
    /// assert_eq!(t.mail.code, 250);
    /// assert_eq!(t.accepted(), ["a@example.org"]);
    /// assert_eq!(t.rcpts[1].1.code, 452); // too many recipients
    /// assert_eq!(t.reply().code, 250); // the message went to the first
    /// assert!(t.is_delivered());
    /// assert!(client.transcript_text().contains("C: MAIL FROM:<>\n"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`command`](Self::command).
    pub fn transaction(&mut self, from: &str, to: &[&str], data: &[u8]) -> io::Result<Transaction> {
        let mail = self.command(&format!("MAIL FROM:<{}>", path(from)))?;
        let mut t = Transaction {
            mail,
            rcpts: Vec::new(),
            data: None,
            message: None,
        };
        if t.mail.code != 250 {
            return Ok(t);
        }
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{}>", path(rcpt)))?;
            t.rcpts.push((rcpt.to_string(), reply));
        }
        if !to.is_empty() && t.accepted().is_empty() {
            return Ok(t);
        }
        let reply = self.command("DATA")?;
        let go_on = reply.code == 354;
        t.data = Some(reply);
        if go_on {
            self.send_raw(&dot_stuff(data))?;
            t.message = Some(self.read_reply()?);
        }
        Ok(t)
    }

    /// The dialogue so far.
    pub fn transcript(&self) -> &[Line] {
        &self.transcript
    }

    /// The dialogue as text, one `C: ` or `S: ` line each, every line ending in `\n`.
    pub fn transcript_text(&self) -> String {
        let mut text = String::new();
        for line in &self.transcript {
            let _ = match line {
                Line::Sent(l) => writeln!(text, "C: {l}"),
                Line::Received(l) => writeln!(text, "S: {l}"),
            };
        }
        text
    }
}

/// Every reply of one [`Client::transaction`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transaction {
    /// The reply to `MAIL FROM`.
    pub mail: Reply,
    /// Each recipient as given, with the reply to its `RCPT TO`, in order (none when MAIL was
    /// refused).
    pub rcpts: Vec<(String, Reply)>,
    /// The reply to `DATA` (`354`, or a refusal); `None` when it was not sent (MAIL refused,
    /// or every recipient refused).
    pub data: Option<Reply>,
    /// The reply to the data, after the final dot; `None` when the data was not sent.
    pub message: Option<Reply>,
}

impl Transaction {
    /// The reply that ended the transaction, what [`Client::send_mail`] returns: the reply to
    /// the data, or the refusal that came first (of MAIL, of DATA, or of the last RCPT when
    /// none was accepted).
    pub fn reply(&self) -> &Reply {
        if let Some(reply) = self.message.as_ref().or(self.data.as_ref()) {
            return reply;
        }
        match self.rcpts.last() {
            Some((_, reply)) => reply,
            None => &self.mail,
        }
    }

    /// The recipients whose `RCPT TO` got a `2xx` reply.
    pub fn accepted(&self) -> Vec<&str> {
        self.rcpts
            .iter()
            .filter(|(_, reply)| reply.code / 100 == 2)
            .map(|(rcpt, _)| rcpt.as_str())
            .collect()
    }

    /// Whether the message was taken: the reply to the data is `2xx`.
    pub fn is_delivered(&self) -> bool {
        self.message.as_ref().is_some_and(|r| r.code / 100 == 2)
    }
}

/// An address as it goes between the angle brackets: without brackets it had already; the null
/// path `"<>"` is empty.
fn path(address: &str) -> &str {
    address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address)
}

fn bad_reply(line: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed reply line {line:?}"),
    )
}

/// The data as sent after `DATA`: lines starting with `.` get another, a final CRLF if missing,
/// then `.` CRLF.
fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !data.is_empty() && !data.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The server's input path without sockets: raw bytes go through the same
/// [`Receiver`](crate::smtp::Receiver) the SMTP channel uses (CRLF lines, DATA ending at
/// `CRLF.CRLF` primed by the `DATA` line's CRLF, over-long units discarded as they arrive) into
/// a [`Session`](crate::smtp::Session), and every request it makes (connect, HELO, MAIL, RCPT,
/// command, message) is decided:
///
/// * by [`new`](Self::new): with the default decision. For property tests and fuzzing: feed
///   any bytes, cut anywhere, and inspect what came out.
/// * by [`with_server`](Self::with_server): by the hooks of *your* server, as a
///   [`Listener`] would ask them, with a [detached](ServerCtx::detached) context instead of a
///   reactor. Unit tests of a server's policy run the real dialogue this way, without a socket.
///
/// ```
/// use smtpd::testing::SessionDriver;
/// let mut d = SessionDriver::new(smtpd::smtp::Config::default());
/// d.feed(b"HELO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.");
/// assert!(d.messages().is_empty()); // no CRLF.CRLF yet
/// d.feed(b"\r\nQUIT\r\n");
/// assert_eq!(d.messages()[0].data, b"hi");
/// assert!(d.is_closed());
/// ```
pub struct SessionDriver {
    receiver: crate::smtp::Receiver,
    outputs: Vec<crate::smtp::Output>,
    replies: Vec<Reply>,
    messages: Vec<Message>,
    closed: bool,
    peak: usize,
    /// The user's session, when driven [`with_server`](Self::with_server).
    hooks: Option<Hooks>,
    /// Input not taken yet: it waits for a deferred decision.
    input: Vec<u8>,
}

/// A user's session and what the driver keeps to answer its deferrals.
struct Hooks {
    /// Dropped after `on_disconnect`.
    session: Option<Box<dyn SmtpSession>>,
    detached: DetachedCtx,
    waiting: Option<Waiting>,
}

/// A decision a hook deferred.
struct Waiting {
    deferral: Deferral,
    /// Whether it is the connect decision (answers are mapped as the channel maps them).
    connect: bool,
}

impl std::fmt::Debug for SessionDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDriver")
            .field("receiver", &self.receiver)
            .field("replies", &self.replies.len())
            .field("messages", &self.messages.len())
            .field("with_server", &self.hooks.is_some())
            .field("waiting", &self.is_waiting())
            .field("input", &self.input.len())
            .finish_non_exhaustive()
    }
}

/// The client address of a driver made without one.
fn default_peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 25))
}

impl SessionDriver {
    /// A greeted session with `config` (which must pass
    /// [`Config::validate`](crate::smtp::Config::validate)), for a client at `192.0.2.1:25`;
    /// every request gets the default decision.
    pub fn new(config: crate::smtp::Config) -> SessionDriver {
        let session = crate::smtp::Session::new(std::sync::Arc::new(config), default_peer());
        SessionDriver::started(session, None)
    }

    /// A session of `backend` (an `Rc<RefCell<S>>` of your [`SmtpServer`], or your own
    /// [`Backend`]) for a client at `192.0.2.1:25`, with the settings of `config` (the
    /// `options.session` of the [`ServerOptions`] your listener uses): as a [`Listener`] would
    /// run it, the backend opens the session, its [`on_connect`](SmtpSession::on_connect)
    /// decides the greeting, and every later request goes to its hooks — HELO/EHLO, MAIL, RCPT,
    /// the verbs of [`Backend::commands`], the message — with the backend's EHLO keywords.
    /// `on_reset` and `on_disconnect` are called when the channel would call them.
    ///
    /// A hook that defers ([`ServerCtx::defer`]) holds the dialogue as a channel would: input
    /// fed meanwhile waits, and [`wait_for_answers`](Self::wait_for_answers) resolves the
    /// session when the ticket is completed (from any thread);
    /// [`expire_deferral`](Self::expire_deferral) plays the deadline's `451`. The hooks get a
    /// [detached](ServerCtx::detached) context: [`ServerCtx::try_ctx`] is `None`.
    ///
    /// Not simulated: the timeouts, the greeting delay, connection limits and the listener's
    /// data memory limit. A panic in a hook is not caught (the channel would answer `451`): it
    /// fails the test where it happened.
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use std::rc::Rc;
    /// use smtpd::server::{AddressRequest, Message, Outcome, Reply, ServerCtx, SmtpServer};
    /// use smtpd::testing::SessionDriver;
    ///
    /// #[derive(Default)]
    /// struct NoSpam {
    ///     delivered: usize,
    /// }
    ///
    /// impl SmtpServer for NoSpam {
    ///     fn on_mail(&mut self, r: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
    ///         if r.address.ends_with("@spam.example") {
    ///             return Outcome::Reply(Reply::new(550, "5.7.1 Not from you"));
    ///         }
    ///         Outcome::Accept
    ///     }
    ///     fn process_message(&mut self, _m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
    ///         self.delivered += 1;
    ///         Outcome::Accept
    ///     }
    /// }
    ///
    /// let server = Rc::new(RefCell::new(NoSpam::default()));
    /// let mut d = SessionDriver::with_server(server.clone(), smtpd::smtp::Config::default());
    /// assert_eq!(d.replies()[0].code, 220);
    /// d.feed(b"EHLO me\r\n");
    /// assert_eq!(d.command("MAIL FROM:<x@spam.example>").unwrap().to_string(),
    ///            "550 5.7.1 Not from you");
    /// d.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nhi\r\n.\r\n");
    /// assert_eq!(d.last_reply().unwrap().code, 250);
    /// assert_eq!(server.borrow().delivered, 1);
    /// ```
    ///
    /// # Panics
    /// When `config` does not pass [`Config::validate`](crate::smtp::Config::validate).
    pub fn with_server(backend: impl Backend, config: crate::smtp::Config) -> SessionDriver {
        SessionDriver::with_server_from(backend, config, default_peer())
    }

    /// As [`with_server`](Self::with_server), for a client at `peer`.
    ///
    /// # Panics
    /// As [`with_server`](Self::with_server).
    pub fn with_server_from(
        mut backend: impl Backend,
        config: crate::smtp::Config,
        peer: SocketAddr,
    ) -> SessionDriver {
        if let Err(e) = config.validate() {
            panic!("SessionDriver::with_server: {e}");
        }
        let config = crate::server::session_config(&config, &backend);
        let session = crate::smtp::Session::new(std::sync::Arc::new(config), peer);
        let hooks = Hooks {
            session: Some(backend.open_session(&Peer::from(peer))),
            detached: DetachedCtx::new(),
            waiting: None,
        };
        SessionDriver::started(session, Some(hooks))
    }

    fn started(session: crate::smtp::Session, hooks: Option<Hooks>) -> SessionDriver {
        let mut driver = SessionDriver {
            receiver: crate::smtp::Receiver::new(session),
            outputs: Vec::new(),
            replies: Vec::new(),
            messages: Vec::new(),
            closed: false,
            peak: 0,
            hooks,
            input: Vec::new(),
        };
        driver.receiver.start(&mut driver.outputs);
        driver.act();
        driver
    }

    /// Feeds bytes as they might arrive in one read; input after a close is ignored. While a
    /// decision is deferred, the input waits (as in the channel's buffer) and is taken when the
    /// answer comes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        if self.input.is_empty() {
            let used = self.take(bytes);
            if !self.closed {
                self.input.extend_from_slice(&bytes[used..]);
            }
        } else {
            self.input.extend_from_slice(bytes);
            self.take_waiting_input();
        }
    }

    /// Feeds one command line (CRLF is added) and returns the last reply it brought, if any
    /// (none while its decision is deferred).
    pub fn command(&mut self, line: &str) -> Option<&Reply> {
        let before = self.replies.len();
        self.feed(format!("{line}\r\n").as_bytes());
        self.replies[before..].last()
    }

    /// Frames as much of `bytes` as the session takes now; returns how much it took.
    fn take(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        while used < bytes.len() && !self.closed && !self.is_waiting() {
            let n = self.receiver.receive(&bytes[used..], &mut self.outputs);
            used += n;
            self.peak = self.peak.max(self.receiver.buffered());
            let progressed = !self.outputs.is_empty();
            self.act();
            if n == 0 && !progressed {
                break;
            }
        }
        used
    }

    /// Offers the input that waited for a decision again.
    fn take_waiting_input(&mut self) {
        let mut input = std::mem::take(&mut self.input);
        let used = self.take(&input);
        if !self.closed {
            input.drain(..used);
            // Nothing was added meanwhile: `feed` is not re-entered from a hook.
            self.input = input;
        }
    }

    fn act(&mut self) {
        use crate::smtp::Output;
        while !self.outputs.is_empty() {
            for output in std::mem::take(&mut self.outputs) {
                match output {
                    Output::Reply(reply) => self.replies.push(reply),
                    Output::Decide(request) => self.decide(request),
                    Output::Reset => {
                        if let Some(session) = self.session_mut() {
                            session.0.on_reset(&mut session.1.cx());
                        }
                    }
                    Output::Close => self.closed = true,
                    // The driver runs no TLS: its sessions never offer STARTTLS.
                    Output::StartTls(reply) => self.replies.push(reply),
                }
            }
        }
        if self.closed {
            self.disconnect();
        }
    }

    fn session_mut(&mut self) -> Option<(&mut dyn SmtpSession, &mut DetachedCtx)> {
        let hooks = self.hooks.as_mut()?;
        Some((hooks.session.as_deref_mut()?, &mut hooks.detached))
    }

    /// Asks the hooks (or takes the default), and resolves unless a hook deferred.
    fn decide(&mut self, request: crate::smtp::Request) {
        use crate::smtp::{Decision, Request};
        let connect = matches!(request, Request::Connect);
        let Some(hooks) = self.hooks.as_mut() else {
            if let Request::Message(message) = request {
                self.messages.push(message);
            }
            return self.finish(false, Decision::Default);
        };
        let Some(session) = hooks.session.as_deref_mut() else {
            return self.finish(connect, Decision::Reply(crate::server::local_error()));
        };
        let mut cx = ServerCtx::detached(&mut hooks.detached);
        // The request as the channel builds it: the same function.
        let outcome = crate::server::ask(session, self.receiver.session(), &request, &mut cx);
        if let Request::Message(message) = request {
            self.messages.push(message);
        }
        let decision = match outcome {
            Outcome::Accept => Decision::Default,
            Outcome::Reply(reply) => Decision::Reply(reply),
            Outcome::Deferred(deferral) if hooks.detached.is_current(&deferral) => {
                hooks.waiting = Some(Waiting { deferral, connect });
                return;
            }
            Outcome::Deferred(_) => {
                log::error!(
                    "Outcome::Deferred with a ticket this hook call did not obtain from \
                     ServerCtx::defer; answering 451"
                );
                Decision::Reply(crate::server::local_error())
            }
        };
        self.finish(connect, decision);
    }

    /// Gives the session its decision; a connect decision as the channel maps it (`250 OK`
    /// greets with the default line, `451` becomes `421`).
    fn finish(&mut self, connect: bool, decision: crate::smtp::Decision) {
        use crate::smtp::Decision;
        let decision = match decision {
            Decision::Reply(reply) if connect && reply == Reply::ok() => Decision::Default,
            Decision::Reply(reply) if connect && reply == crate::server::local_error() => {
                Decision::Reply(Reply::new(
                    421,
                    format!(
                        "{} Service not available, closing transmission channel",
                        self.receiver.session().config().hostname
                    ),
                ))
            }
            other => other,
        };
        self.receiver
            .resolve(decision, &mut self.outputs)
            .expect("a request is pending");
    }

    /// Whether a hook deferred a decision that has not been answered yet.
    pub fn is_waiting(&self) -> bool {
        self.hooks.as_ref().is_some_and(|h| h.waiting.is_some())
    }

    /// Waits at most `timeout` for the answers of deferred decisions, and goes on with the
    /// dialogue as each arrives (the input that waited is taken then; it may defer again, and
    /// that answer is waited for too). Returns whether nothing is deferred any more.
    ///
    /// A ticket dropped unanswered answers `451`, as in the channel.
    pub fn wait_for_answers(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let Some(hooks) = self.hooks.as_mut() else {
                return true;
            };
            let Some(waiting) = &hooks.waiting else {
                return true;
            };
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(answer) = hooks.detached.answer(&waiting.deferral, left) else {
                return false;
            };
            let connect = waiting.connect;
            hooks.waiting = None;
            let reply = match answer {
                TicketAnswer::Reply(reply) => reply,
                TicketAnswer::Dropped => crate::server::local_error(),
            };
            self.finish(connect, crate::smtp::Decision::Reply(reply));
            self.act();
            self.take_waiting_input();
        }
    }

    /// Plays the deferral deadline
    /// ([`ServerOptions::defer_timeout`](crate::server::ServerOptions::defer_timeout)): the
    /// decision being waited for is answered `451` (`421` and a close for the connect
    /// decision), a later answer of its ticket is ignored, and the dialogue goes on. Returns
    /// whether a decision was waiting.
    pub fn expire_deferral(&mut self) -> bool {
        let Some(waiting) = self.hooks.as_mut().and_then(|h| h.waiting.take()) else {
            return false;
        };
        self.finish(
            waiting.connect,
            crate::smtp::Decision::Reply(crate::server::local_error()),
        );
        self.act();
        self.take_waiting_input();
        true
    }

    /// The client goes away (also done when the session closes: QUIT, a refusal, the error
    /// limit): as the channel's close, the session's `on_reset` runs if a transaction was
    /// open, then its `on_disconnect`, and the session is dropped. A deferred decision is
    /// forgotten. Nothing is taken after it.
    pub fn disconnect(&mut self) {
        self.closed = true;
        self.input.clear();
        let in_transaction = self.receiver.session().in_transaction();
        let Some(hooks) = self.hooks.as_mut() else {
            return;
        };
        hooks.waiting = None;
        let Some(mut session) = hooks.session.take() else {
            return;
        };
        if in_transaction {
            session.on_reset(&mut hooks.detached.cx());
        }
        session.on_disconnect(&mut hooks.detached.cx());
    }

    /// Every reply so far, the greeting first.
    pub fn replies(&self) -> &[Reply] {
        &self.replies
    }

    /// The latest reply.
    pub fn last_reply(&self) -> Option<&Reply> {
        self.replies.last()
    }

    /// Every message delivered so far (with a server: every message handed to its
    /// `process_message`, whatever it answered).
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Whether the session closed (QUIT, the error limit, a refused connection, or
    /// [`disconnect`](Self::disconnect)).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The most input bytes held at once (the unit being collected, or an unframed leftover).
    pub fn peak_buffered(&self) -> usize {
        self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::dot_stuff;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b".a\r\n.\r\nb.\r\n"), b"..a\r\n..\r\nb.\r\n.\r\n");
    }
}
