//! `chat::Transport` and the in-place transport switch (what STARTTLS will use), proved with a
//! toy layered transport over real loopback sockets: a byte-XOR "cipher" that keeps output of
//! its own until flushed and hands its input out in small pieces, as a TLS layer holds
//! ciphertext to send and decrypted bytes to deliver.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use smtpd::chat::{ChatCtl, ChatDispatcher, ChatHandler, Socket, Transport, TransportSwitch};
use smtpd::reactor::{Ctx, Handle, Reactor};

const KEY: u8 = 0x5a;

fn xor(data: &[u8]) -> Vec<u8> {
    data.iter().map(|b| b ^ KEY).collect()
}

/// The toy layer: decodes input into a buffer it hands out at most `PIECE` bytes at a time,
/// and encodes output into a buffer sent only by `flush`.
struct Xor {
    inner: Socket,
    input: Vec<u8>,
    output: Vec<u8>,
    shutdown: bool,
}

const PIECE: usize = 5;
const CLOSE_NOTIFY: &[u8] = b"<close-notify>";

impl Xor {
    /// `early`: plaintext the layer holds from the start (as a TLS layer may hold application
    /// data that came with the end of its handshake).
    fn new(inner: Socket, early: &[u8]) -> Xor {
        Xor {
            inner,
            input: early.to_vec(),
            output: Vec::new(),
            shutdown: false,
        }
    }
}

impl Read for Xor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            let mut raw = [0u8; 4096];
            let n = self.inner.read(&mut raw)?; // WouldBlock only with nothing held
            if n == 0 {
                return Ok(0);
            }
            self.input = xor(&raw[..n]);
        }
        let n = buf.len().min(self.input.len()).min(PIECE);
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        Ok(n)
    }
}

impl Write for Xor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend(xor(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            let n = self.inner.write(&self.output)?;
            self.output.drain(..n);
        }
        if std::mem::take(&mut self.shutdown) {
            self.inner.shutdown_write()?;
        }
        Ok(())
    }
}

impl Source for Xor {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.inner.register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        self.inner.reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.inner.deregister(r)
    }
}

impl Transport for Xor {
    fn wants_write(&self) -> bool {
        !self.output.is_empty()
    }
    fn has_buffered_input(&self) -> bool {
        !self.input.is_empty()
    }
    /// Queues a trailer of its own (as TLS queues its close-notify), sent by the next flush,
    /// which then shuts the socket down.
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown = true;
        self.output.extend(xor(CLOSE_NOTIFY));
        Ok(())
    }
}

/// Lines in, `echo: LINE` out; `STARTTLS` answers `220 go` and switches to the XOR layer
/// (holding `early` plaintext); `QUIT` answers `221 bye` and closes when done.
struct Lines {
    current: Vec<u8>,
    seen: Rc<RefCell<Vec<String>>>,
    early: &'static [u8],
    /// Make the switch for the wrong transport type (local misuse).
    wrong_switch: bool,
}

impl ChatHandler for Lines {
    fn collect_incoming_data(&mut self, data: &[u8]) {
        self.current.extend_from_slice(data);
    }

    fn found_terminator(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        let line = String::from_utf8(std::mem::take(&mut self.current)).unwrap();
        self.seen.borrow_mut().push(line.clone());
        match line.as_str() {
            "STARTTLS" => {
                chat.push(b"220 go\r\n");
                let early = self.early;
                let switch = if self.wrong_switch {
                    TransportSwitch::new(|_: &mut TcpStream| Ok(()))
                } else {
                    TransportSwitch::new(move |s: &mut Socket| {
                        s.layer(|plain| Ok(Xor::new(plain, early)))
                    })
                };
                chat.switch_transport_when_flushed(switch);
                assert!(chat.is_switching());
            }
            "QUIT" => {
                chat.push(b"221 bye\r\n");
                chat.close_when_done();
            }
            _ => chat.push(format!("echo: {line}\r\n").as_bytes()),
        }
    }
}

struct Setup {
    reactor: Reactor,
    handle: Handle,
    peer: StdTcpStream,
    seen: Rc<RefCell<Vec<String>>>,
}

fn setup(early: &'static [u8], wrong_switch: bool) -> Setup {
    let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
    let peer = StdTcpStream::connect(listener.local_addr().unwrap()).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (ours, _) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    let seen: Rc<RefCell<Vec<String>>> = Rc::default();
    let handler = Lines {
        current: Vec::new(),
        seen: seen.clone(),
        early,
        wrong_switch,
    };
    let mut reactor = Reactor::new().unwrap();
    let socket = Socket::from(TcpStream::from_std(ours));
    let handle = reactor.add(ChatDispatcher::new(socket, handler)).unwrap();
    Setup {
        reactor,
        handle,
        peer,
        seen,
    }
}

impl Setup {
    fn tick_until(&mut self, mut what: impl FnMut(&mut Setup) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what(self) {
            assert!(Instant::now() < deadline, "condition not reached in 10 s");
            self.reactor
                .poll_once(Some(Duration::from_millis(5)))
                .unwrap();
        }
    }

    /// Ticks the reactor until `n` bytes arrived at the peer.
    fn peer_reads(&mut self, n: usize) -> Vec<u8> {
        self.peer.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        self.tick_until(|s| {
            let mut buf = [0u8; 256];
            match s.peer.read(&mut buf) {
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("peer read: {e}"),
            }
            got.len() >= n
        });
        self.peer.set_nonblocking(false).unwrap();
        got
    }

    fn lines_seen(&self) -> Vec<String> {
        self.seen.borrow().clone()
    }
}

#[test]
fn a_switch_waits_for_the_reply_drops_pipelined_input_then_layers_the_socket() {
    let mut s = setup(b"", false);
    // Plain before the switch.
    s.peer.write_all(b"HI\r\n").unwrap();
    assert_eq!(s.peer_reads(10), b"echo: HI\r\n");

    // STARTTLS with a command pipelined behind it, in one segment: the reply goes out plain,
    // and the pipelined NOOP is never acted on.
    s.peer.write_all(b"STARTTLS\r\nNOOP\r\n").unwrap();
    assert_eq!(s.peer_reads(8), b"220 go\r\n");
    s.tick_until(|s| {
        s.reactor
            .with_dispatcher(s.handle, |d: &mut ChatDispatcher<Socket, Lines>, _| {
                matches!(d.chat.transport(), Socket::Layered(_))
            })
            .unwrap()
    });
    assert_eq!(s.lines_seen(), ["HI", "STARTTLS"]);

    // Through the layer now, both ways; its input arrives in pieces of PIECE bytes.
    s.peer
        .write_all(&xor(b"PING with a longer line\r\n"))
        .unwrap();
    let reply = s.peer_reads(29);
    assert_eq!(xor(&reply), b"echo: PING with a longer line\r\n");

    // QUIT: the reply, and the layer's own trailer queued by the shutdown, sit in the layer's
    // buffer until flushed; the channel closes only after they are out.
    s.peer.write_all(&xor(b"QUIT\r\n")).unwrap();
    let reply = s.peer_reads(9 + CLOSE_NOTIFY.len());
    assert_eq!(xor(&reply), [&b"221 bye\r\n"[..], CLOSE_NOTIFY].concat());
    let h = s.handle;
    s.tick_until(|s| !s.reactor.contains(h));
    let mut rest = Vec::new();
    s.peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(
        s.lines_seen(),
        ["HI", "STARTTLS", "PING with a longer line", "QUIT"]
    );
}

#[test]
fn input_the_layer_holds_at_the_switch_is_delivered_without_a_readiness_event() {
    let mut s = setup(b"EARLY one\r\nEARLY two\r\n", false);
    // STARTTLS alone: the short read drains the socket, so the reactor stops offering reads;
    // the peer then sends nothing, and the layer's early input must still be framed.
    s.peer.write_all(b"STARTTLS\r\n").unwrap();
    assert_eq!(s.peer_reads(8), b"220 go\r\n");
    let expected = b"echo: EARLY one\r\necho: EARLY two\r\n";
    let reply = s.peer_reads(expected.len());
    assert_eq!(xor(&reply), expected);
    assert_eq!(s.lines_seen(), ["STARTTLS", "EARLY one", "EARLY two"]);
}

#[test]
fn a_switch_made_for_another_transport_closes_the_channel() {
    let mut s = setup(b"", true);
    s.peer.write_all(b"STARTTLS\r\nNOOP\r\n").unwrap();
    assert_eq!(s.peer_reads(8), b"220 go\r\n");
    let h = s.handle;
    s.tick_until(|s| !s.reactor.contains(h));
    assert_eq!(s.lines_seen(), ["STARTTLS"]);
}

/// `ChatDispatcher::connect` reaches a unix-domain socket the same way as a TCP address.
#[test]
fn a_client_channel_connects_to_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("smtpd-transport-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lines.sock");
    let _ = std::fs::remove_file(&path);
    let listener = StdUnixListener::bind(&path).unwrap();

    struct Hello(Rc<RefCell<Vec<String>>>, Vec<u8>);
    impl ChatHandler for Hello {
        fn collect_incoming_data(&mut self, data: &[u8]) {
            self.1.extend_from_slice(data);
        }
        fn found_terminator(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
            let line = String::from_utf8(std::mem::take(&mut self.1)).unwrap();
            self.0.borrow_mut().push(line);
            chat.close_when_done();
        }
        fn on_connect(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
            self.0.borrow_mut().push("connected".into());
            chat.push(b"hello\r\n");
        }
    }

    let seen: Rc<RefCell<Vec<String>>> = Rc::default();
    let mut reactor = Reactor::new().unwrap();
    let client = ChatDispatcher::connect(path.as_path(), Hello(seen.clone(), Vec::new())).unwrap();
    assert!(client.is_connecting());
    assert!(format!("{client:?}").contains("connecting: true"));
    let h = reactor.add(client).unwrap();
    let (mut theirs, _) = listener.accept().unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.borrow().is_empty() {
        assert!(Instant::now() < deadline);
        reactor.poll_once(Some(Duration::from_millis(5))).unwrap();
    }
    let mut line = [0u8; 7];
    theirs.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"hello\r\n");
    theirs.write_all(b"bye\r\n").unwrap();
    while reactor.contains(h) {
        assert!(Instant::now() < deadline);
        reactor.poll_once(Some(Duration::from_millis(5))).unwrap();
    }
    assert_eq!(*seen.borrow(), ["connected", "bye"]);
    // The client shut its side down, then closed.
    let mut rest = Vec::new();
    theirs.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
