//! A worked port: an asynchat line protocol (Python, `examples/python/echo_line_protocol.py`)
//! as a `ChatHandler` (Rust). Line by line:
//!
//! | Python | Rust |
//! |---|---|
//! | `class EchoChannel(asynchat.async_chat)` | `struct EchoChannel` + `impl ChatHandler`, run in a `ChatDispatcher` |
//! | `self.set_terminator(b'\r\n')` / `(n)` | `chat.set_terminator(Terminator::bytes("\r\n"))` / `Terminator::Count(n)` |
//! | `collect_incoming_data(self, data)` | `collect_incoming_data(&mut self, data)` |
//! | `found_terminator(self)` | `found_terminator(&mut self, chat, ctx)` |
//! | `self.get_terminator()` | `chat.terminator()` |
//! | `self.push(b'..')` / `self.close_when_done()` | `chat.push(b"..")` / `chat.close_when_done()` |
//! | `push` in `__init__` | `on_start` |
//! | `class EchoServer(asyncore.dispatcher)` with `create_socket`, `set_reuse_addr`, `bind`, `listen` | `mio::net::TcpListener::bind` (sets `SO_REUSEADDR`) in an `Acceptor` |
//! | `handle_accepted(self, sock, addr)` | the `Acceptor`'s closure: `ctx.spawn(ChatDispatcher::new(stream, EchoChannel::new()))` |
//! | `asyncore.loop()` | `reactor.run()` |
//!
//! The Rust version also bounds a line (the Python one grows its buffer without limit).
//!
//! `cargo run --example echo_line_protocol` runs a scripted session and prints it;
//! `cargo run --example echo_line_protocol -- serve [port]` listens on 127.0.0.1 (default 8026).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use smtpd::chat::{ChatCtl, ChatDispatcher, ChatHandler, Terminator};
use smtpd::reactor::{Acceptor, AcceptorOptions, Ctx, Reactor};
use smtpd::testing::ClientThread;

/// Longest line or blob kept (every buffer has a bound).
const MAX_UNIT: usize = 64 * 1024;

/// `class EchoChannel(asynchat.async_chat)`.
#[derive(Default)]
pub struct EchoChannel {
    buffer: Vec<u8>,
}

impl ChatHandler for EchoChannel {
    fn on_start(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        chat.set_terminator(Terminator::bytes("\r\n"));
        chat.push(b"+OK echo ready\r\n");
    }

    fn collect_incoming_data(&mut self, data: &[u8]) {
        let room = MAX_UNIT.saturating_sub(self.buffer.len());
        self.buffer.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn found_terminator(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {
        let line = std::mem::take(&mut self.buffer);
        let upper = line.to_ascii_uppercase();
        if let Terminator::Count(_) = chat.terminator() {
            // The end of a counted read.
            chat.push(format!("+OK got {} bytes\r\n", line.len()).as_bytes());
            chat.set_terminator(Terminator::bytes("\r\n"));
        } else if upper == b"QUIT" {
            chat.push(b"+OK bye\r\n");
            chat.close_when_done();
        } else if let Some(n) = upper.strip_prefix(b"BLOB ") {
            let n = std::str::from_utf8(n)
                .ok()
                .and_then(|n| n.trim().parse::<usize>().ok())
                .filter(|&n| n > 0 && n <= MAX_UNIT);
            match n {
                Some(n) => chat.set_terminator(Terminator::Count(n)),
                None => chat.push(b"-ERR bad length\r\n"),
            }
        } else {
            let mut reply = upper;
            reply.extend_from_slice(b"\r\n");
            chat.push(&reply);
        }
    }
}

/// `EchoServer(addr)`: a listening socket whose connections each get an `EchoChannel`.
pub fn serve(reactor: &mut Reactor, addr: SocketAddr) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    reactor.add(Acceptor::new(
        listener,
        AcceptorOptions::default(),
        |stream: TcpStream, _peer, ctx: &mut Ctx<'_>| {
            // handle_accepted(sock, addr): EchoChannel(sock)
            ctx.spawn(ChatDispatcher::new(stream, EchoChannel::default()));
        },
    ))?;
    Ok(local)
}

/// The scripted session, as a client sends it (also used against the Python original).
pub const SCRIPT: &[u8] = b"hello\r\nBLOB 6\r\nab\r\ncd\r\n\r\nBlob x\r\nmixed Case\r\nquit\r\n";

/// Sends [`SCRIPT`] to `addr` in small pieces and returns everything the server sent until
/// it closed.
pub fn run_script(addr: SocketAddr) -> io::Result<String> {
    let mut s = StdTcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut greeting = String::new();
    reader.read_line(&mut greeting)?;
    for piece in SCRIPT.chunks(5) {
        s.write_all(piece)?;
        thread::sleep(Duration::from_millis(2));
    }
    let mut rest = String::new();
    reader.read_to_string(&mut rest)?;
    Ok(greeting + &rest)
}

/// Serves one scripted session on a free port; returns what the client received.
pub fn demo(limit: Duration) -> io::Result<String> {
    let mut reactor = Reactor::new()?;
    let addr = serve(&mut reactor, "127.0.0.1:0".parse().unwrap())?;
    // On its own thread; it wakes the reactor when it is done (a thread's end is no event).
    let client = ClientThread::spawn(&reactor, move || run_script(addr));
    reactor.run_until(Instant::now() + limit, |_| client.is_done())?;
    client.join()
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("serve") {
        let port = args.next().and_then(|p| p.parse().ok()).unwrap_or(8026);
        let mut reactor = Reactor::new()?;
        let addr = serve(&mut reactor, SocketAddr::from(([127, 0, 0, 1], port)))?;
        println!("echo server on {addr}");
        return reactor.run(); // asyncore.loop()
    }
    print!("{}", demo(Duration::from_secs(20))?);
    Ok(())
}
