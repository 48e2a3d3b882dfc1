//! The chat layer: asynchat framing (split at every byte), pausing, backpressure, half-close,
//! and an echo protocol over real loopback sockets with partial reads and writes.

use std::any::Any;
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixStream};
use smtpd::chat::{ChatCtl, ChatDispatcher, ChatHandler, ChatOptions, Terminator};
use smtpd::reactor::{Acceptor, AcceptorOptions, Ctx, Handle, Reactor, TimerId};

/// A small scripted protocol: each unit is recorded; `DATA` switches to `\r\n.\r\n` for one
/// unit, `COUNT n` collects n raw bytes, `PAUSE` pauses until notified, lines are echoed.
#[derive(Default)]
struct Script {
    current: Vec<u8>,
    units: Rc<RefCell<Vec<Vec<u8>>>>,
    in_data: bool,
    in_count: bool,
}

impl ChatHandler for Script {
    fn collect_incoming_data(&mut self, data: &[u8]) {
        assert!(
            !data.is_empty(),
            "collect_incoming_data called with nothing"
        );
        self.current.extend_from_slice(data);
    }

    fn found_terminator(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        let unit = std::mem::take(&mut self.current);
        self.units.borrow_mut().push(unit.clone());
        if self.in_data || self.in_count {
            self.in_data = false;
            self.in_count = false;
            chat.set_terminator(Terminator::bytes("\r\n"));
            chat.push(b"250 got it\r\n");
            return;
        }
        if unit == b"DATA" {
            self.in_data = true;
            chat.set_terminator(Terminator::bytes("\r\n.\r\n"));
        } else if let Some(n) = unit.strip_prefix(b"COUNT ") {
            let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
            self.in_count = true;
            chat.set_terminator(Terminator::Count(n));
        } else if unit == b"PAUSE" {
            chat.pause();
        } else if unit == b"QUIT" {
            chat.push(b"bye\r\n");
            chat.close_when_done();
            return;
        }
        let mut reply = unit;
        reply.extend_from_slice(b"\r\n");
        chat.push(&reply);
    }

    fn on_notify(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>, _message: Box<dyn Any>) {
        chat.push(b"resumed\r\n");
        chat.resume();
    }

    fn on_start(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        chat.push(b"hello\r\n");
    }
}

const SCRIPT_INPUT: &[u8] =
    b"HELO x\r\nDATA\r\nline 1\r\n..dot\r\n\r\n.\r\nCOUNT 7\r\n\r\nabcdeNOOP\r\n\r\nQUIT\r\n";

fn expected_units() -> Vec<Vec<u8>> {
    vec![
        b"HELO x".to_vec(),
        b"DATA".to_vec(),
        b"line 1\r\n..dot\r\n".to_vec(),
        b"COUNT 7".to_vec(),
        b"\r\nabcde".to_vec(),
        b"NOOP".to_vec(),
        b"".to_vec(),
        b"QUIT".to_vec(),
    ]
}

type ScriptChat = ChatDispatcher<UnixStream, Script>;

/// Feeds `chunks` through `Chat::feed` (no socket traffic) and returns the framed units.
fn frame_chunks(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut reactor = Reactor::new().unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let units: Rc<RefCell<Vec<Vec<u8>>>> = Default::default();
    let script = Script {
        units: units.clone(),
        ..Default::default()
    };
    let h = reactor.add(ChatDispatcher::new(a, script)).unwrap();
    for chunk in chunks {
        reactor
            .with_dispatcher::<ScriptChat, _>(h, |d, ctx| d.chat.feed(chunk, &mut d.handler, ctx))
            .expect("channel alive");
    }
    let got = units.borrow().clone();
    got
}

#[test]
fn framing_is_independent_of_how_input_is_split() {
    assert_eq!(frame_chunks(&[SCRIPT_INPUT]), expected_units());
    for i in 0..=SCRIPT_INPUT.len() {
        let (x, y) = SCRIPT_INPUT.split_at(i);
        assert_eq!(frame_chunks(&[x, y]), expected_units(), "split at {i}");
        for j in i..=SCRIPT_INPUT.len() {
            let (y1, y2) = y.split_at(j - i);
            assert_eq!(
                frame_chunks(&[x, y1, y2]),
                expected_units(),
                "split at {i} and {j}"
            );
        }
    }
    let bytes: Vec<&[u8]> = SCRIPT_INPUT.chunks(1).collect();
    assert_eq!(frame_chunks(&bytes), expected_units(), "one byte at a time");
}

#[test]
fn a_terminator_prefix_is_held_back_not_collected() {
    // "\r\n." at the end could start "\r\n.\r\n": it must not reach the handler as data before
    // the next byte decides.
    let units = frame_chunks(&[b"DATA\r\nabc\r\n.", b"x\r\n.\r\n"]);
    assert_eq!(units[1], b"abc\r\n.x");
}

// ---- loopback helpers -------------------------------------------------------------------

struct Server {
    reactor: Reactor,
    addr: std::net::SocketAddr,
    channels: Rc<RefCell<Vec<Handle>>>,
    units: Rc<RefCell<Vec<Vec<u8>>>>,
}

fn server_with(options: ChatOptions) -> Server {
    let mut reactor = Reactor::new().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let channels: Rc<RefCell<Vec<Handle>>> = Default::default();
    let units: Rc<RefCell<Vec<Vec<u8>>>> = Default::default();
    let (c2, u2) = (channels.clone(), units.clone());
    let acceptor = Acceptor::new(
        listener,
        AcceptorOptions::default(),
        move |stream: TcpStream, _peer, ctx: &mut Ctx<'_>| {
            let script = Script {
                units: u2.clone(),
                ..Default::default()
            };
            let h = ctx.spawn(ChatDispatcher::with_options(
                stream,
                script,
                options.clone(),
            ));
            c2.borrow_mut().push(h);
        },
    );
    reactor.add(acceptor).unwrap();
    Server {
        reactor,
        addr,
        channels,
        units,
    }
}

fn server() -> Server {
    server_with(ChatOptions::default())
}

impl Server {
    fn tick_until(&mut self, mut what: impl FnMut(&mut Server) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what(self) {
            assert!(
                Instant::now() < deadline,
                "condition not reached within 10 s"
            );
            self.reactor
                .poll_once(Some(Duration::from_millis(10)))
                .unwrap();
        }
    }
}

fn client(addr: std::net::SocketAddr) -> StdTcpStream {
    let s = StdTcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Runs the server on this thread while `f` runs the client on another.
fn with_client<T: Send + 'static>(
    server: &mut Server,
    f: impl FnOnce(StdTcpStream) -> T + Send + 'static,
) -> T {
    let c = client(server.addr);
    let t = thread::spawn(move || f(c));
    server.tick_until(|_| t.is_finished());
    t.join().unwrap()
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line
}

#[test]
fn echo_over_loopback_with_partial_reads_and_writes() {
    let mut server = server();
    const LINES: usize = 40_000;
    let received = with_client(&mut server, |c| {
        let mut writer = c.try_clone().unwrap();
        let sender = thread::spawn(move || {
            let mut all = Vec::new();
            for i in 0..LINES {
                all.extend_from_slice(format!("line {i} {}\r\n", "x".repeat(i % 97)).as_bytes());
            }
            // Odd-sized writes split lines and terminators across reads.
            for piece in all.chunks(1013) {
                writer.write_all(piece).unwrap();
            }
            writer.write_all(b"QUIT\r\n").unwrap();
        });
        let mut reader = BufReader::new(c);
        assert_eq!(read_line(&mut reader), "hello\r\n");
        let mut n = 0;
        loop {
            let line = read_line(&mut reader);
            if line == "bye\r\n" {
                break;
            }
            assert_eq!(line, format!("line {n} {}\r\n", "x".repeat(n % 97)));
            n += 1;
        }
        sender.join().unwrap();
        // close_when_done: the server closes after "bye".
        assert_eq!(read_line(&mut reader), "");
        n
    });
    assert_eq!(received, LINES);
    server.tick_until(|s| s.reactor.len() == 1);
}

#[test]
fn output_backpressure_stops_reading_and_bounds_memory() {
    let options = ChatOptions::default();
    let high = options.output_high_water;
    let budget = options.read_budget;
    let mut server = server_with(options);
    let c = client(server.addr);
    let mut writer = c.try_clone().unwrap();
    // The client writes 16 MiB of lines and reads nothing until told to.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let sender = thread::spawn(move || {
        let line = format!("{}\r\n", "y".repeat(1000));
        let mut written = 0usize;
        for _ in 0..16 * 1024 {
            if writer.write_all(line.as_bytes()).is_err() {
                break;
            }
            written += line.len();
        }
        writer.write_all(b"QUIT\r\n").unwrap();
        written
    });
    let reader = thread::spawn(move || {
        go_rx.recv().unwrap();
        let mut reader = BufReader::new(c);
        let mut lines = 0usize;
        loop {
            let line = read_line(&mut reader);
            match line.as_str() {
                "" => panic!("server closed early"),
                "bye\r\n" => return lines,
                _ => lines += 1,
            }
        }
    });
    // Let the server run while nobody reads: its pending output must stay bounded and the
    // writer must end up blocked (the server stopped reading).
    // Run at least 600 ms, and on (up to 10 s, for a loaded machine) until the server stopped
    // reading because of its output queue. The queue is sampled between ticks only, and
    // partial writes may shrink it within a tick, so "stopped reading" is the reliable sign.
    let until = Instant::now() + Duration::from_millis(600);
    let hard_deadline = Instant::now() + Duration::from_secs(10);
    let mut max_pending = 0;
    let mut throttled = false;
    while Instant::now() < until || (!throttled && Instant::now() < hard_deadline) {
        server
            .reactor
            .poll_once(Some(Duration::from_millis(10)))
            .unwrap();
        let h = server.channels.borrow()[0];
        let (pending, reading) = server
            .reactor
            .with_dispatcher::<ChatDispatcher<TcpStream, Script>, _>(h, |d, _| {
                (d.chat.ctl().pending_output(), d.chat.wants_read())
            })
            .unwrap();
        max_pending = max_pending.max(pending);
        // Not reading with output queued: the high-water mark was passed (hysteresis keeps
        // it off until the queue drains below the low mark).
        throttled |= !reading && pending > 0;
    }
    assert!(
        !sender.is_finished(),
        "the server kept reading without bound"
    );
    assert!(
        max_pending <= high + budget + 2048,
        "pending output {max_pending} exceeded the high-water mark {high} by more than one read budget"
    );
    assert!(
        throttled,
        "the server never stopped reading for its output queue (max {max_pending})"
    );
    go_tx.send(()).unwrap();
    server.tick_until(|_| reader.is_finished());
    let written = sender.join().unwrap();
    let lines = reader.join().unwrap();
    assert_eq!(lines, 1 + written / 1002, "greeting plus one echo per line");
}

#[test]
fn resume_frames_pipelined_input_without_new_client_bytes() {
    let mut server = server();
    let c = client(server.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    // One write: the server reads all of it at once, then pauses after PAUSE.
    w.write_all(b"PAUSE\r\nA\r\nB\r\n").unwrap();
    server.tick_until(|s| s.units.borrow().len() == 1);
    for _ in 0..5 {
        server
            .reactor
            .poll_once(Some(Duration::from_millis(10)))
            .unwrap();
    }
    assert_eq!(
        *server.units.borrow(),
        vec![b"PAUSE".to_vec()],
        "framed while paused"
    );
    let h = server.channels.borrow()[0];
    let buffered = server
        .reactor
        .with_dispatcher::<ChatDispatcher<TcpStream, Script>, _>(h, |d, _| d.chat.buffered_input())
        .unwrap();
    assert_eq!(buffered, 6, "A and B wait, unframed, in the chat's buffer");
    // Resume from another thread, through the remote handle; the client sends nothing more.
    let remote = server.reactor.remote();
    thread::spawn(move || remote.notify(h, ())).join().unwrap();
    server.tick_until(|s| s.units.borrow().len() == 3);
    let t = thread::spawn(move || (0..4).map(|_| read_line(&mut r)).collect::<Vec<_>>());
    server.tick_until(|_| t.is_finished());
    assert_eq!(
        t.join().unwrap(),
        vec!["hello\r\n", "PAUSE\r\n", "resumed\r\n", "A\r\n"]
    );
}

/// A handler that says nothing until its timer fires.
struct Ticker;

impl ChatHandler for Ticker {
    fn collect_incoming_data(&mut self, _data: &[u8]) {}
    fn found_terminator(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {}
    fn on_start(&mut self, _chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        ctx.set_timer(Duration::from_millis(50));
    }
    fn on_timer(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>, _timer: TimerId) {
        chat.push(b"421 idle too long\r\n");
        chat.close_when_done();
    }
}

#[test]
fn a_reply_pushed_from_a_timer_reaches_an_idle_client() {
    let mut reactor = Reactor::new().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    reactor
        .add(Acceptor::new(
            listener,
            AcceptorOptions::default(),
            |s: TcpStream, _, ctx: &mut Ctx<'_>| {
                ctx.spawn(ChatDispatcher::new(s, Ticker));
            },
        ))
        .unwrap();
    let c = client(addr);
    let t = thread::spawn(move || {
        let mut all = String::new();
        BufReader::new(c).read_to_string(&mut all).unwrap();
        all
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.is_finished() {
        assert!(Instant::now() < deadline);
        // The wait is bounded only so the loop notices the client thread ending.
        reactor.poll_once(Some(Duration::from_millis(200))).unwrap();
    }
    assert_eq!(t.join().unwrap(), "421 idle too long\r\n");
}

#[test]
fn half_close_still_answers_every_complete_command() {
    let mut server = server();
    let answer = with_client(&mut server, |mut c| {
        c.write_all(b"A\r\nB\r\nincomplete").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).unwrap();
        all
    });
    assert_eq!(answer, "hello\r\nA\r\nB\r\n");
    server.tick_until(|s| s.reactor.len() == 1);
}

#[test]
fn many_clients_are_served_concurrently() {
    let mut server = server();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let c = client(server.addr);
            thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let mut r = BufReader::new(c);
                assert_eq!(read_line(&mut r), "hello\r\n");
                for j in 0..50 {
                    w.write_all(format!("c{i} m{j}\r\n").as_bytes()).unwrap();
                    assert_eq!(read_line(&mut r), format!("c{i} m{j}\r\n"));
                }
                w.write_all(b"QUIT\r\n").unwrap();
                assert_eq!(read_line(&mut r), "bye\r\n");
            })
        })
        .collect();
    server.tick_until(|_| clients.iter().all(|c| c.is_finished()));
    for c in clients {
        c.join().unwrap();
    }
}

/// The client side of a line protocol on the same reactor: asyncore's `dispatcher.connect`.
struct LineClient {
    current: Vec<u8>,
    lines: Rc<RefCell<Vec<String>>>,
    events: Rc<RefCell<Vec<String>>>,
}

impl ChatHandler for LineClient {
    fn collect_incoming_data(&mut self, data: &[u8]) {
        self.current.extend_from_slice(data);
    }

    fn found_terminator(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.current)).into_owned();
        self.lines.borrow_mut().push(line);
    }

    fn on_start(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        // Pushed before the connection exists: sent once it does.
        chat.push(b"HELO early\r\n");
    }

    fn on_connect(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        self.events.borrow_mut().push("connected".into());
        chat.push(b"QUIT\r\n");
    }

    fn on_connect_failed(&mut self, _ctx: &mut Ctx<'_>, error: &std::io::Error) {
        self.events
            .borrow_mut()
            .push(format!("failed: {:?}", error.kind()));
    }

    fn on_close(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        self.events.borrow_mut().push("closed".into());
    }
}

#[test]
fn a_client_channel_connects_without_blocking_and_speaks_the_protocol() {
    let mut server = server();
    let lines: Rc<RefCell<Vec<String>>> = Default::default();
    let events: Rc<RefCell<Vec<String>>> = Default::default();
    let client = ChatDispatcher::connect(
        server.addr,
        LineClient {
            current: Vec::new(),
            lines: lines.clone(),
            events: events.clone(),
        },
    )
    .unwrap();
    let h = server.reactor.add(client).unwrap();
    server.tick_until(|s| !s.reactor.contains(h));
    assert_eq!(*lines.borrow(), ["hello", "HELO early", "bye"]);
    assert_eq!(*events.borrow(), ["connected", "closed"]);

    // A refused connection is reported, and the channel closes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let events: Rc<RefCell<Vec<String>>> = Default::default();
    let client = ChatDispatcher::connect(
        closed,
        LineClient {
            current: Vec::new(),
            lines: Default::default(),
            events: events.clone(),
        },
    )
    .unwrap();
    let h = server.reactor.add(client).unwrap();
    server.tick_until(|s| !s.reactor.contains(h));
    assert_eq!(*events.borrow(), ["failed: ConnectionRefused", "closed"]);
}
