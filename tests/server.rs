//! The SMTP server library over real loopback sockets: what `process_message` receives,
//! deferred replies (from a timer, from another thread, deadline, dropped ticket), panics,
//! limits and timeouts, several listeners in one reactor, graceful shutdown, per-connection
//! sessions and deferred connect decisions.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mio::event::Source;
use smtpd::reactor::{Ctx, Dispatcher, Reactor, StopHandle, TimerId};
use smtpd::server::{
    Backend, Listener, Message, Outcome, Param, Peer, Reply, ServerCtx, ServerOptions, Shutdown,
    SmtpServer, SmtpSession, Ticket,
};

/// What the recording server answers.
#[derive(Clone, Debug)]
enum Behaviour {
    Accept,
    Reply(u16, &'static str),
    /// Answer from a worker thread after a delay.
    Thread(Duration, u16, &'static str),
    /// Answer from a timer of a dispatcher spawned in the loop.
    Timer(Duration, u16, &'static str),
    /// Keep the ticket and never answer.
    Hold,
    /// Drop the ticket unanswered.
    Drop,
    Panic,
}

struct Recorder {
    behaviour: Behaviour,
    seen: mpsc::Sender<Message>,
    held: Vec<Ticket>,
}

/// Completes a ticket when its timer fires: a deferral answered from inside the loop.
struct Delayer {
    ticket: Option<Ticket>,
    after: Duration,
    reply: Reply,
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
            ticket.complete_in(ctx, self.reply.clone());
        }
        ctx.close();
    }
}

impl SmtpServer for Recorder {
    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.seen.send(message.clone());
        match self.behaviour.clone() {
            Behaviour::Accept => Outcome::Accept,
            Behaviour::Reply(code, text) => Outcome::Reply(Reply::new(code, text)),
            Behaviour::Thread(after, code, text) => {
                let ticket = cx.defer();
                let deferred = Outcome::deferred(&ticket);
                thread::spawn(move || {
                    thread::sleep(after);
                    ticket.complete(Reply::new(code, text));
                });
                deferred
            }
            Behaviour::Timer(after, code, text) => {
                let ticket = cx.defer();
                let deferred = Outcome::deferred(&ticket);
                cx.ctx().spawn(Delayer {
                    ticket: Some(ticket),
                    after,
                    reply: Reply::new(code, text),
                });
                deferred
            }
            Behaviour::Hold => {
                let ticket = cx.defer();
                let deferred = Outcome::deferred(&ticket);
                self.held.push(ticket);
                deferred
            }
            Behaviour::Drop => {
                let ticket = cx.defer();
                let deferred = Outcome::deferred(&ticket);
                drop(ticket);
                deferred
            }
            Behaviour::Panic => panic!("bug in user code"),
        }
    }
}

/// Stops the reactor after a while, whatever happens.
struct Watchdog(Duration);

impl Dispatcher for Watchdog {
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.set_timer(self.0);
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _timer: TimerId) {
        ctx.stop();
    }
}

/// A reactor with listeners on a background thread, with a bounded lifetime.
struct TestServer {
    addrs: Vec<SocketAddr>,
    messages: mpsc::Receiver<Message>,
    stop: StopHandle,
    thread: Option<thread::JoinHandle<()>>,
    listener: smtpd::reactor::Handle,
    remote: smtpd::reactor::RemoteHandle,
}

fn options() -> ServerOptions {
    let mut o = ServerOptions::default();
    o.session.hostname = "test.example".into();
    o
}

impl TestServer {
    fn start(behaviour: Behaviour, options: ServerOptions) -> TestServer {
        TestServer::start_many(vec![(behaviour, options)])
    }

    fn start_many(servers: Vec<(Behaviour, ServerOptions)>) -> TestServer {
        let (tx, messages) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        // The reactor is !Send: it is built on its own thread.
        let thread = thread::spawn(move || {
            let mut reactor = Reactor::new().unwrap();
            let mut addrs = Vec::new();
            let mut first = None;
            for (behaviour, options) in servers {
                let server = Rc::new(RefCell::new(Recorder {
                    behaviour,
                    seen: tx.clone(),
                    held: Vec::new(),
                }));
                let l = Listener::bind(
                    &mut reactor,
                    "127.0.0.1:0".parse().unwrap(),
                    server,
                    options,
                )
                .unwrap();
                addrs.push(l.local_addr());
                first.get_or_insert(l.handle());
            }
            ready_tx
                .send((
                    addrs,
                    reactor.stop_handle(),
                    first.unwrap(),
                    reactor.remote(),
                ))
                .unwrap();
            // Bounded lifetime: a watchdog stops the loop if the test never does.
            reactor.add(Watchdog(Duration::from_secs(60))).unwrap();
            reactor.run().unwrap();
        });
        let (addrs, stop, listener, remote) = ready_rx.recv().unwrap();
        TestServer {
            addrs,
            messages,
            stop,
            thread: Some(thread),
            listener,
            remote,
        }
    }

    fn message(&self) -> Message {
        self.messages
            .recv_timeout(Duration::from_secs(5))
            .expect("process_message was not called")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// Reads one (possibly multi-line) reply; returns its lines without CRLF.
    fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(
                line.ends_with("\r\n"),
                "incomplete reply line {line:?} after {lines:?}"
            );
            line.truncate(line.len() - 2);
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return lines;
            }
        }
    }

    fn line(&mut self) -> String {
        let lines = self.reply();
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines.into_iter().next().unwrap()
    }

    fn send(&mut self, data: &str) {
        self.writer.write_all(data.as_bytes()).unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.line()
    }

    fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr);
        let greeting = c.line();
        assert!(greeting.starts_with("220 test.example "), "{greeting}");
        c
    }

    fn after_ehlo(addr: SocketAddr) -> Client {
        let mut c = Client::greeted(addr);
        c.send("EHLO client.example\r\n");
        let lines = c.reply();
        assert_eq!(lines[0], "250-test.example");
        c
    }

    fn in_data(addr: SocketAddr) -> Client {
        let mut c = Client::after_ehlo(addr);
        assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
        assert_eq!(c.cmd("RCPT TO:<b@example.com>"), "250 OK");
        assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
        c
    }

    fn at_eof(&mut self) -> bool {
        let mut line = String::new();
        matches!(self.reader.read_line(&mut line), Ok(0))
    }
}

#[test]
fn process_message_receives_the_envelope_and_data_as_received() {
    let server = TestServer::start(Behaviour::Accept, options());
    let mut c = Client::after_ehlo(server.addrs[0]);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com> size=30 body=8bitmime"),
        "250 OK"
    );
    assert_eq!(c.cmd("RCPT TO:<b@example.com>"), "250 OK");
    assert_eq!(c.cmd("RCPT TO:<c@example.com>"), "250 OK");
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    c.send("Subject: hi\r\n\r\n..leading dot\r\nbare\rCR kept\r\n.\r\n");
    assert_eq!(c.line(), "250 OK");
    let m = server.message();
    assert_eq!(m.mail_from, "a@example.com");
    assert_eq!(m.rcpt_tos, vec!["b@example.com", "c@example.com"]);
    assert_eq!(m.mail_options, vec!["SIZE=30", "BODY=8BITMIME"]);
    assert_eq!(m.helo.as_deref(), Some("client.example"));
    assert_eq!(m.peer.ip().to_string(), "127.0.0.1");
    assert_eq!(m.data, b"Subject: hi\r\n\r\n.leading dot\r\nbare\rCR kept");
    assert_eq!(c.cmd("QUIT"), "221 Bye");
    assert!(c.at_eof());
}

#[test]
fn lf_newlines_gives_cpythons_data_form() {
    let mut o = options();
    o.session.lf_newlines = true;
    let server = TestServer::start(Behaviour::Accept, o);
    let mut c = Client::in_data(server.addrs[0]);
    c.send("a\r\nb\r\n.\r\n");
    assert_eq!(c.line(), "250 OK");
    assert_eq!(server.message().data, b"a\nb");
}

#[test]
fn an_empty_message_does_not_hang() {
    let server = TestServer::start(Behaviour::Accept, options());
    let mut c = Client::in_data(server.addrs[0]);
    c.send(".\r\n");
    assert_eq!(c.line(), "250 OK");
    assert_eq!(server.message().data, b"");
}

#[test]
fn a_reply_line_from_the_server_is_sent_as_is() {
    let server = TestServer::start(Behaviour::Reply(550, "No such user here"), options());
    let mut c = Client::in_data(server.addrs[0]);
    c.send("x\r\n.\r\n");
    assert_eq!(c.line(), "550 No such user here");
    // The transaction is over; a new one can start.
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
}

#[test]
fn deferred_reply_completed_from_another_thread_with_pipelined_commands_waiting() {
    let server = TestServer::start(
        Behaviour::Thread(Duration::from_millis(150), 250, "queued as 42"),
        options(),
    );
    let mut c = Client::in_data(server.addrs[0]);
    // The end of data and two more commands in one segment: the commands must wait for the
    // deferred answer and be answered after it, in order.
    let start = Instant::now();
    c.send("hello\r\n.\r\nNOOP\r\nMAIL FROM:<x@example.com>\r\n");
    assert_eq!(c.line(), "250 queued as 42");
    assert!(start.elapsed() >= Duration::from_millis(140));
    assert_eq!(c.line(), "250 OK");
    assert_eq!(c.line(), "250 OK");
    assert_eq!(c.cmd("RCPT TO:<y@example.com>"), "250 OK");
}

#[test]
fn deferred_reply_completed_from_a_timer_in_the_loop() {
    let server = TestServer::start(
        Behaviour::Timer(Duration::from_millis(50), 554, "rejected later"),
        options(),
    );
    let mut c = Client::in_data(server.addrs[0]);
    c.send("x\r\n.\r\n");
    assert_eq!(c.line(), "554 rejected later");
    assert_eq!(c.cmd("NOOP"), "250 OK");
}

#[test]
fn a_deferral_nobody_answers_gets_451_at_the_deadline() {
    let mut o = options();
    o.defer_timeout = Duration::from_millis(100);
    let server = TestServer::start(Behaviour::Hold, o);
    let mut c = Client::in_data(server.addrs[0]);
    let start = Instant::now();
    c.send("x\r\n.\r\n");
    assert_eq!(
        c.line(),
        "451 Requested action aborted: local error in processing"
    );
    assert!(start.elapsed() >= Duration::from_millis(90));
    assert_eq!(c.cmd("NOOP"), "250 OK");
}

#[test]
fn a_dropped_ticket_gets_451() {
    let server = TestServer::start(Behaviour::Drop, options());
    let mut c = Client::in_data(server.addrs[0]);
    c.send("x\r\n.\r\n");
    assert_eq!(
        c.line(),
        "451 Requested action aborted: local error in processing"
    );
    assert_eq!(c.cmd("NOOP"), "250 OK");
}

#[test]
fn a_panic_in_process_message_answers_451_and_the_server_goes_on() {
    let server = TestServer::start(Behaviour::Panic, options());
    let mut c = Client::in_data(server.addrs[0]);
    c.send("x\r\n.\r\n");
    assert_eq!(
        c.line(),
        "451 Requested action aborted: local error in processing"
    );
    assert_eq!(c.cmd("NOOP"), "250 OK");
    let mut other = Client::greeted(server.addrs[0]);
    assert_eq!(other.cmd("NOOP"), "250 OK");
}

#[test]
fn an_idle_client_is_timed_out_with_421() {
    let mut o = options();
    o.idle_timeout = Some(Duration::from_millis(100));
    let server = TestServer::start(Behaviour::Accept, o);
    let mut c = Client::greeted(server.addrs[0]);
    assert_eq!(c.cmd("NOOP"), "250 OK");
    assert_eq!(c.line(), "421 test.example Error: timeout exceeded");
    assert!(c.at_eof());
}

#[test]
fn the_idle_timer_is_suspended_while_an_answer_is_deferred() {
    let mut o = options();
    o.idle_timeout = Some(Duration::from_millis(100));
    let server = TestServer::start(
        Behaviour::Thread(Duration::from_millis(400), 250, "slow but fine"),
        o,
    );
    let mut c = Client::in_data(server.addrs[0]);
    c.send("x\r\n.\r\n");
    assert_eq!(c.line(), "250 slow but fine");
    assert_eq!(c.cmd("NOOP"), "250 OK");
}

#[test]
fn connections_beyond_the_limit_get_421() {
    let mut o = options();
    o.max_connections = 2;
    let server = TestServer::start(Behaviour::Accept, o);
    let _a = Client::greeted(server.addrs[0]);
    let _b = Client::greeted(server.addrs[0]);
    let mut c = Client::connect(server.addrs[0]);
    assert_eq!(
        c.line(),
        "421 4.7.0 test.example Error: too many connections"
    );
    assert!(c.at_eof());
    drop(_a);
    // Once a slot is free, new clients are served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Client::connect(server.addrs[0]);
        if d.line().starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn oversize_message_is_refused_and_the_session_returns_to_commands() {
    let mut o = options();
    o.session.data_size_limit = 100;
    let server = TestServer::start(Behaviour::Accept, o);
    let mut c = Client::in_data(server.addrs[0]);
    c.send(&format!("{}\r\n.\r\n", "x".repeat(5000)));
    assert_eq!(c.line(), "552 Error: Too much mail data");
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
    assert_eq!(c.cmd("RCPT TO:<b@example.com>"), "250 OK");
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    c.send("small\r\n.\r\n");
    assert_eq!(c.line(), "250 OK");
    assert_eq!(server.message().data, b"small");
}

#[test]
fn an_over_long_command_line_is_refused_without_running_it() {
    let server = TestServer::start(Behaviour::Accept, options());
    let mut c = Client::greeted(server.addrs[0]);
    assert_eq!(
        c.cmd(&format!("HELO {}", "h".repeat(2000))),
        "500 Error: line too long"
    );
    assert_eq!(c.cmd("HELO ok"), "250 test.example");
}

#[test]
fn two_listeners_with_their_own_servers_share_one_reactor() {
    let server = TestServer::start_many(vec![
        (Behaviour::Accept, options()),
        (Behaviour::Reply(554, "second server says no"), options()),
    ]);
    let mut a = Client::in_data(server.addrs[0]);
    let mut b = Client::in_data(server.addrs[1]);
    a.send("a\r\n.\r\n");
    b.send("b\r\n.\r\n");
    assert_eq!(a.line(), "250 OK");
    assert_eq!(b.line(), "554 second server says no");
}

#[test]
fn shutdown_lets_the_transaction_in_flight_finish_then_says_421() {
    let server = TestServer::start(Behaviour::Accept, options());
    let mut busy = Client::in_data(server.addrs[0]);
    let mut idle = Client::greeted(server.addrs[0]);
    busy.send("Subject: in flight\r\n");
    server
        .remote
        .notify(server.listener, Shutdown::new(Duration::from_secs(5)));
    assert_eq!(
        idle.line(),
        "421 test.example Service not available, closing transmission channel"
    );
    assert!(idle.at_eof());
    busy.send("\r\n.\r\n");
    assert_eq!(busy.line(), "250 OK");
    assert_eq!(
        busy.line(),
        "421 test.example Service not available, closing transmission channel"
    );
    assert!(busy.at_eof());
    assert_eq!(server.message().data, b"Subject: in flight\r\n");
    // New connections are refused: the listener is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(server.addrs[0]).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn shutdown_grace_runs_out_for_a_stalled_transaction() {
    let server = TestServer::start(Behaviour::Accept, options());
    let mut busy = Client::in_data(server.addrs[0]);
    busy.send("never finished\r\n");
    thread::sleep(Duration::from_millis(50));
    server
        .remote
        .notify(server.listener, Shutdown::new(Duration::from_millis(100)));
    assert_eq!(
        busy.line(),
        "421 test.example Service not available, closing transmission channel"
    );
    assert!(busy.at_eof());
    assert!(
        server.messages.try_recv().is_err(),
        "an unfinished message was delivered"
    );
}

#[test]
fn python_smtplib_sends_to_a_library_server() {
    let server = TestServer::start(Behaviour::Accept, options());
    let port = server.addrs[0].port();
    let script = format!(
        r#"
import smtplib
c = smtplib.SMTP('127.0.0.1', {port}, timeout=10)
c.sendmail('from@example.com', ['to1@example.com', 'to2@example.com'],
           b'Subject: via smtplib\r\n\r\nline one\r\n.starts with dot\r\n')
print(c.noop())
c.quit()
"#
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3 is required for interop tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "(250, b'OK')");
    let m = server.message();
    assert_eq!(m.mail_from, "from@example.com");
    assert_eq!(m.rcpt_tos, vec!["to1@example.com", "to2@example.com"]);
    assert_eq!(
        m.data,
        b"Subject: via smtplib\r\n\r\nline one\r\n.starts with dot"
    );
    assert_eq!(m.mail_options.len(), 1);
    assert!(m.mail_options[0].starts_with("SIZE="));
}

/// A server that decides recipients itself: `bad…` refused at once, `slow…` decided on a worker
/// thread, `boom…` panics; every reset is counted.
struct Gatekeeper {
    resets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    seen: mpsc::Sender<Message>,
}

impl SmtpServer for Gatekeeper {
    fn process_message(&mut self, message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.seen.send(message.clone());
        Outcome::Accept
    }

    fn on_mail(
        &mut self,
        request: &smtpd::server::AddressRequest<'_>,
        _cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        if request.address.starts_with("boom") {
            panic!("bug in on_mail");
        }
        Outcome::Accept
    }

    fn on_rcpt(
        &mut self,
        request: &smtpd::server::AddressRequest<'_>,
        cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        if request.address.starts_with("bad") {
            return Outcome::Reply(Reply::new(550, "5.1.1 unknown user"));
        }
        if request.address.starts_with("slow") {
            let ticket = cx.defer();
            let deferred = Outcome::deferred(&ticket);
            let accept = request.rcpt_tos.is_empty();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                if accept {
                    ticket.complete(Reply::new(250, "2.1.5 checked slowly"));
                } else {
                    ticket.complete(Reply::new(452, "4.5.3 only one slow one"));
                }
            });
            return deferred;
        }
        Outcome::Accept
    }

    fn on_reset(&mut self, _cx: &mut ServerCtx<'_, '_>) {
        self.resets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn mail_and_rcpt_hooks_refuse_defer_and_survive_panics() {
    let resets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let r2 = resets.clone();
    let (addr, stop, runner) = serve(move || Gatekeeper {
        resets: r2,
        seen: tx,
    });
    let mut c = Client::after_ehlo(addr);
    assert_eq!(
        c.cmd("MAIL FROM:<boom@example.com>"),
        "451 Requested action aborted: local error in processing"
    );
    assert_eq!(
        c.cmd("RCPT TO:<x@example.com>"),
        "503 Error: need MAIL command"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
    assert_eq!(c.cmd("RCPT TO:<bad@example.com>"), "550 5.1.1 unknown user");
    // A pipelined RCPT waits for the deferred decision of the one before it.
    c.send("RCPT TO:<slow1@example.com>\r\nRCPT TO:<slow2@example.com>\r\n");
    assert_eq!(c.line(), "250 2.1.5 checked slowly");
    assert_eq!(c.line(), "452 4.5.3 only one slow one");
    assert_eq!(c.cmd("RCPT TO:<good@example.com>"), "250 OK");
    assert_eq!(c.cmd("RSET"), "250 OK");
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
    assert_eq!(
        c.cmd("RCPT TO:<slow@example.com>"),
        "250 2.1.5 checked slowly"
    );
    assert_eq!(c.cmd("RCPT TO:<good@example.com>"), "250 OK");
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    c.send("hi\r\n.\r\n");
    assert_eq!(c.line(), "250 OK");
    let m = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(m.rcpt_tos, ["slow@example.com", "good@example.com"]);
    // A delivered message is not a reset; a dropped connection mid-transaction is.
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while resets.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "no reset after a disconnect mid-transaction"
        );
        thread::sleep(Duration::from_millis(10));
    }
    stop.stop();
    runner.join().unwrap();
}

/// Python code subclassed SMTPChannel to add `smtp_XXX` methods or override them; here the
/// server lists its verbs and answers them in `on_command`.
struct Extended {
    refuse_next: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SmtpServer for Extended {
    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    fn commands(&self) -> Vec<String> {
        vec!["XPING".into(), "noop".into(), "VRFY".into()]
    }

    fn on_command(
        &mut self,
        request: &smtpd::server::CommandRequest<'_>,
        cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        match request.verb {
            "XPING" => Outcome::Reply(Reply::new(250, format!("pong {}", request.arg))),
            // NOOP answered later, from a thread.
            "NOOP" if request.arg == "slow" => {
                let ticket = cx.defer();
                let deferred = Outcome::deferred(&ticket);
                thread::spawn(move || ticket.complete(Reply::new(250, "slow noop")));
                deferred
            }
            // Anything else: the built-in behaviour.
            _ => Outcome::Accept,
        }
    }

    fn ehlo_keywords(&self, keywords: &mut Vec<String>) {
        keywords.retain(|k| k != "HELP");
        keywords.push("PIPELINING".into());
    }

    fn on_connect(&mut self, _peer: SocketAddr, _cx: &mut ServerCtx<'_, '_>) -> Option<Reply> {
        if self
            .refuse_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            Some(Reply::new(554, "5.7.1 no service for you"))
        } else {
            None
        }
    }
}

#[test]
fn custom_commands_overrides_ehlo_editing_and_connect_refusal() {
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r2 = refuse.clone();
    let (addr, stop, runner) = serve(move || Extended { refuse_next: r2 });
    let mut c = Client::greeted(addr);
    c.send("EHLO me\r\n");
    assert_eq!(
        c.reply(),
        [
            "250-test.example",
            "250-SIZE 33554432",
            "250-8BITMIME",
            "250 PIPELINING"
        ]
    );
    assert_eq!(c.cmd("XPING hello"), "250 pong hello");
    assert_eq!(c.cmd("xping"), "250 pong ");
    assert_eq!(c.cmd("NOOP slow"), "250 slow noop");
    // Accept runs the built-in command, CPython's replies included.
    assert_eq!(c.cmd("NOOP"), "250 OK");
    assert_eq!(c.cmd("NOOP x"), "501 Syntax: NOOP");
    assert_eq!(
        c.cmd("VRFY <a@example.com>"),
        "252 Cannot VRFY user, but will accept message and attempt delivery"
    );
    assert_eq!(
        c.cmd("XOTHER"),
        "500 Error: command \"XOTHER\" not recognized"
    );

    refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut refused = Client::connect(addr);
    assert_eq!(refused.line(), "554 5.7.1 no service for you");
    assert!(refused.at_eof());
    stop.stop();
    runner.join().unwrap();
}

/// Runs `make()`'s server on a reactor thread of its own (bounded by a watchdog); returns its
/// address, a stop handle and the thread.
fn serve<S: SmtpServer>(
    make: impl FnOnce() -> S + Send + 'static,
) -> (SocketAddr, StopHandle, thread::JoinHandle<()>) {
    serve_backend(move || Rc::new(RefCell::new(make())))
}

/// As [`serve`], for any [`Backend`].
fn serve_backend<B: Backend>(
    make: impl FnOnce() -> B + Send + 'static,
) -> (SocketAddr, StopHandle, thread::JoinHandle<()>) {
    serve_backend_with(options(), make)
}

/// As [`serve_backend`], with `options`.
fn serve_backend_with<B: Backend>(
    options: ServerOptions,
    make: impl FnOnce() -> B + Send + 'static,
) -> (SocketAddr, StopHandle, thread::JoinHandle<()>) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        let mut reactor = Reactor::new().unwrap();
        let server = make();
        let l = Listener::bind(
            &mut reactor,
            "127.0.0.1:0".parse().unwrap(),
            server,
            options,
        )
        .unwrap();
        reactor.add(Watchdog(Duration::from_secs(30))).unwrap();
        ready_tx
            .send((l.local_addr(), reactor.stop_handle()))
            .unwrap();
        reactor.run().unwrap();
    });
    let (addr, stop) = ready_rx.recv().unwrap();
    (addr, stop, runner)
}

/// Refuses greetings from names it does not like, and answers slowly for one.
struct Doorman;

impl SmtpServer for Doorman {
    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    fn on_helo(
        &mut self,
        request: &smtpd::server::HeloRequest<'_>,
        cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        match request.name {
            "spammer.example" => Outcome::Reply(Reply::new(550, "5.7.1 go away")),
            "slow.example" if request.extended => {
                let ticket = cx.defer();
                let deferred = Outcome::deferred(&ticket);
                thread::spawn(move || ticket.complete(Reply::new(250, "slow.example welcome")));
                deferred
            }
            _ => Outcome::Accept,
        }
    }
}

#[test]
fn on_helo_refuses_defers_or_keeps_cpythons_greeting_replies() {
    let (addr, stop, runner) = serve(|| Doorman);
    let mut c = Client::greeted(addr);
    assert_eq!(c.cmd("HELO spammer.example"), "550 5.7.1 go away");
    // A refused greeting leaves the session without one.
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com>"),
        "503 Error: send HELO first"
    );
    assert_eq!(c.cmd("EHLO slow.example"), "250 slow.example welcome");
    // Accepted with the server's own text, the greeting counts.
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
    // Accept keeps CPython's own replies, errors included.
    let mut d = Client::greeted(addr);
    assert_eq!(d.cmd("HELO"), "501 Syntax: HELO hostname");
    assert_eq!(d.cmd("HELO fine.example"), "250 test.example");
    assert_eq!(d.cmd("HELO again.example"), "503 Duplicate HELO/EHLO");
    stop.stop();
    runner.join().unwrap();
}

/// Opens a [`Counted`] session per connection; each reports its count when it closes.
struct Counting {
    closed: mpsc::Sender<(String, usize)>,
}

/// One connection: numbers its messages and remembers the HELO name, in the session value.
struct Counted {
    closed: mpsc::Sender<(String, usize)>,
    helo: String,
    messages: usize,
}

impl Backend for Counting {
    fn open_session(&mut self, _peer: &Peer) -> Box<dyn SmtpSession> {
        Box::new(Counted {
            closed: self.closed.clone(),
            helo: String::new(),
            messages: 0,
        })
    }
}

impl SmtpSession for Counted {
    fn on_helo(
        &mut self,
        request: &smtpd::server::HeloRequest<'_>,
        _cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        self.helo = request.name.to_string();
        Outcome::Accept
    }

    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.messages += 1;
        Outcome::Reply(Reply::new(
            250,
            format!("message {} from {}", self.messages, self.helo),
        ))
    }

    fn on_disconnect(&mut self, _cx: &mut ServerCtx<'_, '_>) {
        let _ = self.closed.send((self.helo.clone(), self.messages));
    }
}

fn send_one(c: &mut Client) -> String {
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
    assert_eq!(c.cmd("RCPT TO:<b@example.com>"), "250 OK");
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    c.send("hi\r\n.\r\n");
    c.line()
}

#[test]
fn each_connection_has_its_own_session_value() {
    let (closed_tx, closed) = mpsc::channel();
    let (addr, stop, runner) = serve_backend(move || Counting { closed: closed_tx });
    let mut a = Client::greeted(addr);
    let mut b = Client::greeted(addr);
    assert_eq!(a.cmd("HELO a.example"), "250 test.example");
    assert_eq!(b.cmd("HELO b.example"), "250 test.example");
    // Interleaved: each connection counts its own messages.
    assert_eq!(send_one(&mut a), "250 message 1 from a.example");
    assert_eq!(send_one(&mut b), "250 message 1 from b.example");
    assert_eq!(send_one(&mut a), "250 message 2 from a.example");
    assert_eq!(a.cmd("QUIT"), "221 Bye");
    assert_eq!(
        closed.recv_timeout(Duration::from_secs(5)).unwrap(),
        ("a.example".to_string(), 2)
    );
    drop(b);
    assert_eq!(
        closed.recv_timeout(Duration::from_secs(5)).unwrap(),
        ("b.example".to_string(), 1)
    );
    // A new connection starts from a fresh session.
    let mut c = Client::greeted(addr);
    assert_eq!(c.cmd("HELO c.example"), "250 test.example");
    assert_eq!(send_one(&mut c), "250 message 1 from c.example");
    stop.stop();
    runner.join().unwrap();
}

/// Decides each connection in `on_connect`, later, from a worker thread: the `n`th connection
/// gets the `n`th verdict (`None`: drop the ticket unanswered).
struct Gate {
    verdicts: Rc<RefCell<Vec<Option<Reply>>>>,
}

struct Gated {
    verdict: Option<Option<Reply>>,
}

impl Backend for Gate {
    fn open_session(&mut self, _peer: &Peer) -> Box<dyn SmtpSession> {
        let verdict = Some(self.verdicts.borrow_mut().remove(0));
        Box::new(Gated { verdict })
    }
}

impl SmtpSession for Gated {
    fn on_connect(&mut self, _peer: &Peer, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let ticket = cx.defer();
        let deferred = Outcome::deferred(&ticket);
        let verdict = self.verdict.take().expect("on_connect runs once");
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(30));
            match verdict {
                Some(reply) => ticket.complete(reply),
                None => drop(ticket),
            }
        });
        deferred
    }

    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }
}

#[test]
fn on_connect_may_defer_then_greet_or_refuse() {
    let verdicts = vec![
        Some(Reply::ok()),
        Some(Reply::new(220, "test.example ESMTP checked and welcome")),
        Some(Reply::new(554, "5.7.1 listed at a blocklist")),
        None,
    ];
    let (addr, stop, runner) = serve_backend(move || Gate {
        verdicts: Rc::new(RefCell::new(verdicts)),
    });
    // Accepted (250 OK, as Ticket::accept gives): the default greeting. A command the client
    // sent before the greeting waits for it, and is then answered.
    let mut c = Client::connect(addr);
    c.send("NOOP\r\n");
    let greeting = c.line();
    assert!(greeting.starts_with("220 test.example "), "{greeting}");
    assert_eq!(c.line(), "250 OK");
    assert_eq!(c.cmd("HELO me"), "250 test.example");
    drop(c);
    // A 2xx reply greets with its own text, and the session goes on.
    let mut c = Client::connect(addr);
    assert_eq!(c.line(), "220 test.example ESMTP checked and welcome");
    assert_eq!(c.cmd("HELO me"), "250 test.example");
    drop(c);
    // Anything else is sent instead of the greeting, and the connection closes.
    let mut c = Client::connect(addr);
    assert_eq!(c.line(), "554 5.7.1 listed at a blocklist");
    assert!(c.at_eof());
    // A ticket dropped unanswered: 421, closed (451 is no greeting).
    let mut c = Client::connect(addr);
    assert_eq!(
        c.line(),
        "421 test.example Service not available, closing transmission channel"
    );
    assert!(c.at_eof());
    stop.stop();
    runner.join().unwrap();
}

#[test]
fn a_greeting_chosen_by_a_deferred_on_connect_waits_for_the_greeting_delay() {
    let mut o = options();
    o.greeting_delay = Some(Duration::from_millis(150));
    let verdicts = vec![
        Some(Reply::new(220, "test.example ESMTP after a pause")),
        Some(Reply::new(220, "test.example ESMTP after a pause")),
    ];
    let (addr, stop, runner) = serve_backend_with(o, move || Gate {
        verdicts: Rc::new(RefCell::new(verdicts)),
    });
    let started = Instant::now();
    let mut c = Client::connect(addr);
    assert_eq!(c.line(), "220 test.example ESMTP after a pause");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(c.cmd("HELO me"), "250 test.example");
    // Talking during the delay (after the decision came) is still refused.
    let mut early = Client::connect(addr);
    thread::sleep(Duration::from_millis(60));
    early.send("HELO me\r\n");
    assert_eq!(
        early.line(),
        "554 5.5.0 test.example Error: talked before the greeting"
    );
    stop.stop();
    runner.join().unwrap();
}

/// Keeps the ticket of `MAIL` and returns its deferral from `RCPT`, a later hook call.
struct StaleDeferral {
    kept: Option<Ticket>,
}

impl SmtpSession for StaleDeferral {
    fn on_mail(
        &mut self,
        _request: &smtpd::server::AddressRequest<'_>,
        cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        self.kept = Some(cx.defer());
        Outcome::Accept
    }

    fn on_rcpt(
        &mut self,
        request: &smtpd::server::AddressRequest<'_>,
        cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        let kept = self.kept.as_ref().expect("MAIL came first");
        if request.address.starts_with("fresh") {
            // A new ticket, but the old one's deferral: still not this call's.
            let _ticket = cx.defer();
        }
        Outcome::deferred(kept)
    }

    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }
}

struct StaleBackend;

impl Backend for StaleBackend {
    fn open_session(&mut self, _peer: &Peer) -> Box<dyn SmtpSession> {
        Box::new(StaleDeferral { kept: None })
    }
}

#[test]
fn a_deferral_from_an_older_ticket_answers_451() {
    let (addr, stop, runner) = serve_backend(|| StaleBackend);
    let mut c = Client::greeted(addr);
    assert_eq!(c.cmd("HELO me"), "250 test.example");
    assert_eq!(c.cmd("MAIL FROM:<a@example.com>"), "250 OK");
    let local_error = "451 Requested action aborted: local error in processing";
    assert_eq!(c.cmd("RCPT TO:<b@example.com>"), local_error);
    assert_eq!(c.cmd("RCPT TO:<fresh@example.com>"), local_error);
    // The connection is not stuck waiting for a ticket.
    assert_eq!(c.cmd("NOOP"), "250 OK");
    stop.stop();
    runner.join().unwrap();
}

/// Panics when asked for a session.
struct Broken;

impl Backend for Broken {
    fn open_session(&mut self, _peer: &Peer) -> Box<dyn SmtpSession> {
        panic!("no session today")
    }
}

#[test]
fn a_panic_in_open_session_refuses_that_connection_only() {
    let (addr, stop, runner) = serve_backend(|| Broken);
    for _ in 0..2 {
        let mut c = Client::connect(addr);
        assert_eq!(
            c.line(),
            "421 Service not available, closing transmission channel"
        );
        assert!(c.at_eof());
    }
    stop.stop();
    runner.join().unwrap();
}

/// Records, per connection, the peer it was opened for and the typed parameters its hooks see.
struct ParamWitness {
    seen: mpsc::Sender<String>,
}

struct ParamWitnessSession {
    seen: mpsc::Sender<String>,
}

impl Backend for ParamWitness {
    fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession> {
        let _ = self.seen.send(format!("open {}", peer.addr.ip()));
        Box::new(ParamWitnessSession {
            seen: self.seen.clone(),
        })
    }
}

impl SmtpSession for ParamWitnessSession {
    fn on_connect(&mut self, peer: &Peer, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.seen.send(format!("connect {}", peer.addr.ip()));
        Outcome::Accept
    }

    fn on_mail(
        &mut self,
        request: &smtpd::server::AddressRequest<'_>,
        _cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        let params: Vec<String> = request.params.iter().map(ToString::to_string).collect();
        let _ = self
            .seen
            .send(format!("mail {params:?} {:?}", request.options));
        Outcome::Accept
    }

    fn on_rcpt(
        &mut self,
        request: &smtpd::server::AddressRequest<'_>,
        _cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        let before: Vec<&str> = request
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        let size = Param::find(request.mail_params, "SIZE");
        let _ = self.seen.send(format!(
            "rcpt {} after {before:?} size {size:?}",
            request.address
        ));
        Outcome::Accept
    }

    fn process_message(&mut self, message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let recipients: Vec<&str> = message
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        let _ = self.seen.send(format!(
            "message {recipients:?} body={:?}",
            message.mail_param("body")
        ));
        Outcome::Accept
    }
}

#[test]
fn hooks_see_the_peer_and_typed_case_preserving_parameters() {
    let (seen_tx, seen) = mpsc::channel();
    let (addr, stop, runner) = serve_backend(move || ParamWitness { seen: seen_tx });
    let mut c = Client::after_ehlo(addr);
    assert_eq!(
        c.cmd("MAIL FROM:<a@example.com> size=20 Body=8bitMIME"),
        "250 OK"
    );
    assert_eq!(c.cmd("RCPT TO:<b@example.com>"), "250 OK");
    assert_eq!(c.cmd("RCPT TO:<c@example.com>"), "250 OK");
    assert_eq!(c.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    c.send("hi\r\n.\r\n");
    assert_eq!(c.line(), "250 OK");
    let next = || seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(next(), "open 127.0.0.1");
    assert_eq!(next(), "connect 127.0.0.1");
    assert_eq!(
        next(),
        r#"mail ["size=20", "Body=8bitMIME"] ["SIZE=20", "BODY=8BITMIME"]"#
    );
    assert_eq!(
        next(),
        r#"rcpt b@example.com after [] size Some(Some("20"))"#
    );
    assert_eq!(
        next(),
        r#"rcpt c@example.com after ["b@example.com"] size Some(Some("20"))"#
    );
    assert_eq!(
        next(),
        r#"message ["b@example.com", "c@example.com"] body=Some(Some("8bitMIME"))"#
    );
    stop.stop();
    runner.join().unwrap();
}
