//! The listener's counts (connections, per address, message data memory) go back to zero
//! however a connection ends: a panicking hook, a session whose `Drop` panics (which unwinds
//! out of the channel, so the reactor drops it without its `on_close` finishing), a client
//! that vanishes in the middle of a message.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use smtpd::reactor::Reactor;
use smtpd::server::{Backend, Listener, Message, Outcome, ServerCtx, ServerOptions, SmtpSession};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A session whose hooks misbehave on request.
struct Fragile;

impl SmtpSession for Fragile {
    fn process_message(&mut self, message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        if message.rcpt_tos.iter().any(|r| r.starts_with("panic@")) {
            panic!("bug in process_message");
        }
        Outcome::Accept
    }

    fn on_reset(&mut self, _cx: &mut ServerCtx<'_, '_>) {
        panic!("bug in on_reset");
    }

    fn on_disconnect(&mut self, _cx: &mut ServerCtx<'_, '_>) {
        panic!("bug in on_disconnect");
    }
}

impl Drop for Fragile {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("bug in the session's Drop");
        }
    }
}

struct FragileBackend;

impl Backend for FragileBackend {
    fn open_session(&mut self, _peer: &smtpd::server::Peer) -> Box<dyn SmtpSession> {
        Box::new(Fragile)
    }
}

fn options() -> ServerOptions {
    let mut o = ServerOptions::default();
    o.session.hostname = "test.example".into();
    // Loopback is not exempt here, so the per-address cap applies to the test's clients.
    o.trusted_networks = Vec::new();
    o.max_connections_per_ip = 2;
    o.data_memory_limit = 64 * 1024 * 1024;
    o
}

/// Reads one reply (all its lines); None at EOF.
fn reply(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let last = line.as_bytes().get(3) != Some(&b'-');
        all.push_str(&line);
        if last {
            return Some(all);
        }
    }
}

fn client(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = BufReader::new(stream.try_clone().unwrap());
    (stream, reader)
}

/// Runs the reactor until `done` holds (or panics after 20 s).
fn drive(reactor: &mut Reactor, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        reactor.poll_once(Some(Duration::from_millis(5))).unwrap();
    }
}

#[test]
fn panicking_hooks_and_drops_leave_every_count_at_zero() {
    let mut reactor = Reactor::new().unwrap();
    let listener = Listener::bind(
        &mut reactor,
        "127.0.0.1:0".parse().unwrap(),
        FragileBackend,
        options(),
    )
    .unwrap();
    let addr = listener.local_addr();

    // 1. process_message panics (451), on_disconnect and Drop panic at QUIT.
    // 2. A transaction open at QUIT: on_reset panics too.
    // 3. The client vanishes in the middle of a large message (data memory held).
    let clients = thread::spawn(move || {
        let (mut s, mut r) = client(addr);
        assert!(reply(&mut r).unwrap().starts_with("220 "));
        s.write_all(
            b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<panic@b>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
        )
        .unwrap();
        let mut got = Vec::new();
        while let Some(line) = reply(&mut r) {
            got.push(line);
        }
        assert!(got[4].starts_with("451 "), "{got:?}");
        assert!(got[5].starts_with("221 "), "{got:?}");

        let (mut s, mut r) = client(addr);
        assert!(reply(&mut r).unwrap().starts_with("220 "));
        s.write_all(b"HELO c\r\nMAIL FROM:<a@b>\r\nQUIT\r\n")
            .unwrap();
        while reply(&mut r).is_some() {}

        let (mut s, mut r) = client(addr);
        assert!(reply(&mut r).unwrap().starts_with("220 "));
        s.write_all(b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
            .unwrap();
        for _ in 0..4 {
            reply(&mut r).unwrap();
        }
        let chunk = vec![b'y'; 64 * 1024];
        for _ in 0..16 {
            s.write_all(&chunk).unwrap();
        }
        // Gone without the end of data.
        drop(s);
        drop(r);
    });
    drive(&mut reactor, || clients.is_finished());
    clients.join().unwrap();
    drive(&mut reactor, || listener.connection_count() == 0);
    assert_eq!(listener.connections_from(LOOPBACK), 0);
    assert_eq!(listener.data_memory(), 0);

    // The per-address cap (2) would refuse new clients if the counts had leaked.
    let again = thread::spawn(move || {
        let (mut s1, mut r1) = client(addr);
        let (mut s2, mut r2) = client(addr);
        assert!(reply(&mut r1).unwrap().starts_with("220 "));
        assert!(reply(&mut r2).unwrap().starts_with("220 "));
        s1.write_all(b"QUIT\r\n").unwrap();
        s2.write_all(b"QUIT\r\n").unwrap();
        assert!(reply(&mut r1).unwrap().starts_with("221 "));
        assert!(reply(&mut r2).unwrap().starts_with("221 "));
    });
    drive(&mut reactor, || again.is_finished());
    again.join().unwrap();
    drive(&mut reactor, || listener.connection_count() == 0);
}

#[test]
fn a_third_connection_from_one_address_is_refused_while_two_are_open() {
    // The counterpart of the test above: the cap is real, so zero counts mean something.
    let mut reactor = Reactor::new().unwrap();
    let listener = Listener::bind(
        &mut reactor,
        "127.0.0.1:0".parse().unwrap(),
        FragileBackend,
        options(),
    )
    .unwrap();
    let addr = listener.local_addr();
    let clients = thread::spawn(move || {
        let (_s1, mut r1) = client(addr);
        let (_s2, mut r2) = client(addr);
        assert!(reply(&mut r1).unwrap().starts_with("220 "));
        assert!(reply(&mut r2).unwrap().starts_with("220 "));
        let (_s3, mut r3) = client(addr);
        let refusal = reply(&mut r3).unwrap();
        assert!(refusal.starts_with("421 4.7.0"), "{refusal}");
    });
    drive(&mut reactor, || clients.is_finished());
    clients.join().unwrap();
    drive(&mut reactor, || listener.connection_count() == 0);
    assert_eq!(listener.connections_from(LOOPBACK), 0);
}
