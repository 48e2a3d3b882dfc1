//! A production server in the background (`server::spawn` and its `ServerHandle`), and a
//! listener's graceful shutdown in a loop that runs other dispatchers too
//! (`Listener::shutdown`, `Listener::is_shut_down`). Loopback only.
#![cfg(feature = "testing")]

use std::cell::{Cell, RefCell};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use mio::event::Source;
use smtpd::reactor::{Dispatcher, Reactor};
use smtpd::server::{
    self, AddressRequest, Listener, Message, Outcome, Reply, ServerCtx, ServerOptions, SmtpServer,
};
use smtpd::testing::{Client, ClientThread, TEST_HOSTNAME};

const LIMIT: Duration = Duration::from_secs(10);

fn options() -> ServerOptions {
    let mut options = ServerOptions::default();
    options.session.hostname = TEST_HOSTNAME.into();
    options
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Hands every message to the test over a channel.
struct Forward(mpsc::Sender<Message>);

impl SmtpServer for Forward {
    fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.0.send(m.clone());
        Outcome::Accept
    }
}

fn spawn_forwarding() -> (server::ServerHandle, mpsc::Receiver<Message>) {
    let (tx, rx) = mpsc::channel();
    let handle = server::spawn(loopback(), options(), move || {
        Rc::new(RefCell::new(Forward(tx)))
    })
    .unwrap();
    (handle, rx)
}

/// Whether a new connection to `addr` is refused (the listening socket is closed).
fn refuses_connections(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

/// Waits (10 ms steps, bounded) until `addr` refuses connections.
fn wait_until_refused(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if refuses_connections(addr) {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Starts a transaction and sends part of its body (no final dot).
fn begin_transaction(client: &mut Client) {
    client.ehlo("client.example").unwrap();
    assert_eq!(
        client.command("MAIL FROM:<a@example.org>").unwrap().code,
        250
    );
    assert_eq!(client.command("RCPT TO:<b@example.org>").unwrap().code, 250);
    assert_eq!(client.command("DATA").unwrap().code, 354);
    client
        .send_raw(b"Subject: in flight\r\n\r\nfirst half\r\n")
        .unwrap();
}

#[test]
fn a_spawned_server_delivers_a_message_and_shuts_down() {
    let (server, inbox) = spawn_forwarding();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let mut client = Client::connect(addr).unwrap();
    assert!(client.greeting().lines[0].starts_with(TEST_HOSTNAME));
    client.ehlo("client.example").unwrap();
    let reply = client
        .send_mail(
            "a@example.org",
            &["b@example.org"],
            b"Subject: hi\r\n\r\nhello",
        )
        .unwrap();
    assert_eq!(reply, Reply::ok());
    let message = inbox.recv_timeout(LIMIT).expect("no message");
    assert_eq!(message.rcpt_tos, ["b@example.org"]);
    assert_eq!(message.data, b"Subject: hi\r\n\r\nhello");
    assert_eq!(client.quit().unwrap().code, 221);
    let started = Instant::now();
    server.shutdown(Duration::from_secs(5)).unwrap();
    // Nothing was in flight: no need to wait for the grace.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(refuses_connections(addr));
}

#[test]
fn shutdown_lets_a_transaction_in_flight_finish_within_the_grace() {
    let (server, inbox) = spawn_forwarding();
    let addr = server.local_addr();
    let mut client = Client::connect(addr).unwrap();
    begin_transaction(&mut client);
    let idle = Client::connect(addr).unwrap();
    // Start the shutdown without waiting, and see the listener close.
    server.shutdown_trigger().shutdown(Duration::from_secs(5));
    assert!(wait_until_refused(addr), "the listener still accepts");
    let mut idle = idle;
    assert_eq!(idle.read_reply().unwrap().code, 421); // idle: closed at once
                                                      // The transaction in flight goes on, gets its real answer, then 421.
    let waiting = thread::spawn(move || {
        let started = Instant::now();
        let result = server.shutdown(Duration::from_secs(5));
        (result, started.elapsed())
    });
    thread::sleep(Duration::from_millis(100));
    client.send_raw(b"second half\r\n.\r\n").unwrap();
    assert_eq!(client.read_reply().unwrap(), Reply::ok());
    let closing = client.read_reply().unwrap();
    assert_eq!(closing.code, 421, "{closing}");
    assert!(client.read_reply().is_err()); // closed
    let message = inbox
        .recv_timeout(LIMIT)
        .expect("the message in flight was lost");
    assert_eq!(
        message.data,
        b"Subject: in flight\r\n\r\nfirst half\r\nsecond half"
    );
    let (result, took) = waiting.join().unwrap();
    result.unwrap();
    assert!(took < Duration::from_secs(5), "shutdown waited {took:?}");
}

#[test]
fn a_transaction_that_outlasts_the_grace_gets_421() {
    let (server, inbox) = spawn_forwarding();
    let mut client = Client::connect(server.local_addr()).unwrap();
    begin_transaction(&mut client);
    let started = Instant::now();
    server.shutdown(Duration::from_millis(300)).unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_millis(300) + server::SHUTDOWN_MARGIN,
        "{took:?}"
    );
    assert_eq!(client.read_reply().unwrap().code, 421);
    assert!(inbox.try_recv().is_err(), "no message was complete");
}

#[test]
fn a_bind_error_comes_back_from_spawn() {
    let taken = std::net::TcpListener::bind(loopback()).unwrap();
    let err = server::spawn(taken.local_addr().unwrap(), options(), || {
        Rc::new(RefCell::new(Forward(mpsc::channel().0)))
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    // Inconsistent options are refused the same way.
    let mut bad = options();
    bad.session.decode_data = true;
    bad.session.enable_smtputf8 = true;
    let err = server::spawn(loopback(), bad, || {
        Rc::new(RefCell::new(Forward(mpsc::channel().0)))
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn a_panicking_factory_is_an_error_of_spawn() {
    let err = server::spawn(loopback(), options(), || -> Rc<RefCell<Forward>> {
        panic!("no backend today")
    })
    .unwrap_err();
    assert!(err.to_string().contains("factory panicked"), "{err}");
}

#[test]
fn dropping_the_handle_shuts_the_server_down() {
    let (server, _inbox) = spawn_forwarding();
    let addr = server.local_addr();
    let mut client = Client::connect(addr).unwrap();
    client.ehlo("client.example").unwrap();
    drop(server);
    // The drop waited for the thread: the listener is gone and the client was told.
    assert!(refuses_connections(addr));
    assert_eq!(client.read_reply().unwrap().code, 421);
}

#[test]
fn join_returns_after_a_trigger_from_another_thread() {
    let (server, _inbox) = spawn_forwarding();
    let trigger = server.shutdown_trigger();
    let addr = server.local_addr();
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        trigger.shutdown(Duration::from_secs(1));
    });
    let started = Instant::now();
    server.join().unwrap();
    assert!(started.elapsed() < LIMIT);
    assert!(refuses_connections(addr));
}

// ---- Listener::shutdown in a loop with other dispatchers ----

/// A dispatcher that never ends: with it in the loop, `run()` would not return.
struct Forever;

impl Dispatcher for Forever {
    fn source(&mut self) -> Option<&mut dyn Source> {
        None
    }
}

/// Counts accepted recipients, so the test knows when the transaction is in flight.
struct Counting {
    rcpts: Rc<Cell<usize>>,
}

impl SmtpServer for Counting {
    fn on_rcpt(&mut self, _request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.rcpts.set(self.rcpts.get() + 1);
        Outcome::Accept
    }

    fn process_message(&mut self, _m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Reply(Reply::new(250, "2.0.0 kept"))
    }
}

#[test]
fn listener_shutdown_signals_completion_while_other_dispatchers_run() {
    let mut reactor = Reactor::new().unwrap();
    let forever = reactor.add(Forever).unwrap();
    let rcpts = Rc::new(Cell::new(0));
    let server = Rc::new(RefCell::new(Counting {
        rcpts: rcpts.clone(),
    }));
    let listener = Listener::bind(&mut reactor, loopback(), server, options()).unwrap();
    let addr = listener.local_addr();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let client = ClientThread::spawn(&reactor, move || {
        let mut c = Client::connect(addr).unwrap();
        c.ehlo("client.example").unwrap();
        c.command("MAIL FROM:<a@example.org>").unwrap();
        c.command("RCPT TO:<b@example.org>").unwrap();
        go_rx.recv().unwrap();
        let data = c.command("DATA").unwrap();
        c.send_raw(b"Subject: late\r\n\r\nbody\r\n.\r\n").unwrap();
        let verdict = c.read_reply().unwrap();
        let closing = c.read_reply().unwrap();
        (data.code, verdict, closing.code)
    });
    let deadline = Instant::now() + LIMIT;
    assert!(reactor.run_until(deadline, |_| rcpts.get() == 1).unwrap());
    assert!(listener.is_listening());
    assert!(!listener.is_shut_down());

    listener.shutdown(&mut reactor, Duration::from_secs(5));
    assert!(reactor
        .run_until(deadline, |_| !listener.is_listening())
        .unwrap());
    // Not accepting any more, but the transaction goes on.
    assert!(!listener.is_shut_down());
    assert_eq!(listener.connection_count(), 1);
    go_tx.send(()).unwrap();
    assert!(
        reactor
            .run_until(deadline, |_| listener.is_shut_down())
            .unwrap(),
        "the listener's connections did not end"
    );
    assert_eq!(listener.connection_count(), 0);
    // The other dispatcher is untouched: only it is left.
    assert!(reactor.contains(forever));
    assert_eq!(reactor.len(), 1);
    // Asking again does nothing.
    listener.shutdown(&mut reactor, Duration::from_secs(5));
    assert!(reactor.run_until(deadline, |_| client.is_done()).unwrap());
    let (data, verdict, closing) = client.join();
    assert_eq!(data, 354);
    assert_eq!(verdict, Reply::new(250, "2.0.0 kept"));
    assert_eq!(closing, 421);
    assert_eq!(reactor.len(), 1);
}

#[test]
fn a_listener_without_connections_is_shut_down_after_one_tick() {
    let mut reactor = Reactor::new().unwrap();
    reactor.add(Forever).unwrap();
    let server = Rc::new(RefCell::new(Counting {
        rcpts: Rc::new(Cell::new(0)),
    }));
    let listener = Listener::bind(&mut reactor, loopback(), server, options()).unwrap();
    listener.shutdown(&mut reactor, Duration::from_secs(5));
    assert!(!listener.is_shut_down()); // the notification is delivered by the next tick
    reactor.poll_once(Some(Duration::ZERO)).unwrap();
    assert!(listener.is_shut_down());
    assert!(refuses_connections(listener.local_addr()));
}

#[test]
fn dropping_a_listener_value_stops_nothing() {
    let mut reactor = Reactor::new().unwrap();
    let server = Rc::new(RefCell::new(Counting {
        rcpts: Rc::new(Cell::new(0)),
    }));
    let listener = Listener::bind(&mut reactor, loopback(), server, options()).unwrap();
    let addr = listener.local_addr();
    let handle = listener.handle();
    drop(listener);
    assert!(reactor.contains(handle));
    let client = ClientThread::spawn(&reactor, move || {
        Client::connect(addr).map(|c| c.greeting().code).unwrap()
    });
    assert!(reactor
        .run_until(Instant::now() + LIMIT, |_| client.is_done())
        .unwrap());
    assert_eq!(client.join(), 220);
}
