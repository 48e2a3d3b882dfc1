//! A worked port: an `smtpd.SMTPServer` subclass (Python, `examples/python/custom_server.py`)
//! as an `SmtpServer` (Rust). Line by line:
//!
//! | Python | Rust |
//! |---|---|
//! | `class Inbox(smtpd.SMTPServer)` | `struct Inbox` + `impl SmtpServer for Inbox` |
//! | `super().__init__(localaddr, None, data_size_limit=1_000_000)` | `Listener::bind(&mut reactor, addr, server, options)` with `options.session.data_size_limit` |
//! | `process_message(self, peer, mailfrom, rcpttos, data, **kwargs)` | `process_message(&mut self, m: &Message, cx)`: `m.peer`, `m.mail_from`, `m.rcpt_tos`, `m.data`, `m.mail_options`, `m.rcpt_options` |
//! | `return '550 ...'` | `Outcome::Reply(Reply::new(550, ".."))` (or `Outcome::from_python(Some("550 .."))`) |
//! | `return None` | `Outcome::Accept` |
//! | `asyncore.loop()` | `reactor.run()` |
//!
//! One difference to know: `data` is the message as received, with CRLF line ends; CPython
//! joined lines with `\n` (set `options.session.lf_newlines` for that).
//!
//! `cargo run --example custom_server` delivers two scripted messages and prints the
//! mailboxes; `cargo run --example custom_server -- serve` listens on 127.0.0.1:8025.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use smtpd::reactor::Reactor;
use smtpd::server::{Listener, Message, Outcome, Reply, ServerCtx, ServerOptions, SmtpServer};
use smtpd::testing::{Client, ClientThread};

/// Recipient → messages.
pub type Mailboxes = BTreeMap<String, Vec<Vec<u8>>>;

/// `class Inbox(smtpd.SMTPServer)`: the server's own state lives in the struct.
pub struct Inbox {
    domain: String,
    /// Recipient → messages (`self.mailboxes`).
    pub mailboxes: Mailboxes,
}

impl SmtpServer for Inbox {
    fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let suffix = format!("@{}", self.domain);
        for rcpt in &m.rcpt_tos {
            if !rcpt.to_lowercase().ends_with(&suffix) {
                return Outcome::Reply(Reply::new(550, "not relaying to that domain"));
            }
        }
        for rcpt in &m.rcpt_tos {
            self.mailboxes
                .entry(rcpt.to_lowercase())
                .or_default()
                .push(m.data.clone());
        }
        println!(
            "{}: {} bytes from {} to {:?}",
            m.peer.ip(),
            m.data.len(),
            m.mail_from,
            m.rcpt_tos
        );
        Outcome::Accept // return None
    }
}

/// `Inbox(('127.0.0.1', port), 'example.org')`: binds and adds the server to `reactor`.
pub fn serve(
    reactor: &mut Reactor,
    addr: SocketAddr,
    domain: &str,
) -> io::Result<(Rc<RefCell<Inbox>>, SocketAddr)> {
    let inbox = Rc::new(RefCell::new(Inbox {
        domain: domain.into(),
        mailboxes: BTreeMap::new(),
    }));
    let mut options = ServerOptions::default();
    options.session.data_size_limit = 1_000_000;
    let listener = Listener::bind(reactor, addr, inbox.clone(), options)?;
    Ok((inbox, listener.local_addr()))
}

/// Sends one message the inbox takes and one it refuses; returns the replies and the
/// mailboxes.
pub fn demo(limit: Duration) -> io::Result<(Vec<String>, Mailboxes)> {
    let mut reactor = Reactor::new()?;
    let (inbox, addr) = serve(&mut reactor, "127.0.0.1:0".parse().unwrap(), "example.org")?;
    // On its own thread; it wakes the reactor when it is done (a thread's end is no event).
    let client = ClientThread::spawn(&reactor, move || {
        (|| -> io::Result<Vec<String>> {
            let mut c = Client::connect(addr)?;
            c.ehlo("client.example")?;
            let to_us = c.send_mail(
                "a@elsewhere.net",
                &["Bob@Example.org"],
                b"Subject: 1\r\n\r\nhi",
            )?;
            let relay = c.send_mail("a@elsewhere.net", &["eve@elsewhere.net"], b"Subject: 2")?;
            c.quit()?;
            Ok(vec![to_us.to_string(), relay.to_string()])
        })()
    });
    reactor.run_until(Instant::now() + limit, |_| client.is_done())?;
    let replies = client.join()?;
    let mailboxes = inbox.borrow().mailboxes.clone();
    Ok((replies, mailboxes))
}

fn main() -> io::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        let mut reactor = Reactor::new()?;
        let (_inbox, addr) = serve(
            &mut reactor,
            "127.0.0.1:8025".parse().unwrap(),
            "example.org",
        )?;
        println!("accepting mail for example.org on {addr}");
        return reactor.run(); // asyncore.loop()
    }
    let (replies, mailboxes) = demo(Duration::from_secs(20))?;
    println!("replies: {replies:?}");
    for (rcpt, messages) in mailboxes {
        println!("{rcpt}: {} message(s)", messages.len());
    }
    Ok(())
}
