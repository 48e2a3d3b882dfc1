//! Driving the loop, way 1 of 3: `run()` on a thread of its own, stopped from outside.
//!
//! The reactor is `!Send` (like asyncore, everything in it runs on one thread), so it is built
//! *on* its thread; only `Send` handles come back: the address, a `StopHandle` and a
//! `RemoteHandle`. Run it with `cargo run --example run_in_thread`.
//!
//! For an SMTP server alone, `smtpd::server::spawn(addr, options, factory)` does all of this in
//! one call (aiosmtpd's `Controller`): it returns a `ServerHandle` with `local_addr()`,
//! `shutdown(grace)` and `join()`. This example shows what it does, for a reactor that runs
//! more than one listener or dispatchers of your own.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use smtpd::reactor::{Handle, Reactor, RemoteHandle, StopHandle};
use smtpd::server::{Listener, Message, Outcome, ServerCtx, ServerOptions, Shutdown, SmtpServer};
use smtpd::testing::Client;

/// The server object: hands each message to the rest of the program over a channel.
struct Forward(mpsc::Sender<Message>);

impl SmtpServer for Forward {
    fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.0.send(m.clone());
        Outcome::Accept
    }
}

/// Everything the rest of the program keeps of the server thread.
pub struct Background {
    pub addr: SocketAddr,
    pub listener: Handle,
    pub stop: StopHandle,
    pub remote: RemoteHandle,
    pub inbox: mpsc::Receiver<Message>,
    pub thread: thread::JoinHandle<io::Result<()>>,
}

/// Starts a reactor with one SMTP listener on its own thread.
pub fn start() -> io::Result<Background> {
    let (mail_tx, inbox) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        // Built here, on the thread that runs it.
        let mut reactor = Reactor::new()?;
        let server = Rc::new(RefCell::new(Forward(mail_tx)));
        let mut options = ServerOptions::default();
        options.session.hostname = "run-in-thread.example".into();
        let addr = "127.0.0.1:0".parse().unwrap(); // port 0: any free port
        let listener = Listener::bind(&mut reactor, addr, server, options)?;
        // Hand the Send parts back, then loop until stopped (or until nothing is left).
        let _ = ready_tx.send((
            listener.local_addr(),
            listener.handle(),
            reactor.stop_handle(),
            reactor.remote(),
        ));
        reactor.run()
    });
    let Ok((addr, listener, stop, remote)) = ready_rx.recv() else {
        // The thread ended before it was ready: its result says why.
        return Err(thread.join().unwrap().unwrap_err());
    };
    Ok(Background {
        addr,
        listener,
        stop,
        remote,
        inbox,
        thread,
    })
}

/// Sends two messages to a server on its own thread and stops it: gracefully (a `Shutdown`
/// through the remote handle: transactions in flight finish, `run()` returns once every
/// connection is closed) or at once (the `StopHandle`, asyncore's `ExitNow`). Returns what the
/// server received.
pub fn demo(graceful: bool) -> io::Result<Vec<Message>> {
    let server = start()?;
    // The rest of the program goes on meanwhile; here it sends mail.
    let mut client = Client::connect(server.addr)?;
    client.ehlo("main-thread.example")?;
    for n in 1..=2 {
        let body = format!("Subject: message {n}\r\n\r\nsent from the main thread\r\n");
        let reply = client.send_mail("me@example.com", &["you@example.com"], body.as_bytes())?;
        println!("message {n}: {reply}");
    }
    let received: Vec<Message> = (0..2)
        .filter_map(|_| server.inbox.recv_timeout(Duration::from_secs(5)).ok())
        .collect();
    if graceful {
        // The client is still connected and idle: it gets 421 and the listener closes.
        let grace = Duration::from_secs(5);
        server.remote.notify(server.listener, Shutdown::new(grace));
    } else {
        // From any thread, e.g. a signal handler thread: run() returns after this tick.
        server.stop.stop();
    }
    server.thread.join().expect("server thread panicked")?;
    println!("server thread finished; {} messages", received.len());
    Ok(received)
}

fn main() -> io::Result<()> {
    for m in demo(true)? {
        println!(
            "{} -> {:?}: {} bytes",
            m.mail_from,
            m.rcpt_tos,
            m.data.len()
        );
    }
    Ok(())
}
