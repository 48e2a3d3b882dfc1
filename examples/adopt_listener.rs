//! Serving SMTP on a listening socket someone else opened: systemd socket activation, inetd's
//! `wait` mode, a parent process, a test harness, or a socket bound with options
//! `Listener::bind` does not set.
//!
//! The route is always the same: a `std::net::TcpListener` → non-blocking →
//! `mio::net::TcpListener::from_std` → `Listener::adopt`. Under systemd,
//! `smtpd::reactor::listen_fds()` names the inherited descriptors; turning a descriptor number
//! into a socket is the one `unsafe` line (the crate itself forbids `unsafe`).
//!
//! `cargo run --example adopt_listener` opens its own std listener and delivers one scripted
//! message. Under `systemd-socket-activate -l 127.0.0.1:8025 target/debug/examples/adopt_listener`
//! it serves the inherited socket until stopped.

use std::cell::RefCell;
use std::io;
use std::os::fd::FromRawFd;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use smtpd::reactor::Reactor;
use smtpd::server::{Listener, Message, Outcome, ServerCtx, ServerOptions, SmtpServer};
use smtpd::testing::{Client, ClientThread};

struct Forward(mpsc::Sender<Message>);

impl SmtpServer for Forward {
    fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.0.send(m.clone());
        Outcome::Accept
    }
}

/// Serves SMTP on an already listening std socket.
pub fn adopt(
    reactor: &mut Reactor,
    std_listener: std::net::TcpListener,
    inbox: mpsc::Sender<Message>,
) -> io::Result<Listener> {
    // mio needs the socket non-blocking; from_std does not change it.
    std_listener.set_nonblocking(true)?;
    let listener = mio::net::TcpListener::from_std(std_listener);
    let mut options = ServerOptions::default();
    options.session.hostname = "adopted.example".into();
    Listener::adopt(
        reactor,
        listener,
        Rc::new(RefCell::new(Forward(inbox))),
        options,
    )
}

/// Opens a std listener "elsewhere", adopts it and receives one message through it.
pub fn demo(limit: Duration) -> io::Result<Vec<Message>> {
    // Made by someone else: here by us, with the standard library.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = std_listener.local_addr()?;
    let mut reactor = Reactor::new()?;
    let (tx, rx) = mpsc::channel();
    let listener = adopt(&mut reactor, std_listener, tx)?;
    assert_eq!(listener.local_addr(), addr);
    // On its own thread; it wakes the reactor when it is done (a thread's end is no event).
    let client = ClientThread::spawn(&reactor, move || {
        (|| -> io::Result<String> {
            let mut c = Client::connect(addr)?;
            c.ehlo("client.example")?;
            let reply = c.send_mail("a@example.com", &["b@example.com"], b"adopted")?;
            c.quit()?;
            Ok(reply.to_string())
        })()
    });
    reactor.run_until(Instant::now() + limit, |_| client.is_done())?;
    println!("reply: {}", client.join()?);
    Ok(rx.try_iter().collect())
}

fn main() -> io::Result<()> {
    let fds = smtpd::reactor::listen_fds();
    if fds.is_empty() {
        let messages = demo(Duration::from_secs(20))?;
        println!(
            "received {} message(s) on an adopted socket",
            messages.len()
        );
        return Ok(());
    }
    let mut reactor = Reactor::new()?;
    let (tx, rx) = mpsc::channel::<Message>();
    thread::spawn(move || {
        for m in rx {
            println!(
                "{} -> {:?}: {} bytes",
                m.mail_from,
                m.rcpt_tos,
                m.data.len()
            );
            // Runs without a terminal under a service manager: flush each line.
            let _ = io::Write::flush(&mut io::stdout());
        }
    });
    for fd in fds {
        // SAFETY: systemd passed this descriptor to us, and it is taken exactly once.
        let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        let listener = adopt(&mut reactor, std_listener, tx.clone())?;
        println!(
            "serving inherited descriptor {fd} on {}",
            listener.local_addr()
        );
    }
    reactor.run()
}
