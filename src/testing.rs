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
//! Every wait is bounded: each server stops by itself after [its
//! lifetime](TestServerBuilder::lifetime) (60 s by default), the client's reads time out (5 s by
//! default), and dropping the [`TestServer`] stops its thread and joins it.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use mio::event::Source;

use crate::reactor::{Ctx, Dispatcher, Handle, Reactor, RemoteHandle, StopHandle, TimerId};
use crate::server::{
    AddressRequest, Backend, CommandRequest, HeloRequest, Listener, Message, Outcome, Peer, Reply,
    ServerCtx, ServerOptions, Shutdown, SmtpServer, SmtpSession,
};

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
}

impl std::fmt::Debug for TestServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServerBuilder")
            .field("options", &self.options)
            .field("lifetime", &self.lifetime)
            .field("addr", &self.addr)
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
        } = self;
        let (message_tx, messages) = mpsc::channel();
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
                messages,
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

/// Wraps each session the real backend opens in a [`RecordingSession`].
struct Recording {
    inner: Box<dyn Backend>,
    seen: mpsc::Sender<Message>,
}

impl Backend for Recording {
    fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession> {
        Box::new(RecordingSession {
            inner: self.inner.open_session(peer),
            seen: self.seen.clone(),
        })
    }

    fn commands(&self) -> Vec<String> {
        self.inner.commands()
    }

    fn ehlo_keywords(&self, keywords: &mut Vec<String>) {
        self.inner.ehlo_keywords(keywords);
    }
}

/// Hands a copy of every message to the test thread, then lets the real session decide.
struct RecordingSession {
    inner: Box<dyn SmtpSession>,
    seen: mpsc::Sender<Message>,
}

impl SmtpSession for RecordingSession {
    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.seen.send(message.clone());
        self.inner.process_message(message, cx)
    }

    fn on_connect(&mut self, peer: &Peer, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.inner.on_connect(peer, cx)
    }

    fn on_helo(&mut self, request: &HeloRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.inner.on_helo(request, cx)
    }

    fn on_mail(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.inner.on_mail(request, cx)
    }

    fn on_rcpt(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.inner.on_rcpt(request, cx)
    }

    fn on_command(&mut self, request: &CommandRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.inner.on_command(request, cx)
    }

    fn on_reset(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.inner.on_reset(cx);
    }

    fn on_disconnect(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.inner.on_disconnect(cx);
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
    messages: mpsc::Receiver<Message>,
    thread: Option<thread::JoinHandle<()>>,
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
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next message handed to `process_message` (in arrival order, each once), waiting at
    /// most `timeout`. `None` if none arrived in time.
    pub fn wait_for_message(&self, timeout: Duration) -> Option<Message> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// Every message received so far and not yet taken, without waiting.
    pub fn take_messages(&self) -> Vec<Message> {
        self.messages.try_iter().collect()
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
    /// recipient was accepted).
    ///
    /// # Errors
    /// As [`command`](Self::command).
    pub fn send_mail(&mut self, from: &str, to: &[&str], data: &[u8]) -> io::Result<Reply> {
        let reply = self.command(&format!("MAIL FROM:<{from}>"))?;
        if reply.code != 250 {
            return Ok(reply);
        }
        let mut last = None;
        let mut accepted = 0;
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>"))?;
            if reply.code / 100 == 2 {
                accepted += 1;
            }
            last = Some(reply);
        }
        if accepted == 0 {
            if let Some(reply) = last {
                return Ok(reply);
            }
        }
        let reply = self.command("DATA")?;
        if reply.code != 354 {
            return Ok(reply);
        }
        self.send_raw(&dot_stuff(data))?;
        self.read_reply()
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
/// a [`Session`](crate::smtp::Session); every request (connect, HELO, MAIL, RCPT, command,
/// message) gets the default decision. For property tests and fuzzing: feed any bytes, cut
/// anywhere, and inspect what came out.
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
}

impl std::fmt::Debug for SessionDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionDriver")
            .field("receiver", &self.receiver)
            .field("replies", &self.replies.len())
            .field("messages", &self.messages.len())
            .finish_non_exhaustive()
    }
}

impl SessionDriver {
    /// A greeted session with `config` (which must pass
    /// [`Config::validate`](crate::smtp::Config::validate)), for a client at `192.0.2.1:25`.
    pub fn new(config: crate::smtp::Config) -> SessionDriver {
        let peer = SocketAddr::from(([192, 0, 2, 1], 25));
        let session = crate::smtp::Session::new(std::sync::Arc::new(config), peer);
        let mut driver = SessionDriver {
            receiver: crate::smtp::Receiver::new(session),
            outputs: Vec::new(),
            replies: Vec::new(),
            messages: Vec::new(),
            closed: false,
            peak: 0,
        };
        driver.receiver.start(&mut driver.outputs);
        driver.act();
        driver
    }

    /// Feeds bytes as they might arrive in one read; input after a close is ignored.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut used = 0;
        while used < bytes.len() && !self.closed {
            let n = self.receiver.receive(&bytes[used..], &mut self.outputs);
            used += n;
            self.peak = self.peak.max(self.receiver.buffered());
            let progressed = !self.outputs.is_empty();
            self.act();
            if n == 0 && !progressed {
                break;
            }
        }
    }

    fn act(&mut self) {
        use crate::smtp::{Decision, Output, Request};
        while !self.outputs.is_empty() {
            for output in std::mem::take(&mut self.outputs) {
                match output {
                    Output::Reply(reply) => self.replies.push(reply),
                    Output::Decide(request) => {
                        if let Request::Message(message) = request {
                            self.messages.push(message);
                        }
                        self.receiver
                            .resolve(Decision::Default, &mut self.outputs)
                            .expect("a request is pending");
                    }
                    Output::Close => self.closed = true,
                    _ => {}
                }
            }
        }
    }

    /// Every reply so far, the greeting first.
    pub fn replies(&self) -> &[Reply] {
        &self.replies
    }

    /// Every message delivered so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Whether the session closed (QUIT, or the error limit).
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
