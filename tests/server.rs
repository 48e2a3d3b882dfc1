//! The SMTP server library over real loopback sockets: what `process_message` receives,
//! deferred replies (from a timer, from another thread, deadline, dropped ticket), panics,
//! limits and timeouts, several listeners in one reactor, graceful shutdown.

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
    Listener, Message, Outcome, Reply, ServerCtx, ServerOptions, Shutdown, SmtpServer, Ticket,
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
                thread::spawn(move || {
                    thread::sleep(after);
                    ticket.complete(Reply::new(code, text));
                });
                Outcome::Deferred
            }
            Behaviour::Timer(after, code, text) => {
                let ticket = cx.defer();
                cx.ctx().spawn(Delayer {
                    ticket: Some(ticket),
                    after,
                    reply: Reply::new(code, text),
                });
                Outcome::Deferred
            }
            Behaviour::Hold => {
                self.held.push(cx.defer());
                Outcome::Deferred
            }
            Behaviour::Drop => {
                drop(cx.defer());
                Outcome::Deferred
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
    server.remote.notify(
        server.listener,
        Shutdown {
            grace: Duration::from_secs(5),
        },
    );
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
    server.remote.notify(
        server.listener,
        Shutdown {
            grace: Duration::from_millis(100),
        },
    );
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
