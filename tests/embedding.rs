//! The asyncore/asynchat layer over descriptors that are not TCP sockets (asyncore's
//! `file_dispatcher`): a chat over a pipe pair, over a `socketpair` end wrapped as a
//! `FileStream`, over a child process's stdio; and `smtpd::testing` itself.

use std::any::Any;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::unix::pipe::{Receiver, Sender};
use smtpd::chat::{ChatCtl, ChatDispatcher, ChatHandler};
use smtpd::reactor::{Ctx, Duplex, FileStream, Reactor};
use smtpd::server::{Message, Outcome, Reply, ServerCtx, ServerOptions, SmtpServer};
use smtpd::testing::{Client, ClientThread, Line, TestServer, TEST_HOSTNAME};

const LIMIT: Duration = Duration::from_secs(10);

/// Records every line; answers `ping` with `pong`, `bye` with `bye` and a close; pushes a
/// `Send` notification's text.
struct Lines {
    line: Vec<u8>,
    seen: Rc<RefCell<Vec<String>>>,
}

impl Lines {
    fn new() -> (Lines, Rc<RefCell<Vec<String>>>) {
        let seen = Rc::new(RefCell::new(Vec::new()));
        (
            Lines {
                line: Vec::new(),
                seen: seen.clone(),
            },
            seen,
        )
    }
}

impl ChatHandler for Lines {
    fn collect_incoming_data(&mut self, data: &[u8]) {
        self.line.extend_from_slice(data);
    }

    fn found_terminator(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        let line = String::from_utf8(std::mem::take(&mut self.line)).unwrap();
        match line.as_str() {
            "ping" => chat.push(b"pong\r\n"),
            "bye" => {
                chat.push(b"bye\r\n");
                chat.close_when_done();
            }
            _ => {}
        }
        self.seen.borrow_mut().push(line);
    }

    fn on_notify(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        if let Ok(text) = message.downcast::<&'static str>() {
            chat.push(text.as_bytes());
        }
    }
}

/// Two chats in one reactor, talking over a pair of pipes.
#[test]
fn two_chats_talk_over_a_pipe_pair() {
    let mut reactor = Reactor::new().unwrap();
    let (a, b) = Duplex::pipe_pair().unwrap();
    let (left, left_seen) = Lines::new();
    let (right, right_seen) = Lines::new();
    let left = reactor.add(ChatDispatcher::new(a, left)).unwrap();
    let right = reactor.add(ChatDispatcher::new(b, right)).unwrap();
    // The left side starts the conversation: "ping" → "pong" back; then "bye" closes right.
    reactor.notify(left, "ping\r\nhello\r\nbye\r\n");
    let closed = reactor
        .run_until(Instant::now() + LIMIT, |r| !r.contains(right))
        .unwrap();
    assert!(closed, "right side did not close");
    // Left saw right's answers; it keeps running until it reads the pipe's EOF.
    reactor
        .run_until(Instant::now() + LIMIT, |r| !r.contains(left))
        .unwrap();
    assert_eq!(*right_seen.borrow(), ["ping", "hello", "bye"]);
    assert_eq!(*left_seen.borrow(), ["pong", "bye"]);
    assert!(reactor.is_empty());
}

/// A chat on our end of a pipe pair, a plain blocking thread on the other.
#[test]
fn a_chat_serves_a_pipe_pair_driven_by_a_thread() {
    let mut reactor = Reactor::new().unwrap();
    let (ours, theirs) = Duplex::pipe_pair().unwrap();
    let (lines, seen) = Lines::new();
    let h = reactor.add(ChatDispatcher::new(ours, lines)).unwrap();
    let peer = ClientThread::spawn(&reactor, move || {
        let Duplex { reader, writer, .. } = theirs;
        reader.set_nonblocking(false).unwrap();
        writer.set_nonblocking(false).unwrap();
        let (mut reader, mut writer) = (
            std::fs::File::from(std::os::fd::OwnedFd::from(reader)),
            std::fs::File::from(std::os::fd::OwnedFd::from(writer)),
        );
        // Split at awkward places: the terminator itself arrives in pieces.
        for piece in [&b"pi"[..], b"ng\r", b"\nbye\r\n"] {
            writer.write_all(piece).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut answer = String::new();
        reader.read_to_string(&mut answer).unwrap();
        answer
    });
    reactor
        .run_until(Instant::now() + LIMIT, |r| peer.is_done() && !r.contains(h))
        .unwrap();
    assert_eq!(peer.join(), "pong\r\nbye\r\n");
    assert_eq!(*seen.borrow(), ["ping", "bye"]);
}

/// asyncore's `file_dispatcher(fd)`: any descriptor, here one end of a `socketpair`.
#[test]
fn file_stream_wraps_any_descriptor() {
    let mut reactor = Reactor::new().unwrap();
    let (ours, mut theirs) = StdUnixStream::pair().unwrap();
    theirs.set_read_timeout(Some(LIMIT)).unwrap();
    let stream = FileStream::new(ours).unwrap();
    let (lines, seen) = Lines::new();
    let h = reactor.add(ChatDispatcher::new(stream, lines)).unwrap();
    theirs.write_all(b"ping\r\nbye\r\n").unwrap();
    reactor
        .run_until(Instant::now() + LIMIT, |r| !r.contains(h))
        .unwrap();
    let mut answer = String::new();
    theirs.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "pong\r\nbye\r\n");
    assert_eq!(*seen.borrow(), ["ping", "bye"]);
}

/// `file_wrapper` duplicates the descriptor: the original stays usable by its owner.
#[test]
fn file_stream_dup_leaves_the_original_open() {
    let (ours, mut theirs) = StdUnixStream::pair().unwrap();
    let mut stream = FileStream::dup(&ours).unwrap();
    stream.write_all(b"a").unwrap();
    drop(ours);
    stream.write_all(b"b").unwrap();
    drop(stream);
    let mut got = Vec::new();
    theirs.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"ab");
}

/// A regular file cannot be polled: adding it fails cleanly instead of spinning.
#[test]
fn a_regular_file_is_refused_at_registration() {
    let mut reactor = Reactor::new().unwrap();
    let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    let (lines, _) = Lines::new();
    let stream = FileStream::new(file).unwrap();
    assert!(reactor.add(ChatDispatcher::new(stream, lines)).is_err());
    assert!(reactor.is_empty());
}

/// A chat driving a child process through its stdin and stdout (`cat` echoes every line).
#[test]
fn a_chat_drives_a_child_process_over_its_stdio() {
    let mut child = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stream = Duplex::new(
        Receiver::from(child.stdout.take().unwrap()),
        Sender::from(child.stdin.take().unwrap()),
    );
    stream.reader.set_nonblocking(true).unwrap();
    stream.writer.set_nonblocking(true).unwrap();
    let mut reactor = Reactor::new().unwrap();
    let (lines, seen) = Lines::new();
    let h = reactor.add(ChatDispatcher::new(stream, lines)).unwrap();
    reactor.notify(h, "one\r\ntwo\r\n");
    let done = reactor
        .run_until(Instant::now() + LIMIT, |_| seen.borrow().len() == 2)
        .unwrap();
    reactor.close(h); // closes cat's stdin: it exits
    assert!(done);
    assert_eq!(*seen.borrow(), ["one", "two"]);
    // Bounded wait for the child to exit after its stdin closed.
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cat did not exit");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---- smtpd::testing ----

#[test]
fn test_server_records_messages_and_the_client_records_the_dialogue() {
    let server = TestServer::start().unwrap();
    let mut c = Client::connect(server.addr()).unwrap();
    assert!(c.greeting().lines[0].starts_with(TEST_HOSTNAME));
    let ehlo = c.ehlo("me.example").unwrap();
    assert_eq!(ehlo.code, 250);
    assert!(ehlo.lines.len() > 1, "multi-line EHLO reply: {ehlo:?}");
    let reply = c
        .send_mail(
            "a@example.com",
            &["b@example.com", "c@example.com"],
            b".dot\r\nend",
        )
        .unwrap();
    assert_eq!(reply, Reply::ok());
    let m = server.wait_for_message(LIMIT).unwrap();
    assert_eq!(m.rcpt_tos, ["b@example.com", "c@example.com"]);
    assert_eq!(m.data, b".dot\r\nend"); // dot-stuffed by the client, unstuffed by the server
    assert_eq!(m.peer, c.local_addr().unwrap());
    assert!(server.take_messages().is_empty());
    assert_eq!(c.quit().unwrap().to_string(), "221 Bye");
    let t = c.transcript();
    assert_eq!(
        t[0],
        Line::Received(format!("220 {}", c.greeting().lines[0]))
    );
    assert!(t.contains(&Line::Sent("..dot".into())));
    assert_eq!(t.last(), Some(&Line::Received("221 Bye".into())));
    let text = c.transcript_text();
    assert!(text.contains("C: RCPT TO:<c@example.com>\nS: 250 OK\nC: DATA\nS: 354 "));
}

struct Refuse;

impl SmtpServer for Refuse {
    fn process_message(&mut self, _m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Reply(Reply::new(554, "no thanks"))
    }
}

#[test]
fn test_server_builder_takes_options_and_a_server() {
    let mut options = ServerOptions::default();
    options.session.hostname = "built.example".into();
    options.session.max_recipients = 1;
    let server = TestServer::builder()
        .options(options)
        .server(|| Refuse)
        .start()
        .unwrap();
    let mut c = Client::connect(server.addr()).unwrap();
    assert!(c.greeting().lines[0].starts_with("built.example "));
    c.ehlo("me").unwrap();
    let reply = c.send_mail("a@x.org", &["b@x.org"], b"hi").unwrap();
    assert_eq!(reply.to_string(), "554 no thanks");
    assert!(server.wait_for_message(LIMIT).is_some());
    // A refusal before DATA ends send_mail early; nothing reaches process_message.
    let reply = c.send_mail("<bad", &["b@x.org"], b"hi").unwrap();
    assert_eq!(reply.code / 100, 5);
    assert!(server
        .wait_for_message(Duration::from_millis(100))
        .is_none());
}

#[test]
fn test_server_bind_errors_are_returned() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = TestServer::builder()
        .addr(taken.local_addr().unwrap())
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[test]
fn test_server_shutdown_answers_421_to_idle_clients() {
    let server = TestServer::start().unwrap();
    let mut c = Client::connect(server.addr()).unwrap();
    server.shutdown(Duration::from_secs(1));
    let reply = c.read_reply().unwrap();
    assert_eq!(reply.code, 421);
    assert!(c.read_reply().is_err()); // closed
}

#[test]
fn test_server_lifetime_bounds_a_forgotten_server() {
    let server = TestServer::builder()
        .lifetime(Duration::from_millis(100))
        .start()
        .unwrap();
    let addr = server.addr();
    std::thread::sleep(Duration::from_millis(400));
    // The loop has stopped: a connection may be queued by the kernel, but nobody greets it.
    if let Ok(s) = std::net::TcpStream::connect(addr) {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0; 1];
        assert!(!matches!((&s).read(&mut buf), Ok(1)));
    }
    let started = Instant::now();
    server.stop();
    assert!(started.elapsed() < LIMIT);
}

#[test]
fn client_takes_the_null_sender_and_reports_every_reply() {
    let mut options = ServerOptions::default();
    options.session.hostname = TEST_HOSTNAME.into();
    options.session.max_recipients = 2;
    let server = TestServer::builder().options(options).start().unwrap();
    let mut c = Client::connect(server.addr()).unwrap();
    c.ehlo("me.example").unwrap();
    // "<>" as Message::mail_from shows it, and "" too: both are `MAIL FROM:<>`.
    for null in ["<>", ""] {
        assert_eq!(
            c.send_mail(null, &["a@x.org"], b"bounce").unwrap().code,
            250
        );
        assert_eq!(server.wait_for_message(LIMIT).unwrap().mail_from, "<>");
    }
    assert_eq!(c.transcript_text().matches("C: MAIL FROM:<>\n").count(), 2);
    // Every reply of a transaction: the third recipient is over the limit.
    let t = c
        .transaction("<a@x.org>", &["b@x.org", "<c@x.org>", "d@x.org"], b"hi")
        .unwrap();
    assert_eq!(t.mail, Reply::ok());
    assert_eq!(codes(&t.rcpts), [250, 250, 452]);
    assert_eq!(t.accepted(), ["b@x.org", "<c@x.org>"]);
    assert_eq!(t.data.as_ref().map(|r| r.code), Some(354));
    assert_eq!(t.reply(), &Reply::ok());
    assert!(t.is_delivered());
    assert_eq!(
        server.wait_for_message(LIMIT).unwrap().rcpt_tos,
        ["b@x.org", "c@x.org"]
    );
    // A refused MAIL ends it: no recipient, no data.
    let t = c.transaction("<bad", &["b@x.org"], b"hi").unwrap();
    assert_eq!(t.mail.code / 100, 5);
    assert!(t.rcpts.is_empty() && t.data.is_none() && t.message.is_none());
    assert_eq!(t.reply(), &t.mail);
    assert!(!t.is_delivered());
    // Every recipient refused: the last refusal is the answer, DATA is not sent.
    let t = c
        .transaction("a@x.org", &["<bad", "<worse"], b"hi")
        .unwrap();
    assert_eq!(codes(&t.rcpts), [501, 501]);
    assert!(t.data.is_none());
    assert_eq!(t.reply(), &t.rcpts[1].1);
    c.command("RSET").unwrap();
}

fn codes(rcpts: &[(String, Reply)]) -> Vec<u16> {
    rcpts.iter().map(|(_, r)| r.code).collect()
}
