//! A custom server's hooks unit-tested through the real dialogue without a socket:
//! `testing::SessionDriver::with_server` frames the bytes with the channel's receiver and asks
//! the server's session, with a detached context; deferred tickets are completed from other
//! threads. The last test checks that the driver answers what a real listener answers.
#![cfg(feature = "testing")]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use smtpd::server::{
    AddressRequest, Backend, CommandRequest, HeloRequest, Message, Outcome, Peer, Reply, ServerCtx,
    ServerOptions, SmtpServer, SmtpSession, Ticket,
};
use smtpd::smtp::Config;
use smtpd::testing::{Client, SessionDriver, TestServer, TEST_HOSTNAME};

const WAIT: Duration = Duration::from_secs(5);

fn config() -> Config {
    let mut options = ServerOptions::default();
    options.session.hostname = TEST_HOSTNAME.into();
    options.session
}

fn codes(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.code).collect()
}

/// What the sessions of [`Directory`] saw, shared with the test.
#[derive(Debug, Default)]
struct Log {
    events: Vec<String>,
}

/// A backend whose sessions refuse a blocked domain, look recipients up on a worker thread
/// (deferred), take two messages per connection and log their resets and disconnects.
struct Directory {
    log: Rc<RefCell<Log>>,
    /// Where deferred lookups go; `None`: answered by a thread of the session itself.
    lookups: Option<mpsc::Sender<(String, Ticket)>>,
}

impl Backend for Directory {
    fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession> {
        self.log
            .borrow_mut()
            .events
            .push(format!("open {}", peer.addr));
        Box::new(DirectorySession {
            log: self.log.clone(),
            lookups: self.lookups.clone(),
            delivered: 0,
        })
    }

    fn commands(&self) -> Vec<String> {
        vec!["XCOUNT".into()]
    }

    fn ehlo_keywords(&self, keywords: &mut Vec<String>) {
        keywords.retain(|k| k != "HELP");
        keywords.push("PIPELINING".into());
    }
}

struct DirectorySession {
    log: Rc<RefCell<Log>>,
    lookups: Option<mpsc::Sender<(String, Ticket)>>,
    delivered: usize,
}

impl DirectorySession {
    fn event(&self, event: String) {
        self.log.borrow_mut().events.push(event);
    }
}

impl SmtpSession for DirectorySession {
    fn on_helo(&mut self, request: &HeloRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.event(format!("helo {}", request.name));
        Outcome::Accept
    }

    fn on_mail(&mut self, request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.event(format!(
            "mail {} helo={:?} options={:?}",
            request.address, request.helo, request.options
        ));
        if request.address.ends_with("@spam.example") {
            return Outcome::Reply(Reply::new(550, "5.7.1 Sender blocked"));
        }
        Outcome::Accept
    }

    fn on_rcpt(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.event(format!(
            "rcpt {} from={} before={:?}",
            request.address, request.mail_from, request.rcpt_tos
        ));
        assert!(cx.is_detached() && cx.try_ctx().is_none());
        let ticket = cx.defer();
        let deferred = Outcome::deferred(&ticket);
        let address = request.address.to_string();
        match &self.lookups {
            Some(lookups) => lookups.send((address, ticket)).unwrap(),
            None => {
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(10));
                    if address.starts_with("nobody@") {
                        ticket.complete(Reply::new(550, "5.1.1 No such user"));
                    } else {
                        ticket.accept();
                    }
                });
            }
        }
        deferred
    }

    fn on_command(&mut self, request: &CommandRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Reply(Reply::new(
            250,
            format!("{} {}: {}", request.verb, request.arg, self.delivered),
        ))
    }

    fn process_message(&mut self, message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.event(format!("message to {:?}", message.rcpt_tos));
        if self.delivered == 2 {
            return Outcome::Reply(Reply::new(452, "4.3.1 Two messages per connection"));
        }
        self.delivered += 1;
        Outcome::Reply(Reply::new(
            250,
            format!("2.0.0 queued as Q{}", self.delivered),
        ))
    }

    fn on_reset(&mut self, _cx: &mut ServerCtx<'_, '_>) {
        self.event("reset".into());
    }

    fn on_disconnect(&mut self, _cx: &mut ServerCtx<'_, '_>) {
        self.event("disconnect".into());
    }
}

fn directory(lookups: Option<mpsc::Sender<(String, Ticket)>>) -> (Directory, Rc<RefCell<Log>>) {
    let log = Rc::new(RefCell::new(Log::default()));
    (
        Directory {
            log: log.clone(),
            lookups,
        },
        log,
    )
}

#[test]
fn the_hooks_decide_the_dialogue_and_deferred_lookups_hold_pipelined_input() {
    let (backend, log) = directory(None);
    let peer: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    let mut d = SessionDriver::with_server_from(backend, config(), peer);
    assert_eq!(d.replies()[0].code, 220);
    // The backend's EHLO keywords are announced.
    let ehlo = d.command("EHLO client.example").unwrap().clone();
    assert!(ehlo.lines.contains(&"PIPELINING".to_string()), "{ehlo:?}");
    assert!(!ehlo.lines.contains(&"HELP".to_string()), "{ehlo:?}");
    assert_eq!(
        d.command("MAIL FROM:<x@spam.example>").unwrap(),
        &Reply::new(550, "5.7.1 Sender blocked")
    );
    // A pipelined transaction: the first RCPT defers, everything after it waits.
    let before = d.replies().len();
    d.feed(
        b"MAIL FROM:<a@example.org> SIZE=100\r\nRCPT TO:<b@example.org>\r\n\
          RCPT TO:<nobody@example.org>\r\nDATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n",
    );
    assert!(d.is_waiting());
    assert_eq!(codes(&d.replies()[before..]), [250]); // MAIL only
    assert!(d.wait_for_answers(WAIT), "the lookups did not answer");
    assert_eq!(codes(&d.replies()[before..]), [250, 250, 550, 354, 250]);
    assert_eq!(
        d.last_reply().unwrap().to_string(),
        "250 2.0.0 queued as Q1"
    );
    assert_eq!(d.messages().len(), 1);
    assert_eq!(d.messages()[0].rcpt_tos, ["b@example.org"]);
    assert_eq!(d.messages()[0].peer, peer);
    // A verb of Backend::commands reaches on_command.
    assert_eq!(
        d.command("XCOUNT now").unwrap().to_string(),
        "250 XCOUNT now: 1"
    );
    // An abandoned transaction resets; QUIT disconnects and drops the session.
    d.feed(b"MAIL FROM:<a@example.org>\r\nRSET\r\nQUIT\r\n");
    assert!(d.is_closed());
    assert_eq!(d.last_reply().unwrap().code, 221);
    let events = log.borrow().events.clone();
    assert_eq!(
        events,
        [
            format!("open {peer}"),
            "helo client.example".to_string(),
            "mail x@spam.example helo=Some(\"client.example\") options=[]".into(),
            "mail a@example.org helo=Some(\"client.example\") options=[\"SIZE=100\"]".into(),
            "rcpt b@example.org from=a@example.org before=[]".into(),
            "rcpt nobody@example.org from=a@example.org before=[\"b@example.org\"]".into(),
            "message to [\"b@example.org\"]".into(),
            "mail a@example.org helo=Some(\"client.example\") options=[]".into(),
            "reset".into(),
            "disconnect".into(),
        ]
    );
}

#[test]
fn the_test_completes_tickets_from_its_own_threads() {
    let (tx, lookups) = mpsc::channel();
    let (backend, _log) = directory(Some(tx));
    let mut d = SessionDriver::with_server(backend, config());
    d.feed(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n");
    assert!(d.is_waiting());
    // Nothing comes by itself: the wait times out and the dialogue stays where it is.
    assert!(!d.wait_for_answers(Duration::from_millis(20)));
    let (address, ticket) = lookups.try_recv().unwrap();
    assert_eq!(address, "b@example.org");
    thread::spawn(move || ticket.complete(Reply::new(250, "2.1.5 found")))
        .join()
        .unwrap();
    assert!(d.wait_for_answers(WAIT));
    assert_eq!(d.last_reply().unwrap().to_string(), "250 2.1.5 found");
    assert!(!d.is_waiting());

    // A ticket dropped unanswered answers 451.
    d.command("RCPT TO:<c@example.org>");
    let (_, ticket) = lookups.try_recv().unwrap();
    thread::spawn(move || drop(ticket)).join().unwrap();
    assert!(d.wait_for_answers(WAIT));
    assert_eq!(d.last_reply().unwrap().code, 451);

    // The deadline answers 451; the ticket's late answer is ignored.
    assert!(d.command("RCPT TO:<d@example.org>").is_none());
    let (_, late) = lookups.try_recv().unwrap();
    assert!(d.expire_deferral());
    assert_eq!(d.last_reply().unwrap().code, 451);
    late.accept();
    assert!(d.wait_for_answers(WAIT));
    assert_eq!(d.last_reply().unwrap().code, 451);
    assert!(!d.expire_deferral());
    // The transaction goes on with the one recipient accepted.
    assert_eq!(d.command("DATA").unwrap().code, 354);
    assert_eq!(
        d.command("hi\r\n.").unwrap().to_string(),
        "250 2.0.0 queued as Q1"
    );
}

/// Decides the greeting on a worker thread; its deferral misuse is answered `451`.
struct Gate {
    refuse: bool,
    events: Rc<RefCell<Vec<&'static str>>>,
    stale: Option<Ticket>,
}

impl SmtpSession for Gate {
    fn on_connect(&mut self, _peer: &Peer, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let ticket = cx.defer();
        let deferred = Outcome::deferred(&ticket);
        let refuse = self.refuse;
        thread::spawn(move || {
            if refuse {
                ticket.complete(Reply::new(554, "5.7.1 No service for you"));
            } else {
                ticket.accept(); // greets with the default line
            }
        });
        deferred
    }

    fn on_helo(&mut self, _request: &HeloRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        // Keeps this call's ticket and returns the deferral of an older one: a mistake.
        let old = self.stale.replace(cx.defer());
        match old {
            Some(old) => Outcome::deferred(&old),
            None => Outcome::Accept,
        }
    }

    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    fn on_disconnect(&mut self, _cx: &mut ServerCtx<'_, '_>) {
        self.events.borrow_mut().push("disconnect");
    }
}

struct GateBackend(bool, Rc<RefCell<Vec<&'static str>>>);

impl Backend for GateBackend {
    fn open_session(&mut self, _peer: &Peer) -> Box<dyn SmtpSession> {
        Box::new(Gate {
            refuse: self.0,
            events: self.1.clone(),
            stale: None,
        })
    }
}

#[test]
fn a_deferred_connect_decides_the_greeting() {
    let events = Rc::new(RefCell::new(Vec::new()));
    let mut d = SessionDriver::with_server(GateBackend(false, events.clone()), config());
    assert!(d.replies().is_empty());
    // Input before the greeting waits for it.
    d.feed(b"HELO a\r\n");
    assert!(d.wait_for_answers(WAIT));
    assert_eq!(codes(d.replies()), [220, 250]);
    assert!(d.replies()[0].lines[0].starts_with(TEST_HOSTNAME));
    // The second HELO returns a deferral this call did not obtain: 451 at once.
    assert_eq!(d.command("HELO b").unwrap().code, 451);
    assert!(!d.is_waiting());
    d.disconnect();
    assert!(d.is_closed());
    assert_eq!(*events.borrow(), ["disconnect"]);
    d.disconnect(); // once only
    assert_eq!(events.borrow().len(), 1);

    let events = Rc::new(RefCell::new(Vec::new()));
    let mut d = SessionDriver::with_server(GateBackend(true, events.clone()), config());
    assert!(d.wait_for_answers(WAIT));
    assert_eq!(d.replies(), [Reply::new(554, "5.7.1 No service for you")]);
    assert!(d.is_closed());
    assert_eq!(*events.borrow(), ["disconnect"]);
    d.feed(b"HELO a\r\n"); // ignored after the close
    assert_eq!(d.replies().len(), 1);
}

/// A CPython-shaped server: one value, shared through `Rc<RefCell<..>>`.
#[derive(Default)]
struct Quota {
    messages: Vec<Message>,
}

impl SmtpServer for Quota {
    fn on_rcpt(&mut self, request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        if request.rcpt_tos.len() >= 2 {
            return Outcome::Reply(Reply::new(452, "4.5.3 Too many recipients"));
        }
        Outcome::Accept
    }

    fn process_message(&mut self, message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.messages.push(message.clone());
        Outcome::Accept
    }
}

#[test]
fn an_smtp_server_in_an_rc_is_driven_and_inspected() {
    let server = Rc::new(RefCell::new(Quota::default()));
    let mut d = SessionDriver::with_server(server.clone(), config());
    d.feed(b"EHLO c\r\nMAIL FROM:<>\r\n");
    for rcpt in ["a", "b", "c"] {
        d.command(&format!("RCPT TO:<{rcpt}@example.org>"));
    }
    assert_eq!(
        d.last_reply().unwrap().to_string(),
        "452 4.5.3 Too many recipients"
    );
    d.feed(b"DATA\r\n..dot\r\n.\r\n");
    assert_eq!(d.last_reply().unwrap(), &Reply::ok());
    let server = server.borrow();
    assert_eq!(server.messages.len(), 1);
    assert_eq!(server.messages[0].mail_from, "<>");
    assert_eq!(
        server.messages[0].rcpt_tos,
        ["a@example.org", "b@example.org"]
    );
    assert_eq!(server.messages[0].data, b".dot");
}

/// Sends `lines` one by one to a real listener serving `Quota` and to a driver of the same
/// server; both must give the same replies.
#[test]
fn the_driver_answers_what_a_listener_answers() {
    let lines = [
        "EHLO client.example",
        "RCPT TO:<early@example.org>",
        "MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME",
        "MAIL FROM:<again@example.org>",
        "RCPT TO:<b@example.org>",
        "RCPT TO:<c@example.org>",
        "RCPT TO:<d@example.org>",
        "RCPT TO:<bad",
        "DATA",
        "Subject: same\r\n\r\nbody\r\n.",
        "HELO again.example",
        "XNONE",
        "NOOP",
        "RSET",
        "QUIT",
    ];
    let mut options = ServerOptions::default();
    options.session = config();
    let server = TestServer::builder()
        .options(options)
        .server(Quota::default)
        .start()
        .unwrap();
    let mut client = Client::connect(server.addr()).unwrap();
    let mut driver = SessionDriver::with_server(Rc::new(RefCell::new(Quota::default())), config());
    assert_eq!(&driver.replies()[0], client.greeting());
    for line in lines {
        let wire = client.command(line).unwrap();
        let driven = driver.command(line).cloned();
        assert_eq!(driven.as_ref(), Some(&wire), "after {line:?}");
    }
    assert!(driver.is_closed());
}
