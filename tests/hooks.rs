//! Hooks of a custom session, unit-tested without a socket or a reactor: a detached
//! `ServerCtx`, requests built with their public constructors, tickets completed from threads
//! and read back from the `DetachedCtx`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::thread;
use std::time::Duration;

use smtpd::server::{
    AddressRequest, Backend, CommandRequest, DetachedCtx, HeloRequest, Message, Outcome, Peer,
    Reply, ServerCtx, SmtpServer, SmtpSession, TicketAnswer,
};

const WAIT: Duration = Duration::from_secs(5);

fn peer() -> SocketAddr {
    "192.0.2.7:40000".parse().unwrap()
}

fn message(mail_from: &str, rcpt_tos: &[&str]) -> Message {
    Message::new(
        peer(),
        mail_from,
        rcpt_tos.iter().copied(),
        b"Subject: t\r\n\r\nhi".to_vec(),
    )
    .with_helo("client.example")
}

/// The session under test: refuses blocked senders, looks recipients up on a worker thread,
/// allows two messages per connection, counts what happened in its own fields.
#[derive(Default)]
struct Policy {
    transactions: usize,
    resets: usize,
    delivered: usize,
}

impl SmtpSession for Policy {
    fn on_mail(&mut self, request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        if request.address.ends_with("@spam.example") {
            return Outcome::Reply(Reply::new(550, "5.7.1 Sender blocked"));
        }
        self.transactions += 1;
        Outcome::Accept
    }

    fn on_rcpt(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        if request.rcpt_tos.len() >= 2 {
            return Outcome::Reply(Reply::new(452, "4.5.3 Too many recipients"));
        }
        // A slow directory lookup, off the loop.
        let ticket = cx.defer();
        let deferred = Outcome::deferred(&ticket);
        let address = request.address.to_string();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            if address.starts_with("nobody@") {
                ticket.complete(Reply::new(550, "5.1.1 No such user"));
            } else {
                ticket.accept();
            }
        });
        deferred
    }

    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        if self.delivered == 2 {
            return Outcome::Reply(Reply::new(452, "4.3.1 Two messages per connection"));
        }
        self.delivered += 1;
        Outcome::Accept
    }

    fn on_reset(&mut self, _cx: &mut ServerCtx<'_, '_>) {
        self.resets += 1;
    }
}

fn reply(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Reply(reply) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn a_blocked_sender_is_refused_and_others_accepted() {
    let mut detached = DetachedCtx::new();
    let mut session = Policy::default();
    let refused = session.on_mail(
        &AddressRequest::mail(peer(), "bulk@spam.example", &[]).with_helo("client.example"),
        &mut detached.cx(),
    );
    assert_eq!(reply(refused), Reply::new(550, "5.7.1 Sender blocked"));
    assert_eq!(session.transactions, 0);
    let options = vec!["SIZE=100".to_string()];
    let accepted = session.on_mail(
        &AddressRequest::mail(peer(), "alice@example.org", &options),
        &mut detached.cx(),
    );
    assert!(matches!(accepted, Outcome::Accept), "{accepted:?}");
    assert_eq!(session.transactions, 1);
}

#[test]
fn a_recipient_is_deferred_and_answered_from_a_thread() {
    let mut detached = DetachedCtx::new();
    let mut session = Policy::default();
    let request = AddressRequest::rcpt(peer(), "alice@example.org", "bob@example.org");
    let Outcome::Deferred(bob) = session.on_rcpt(&request, &mut detached.cx()) else {
        panic!("the lookup should defer");
    };
    // The deferral is the one a channel would wait for: made from this call's ticket.
    assert!(detached.is_current(&bob));
    assert_eq!(
        detached.answer(&bob, WAIT),
        Some(TicketAnswer::Reply(Reply::ok()))
    );

    let accepted = vec!["bob@example.org".to_string()];
    let request = AddressRequest::rcpt(peer(), "alice@example.org", "nobody@example.org")
        .with_rcpt_tos(&accepted);
    let Outcome::Deferred(nobody) = session.on_rcpt(&request, &mut detached.cx()) else {
        panic!("the lookup should defer");
    };
    assert!(detached.is_current(&nobody));
    // The earlier deferral is not the latest call's any more.
    assert!(!detached.is_current(&bob));
    assert_eq!(
        detached.answer(&nobody, WAIT),
        Some(TicketAnswer::Reply(Reply::new(550, "5.1.1 No such user")))
    );
    // Answered once: nothing more arrives for it.
    assert_eq!(detached.try_answer(&nobody), None);

    // The recipient limit answers at once, without a ticket.
    let full = vec!["a@example.org".to_string(), "b@example.org".to_string()];
    let request =
        AddressRequest::rcpt(peer(), "alice@example.org", "c@example.org").with_rcpt_tos(&full);
    assert_eq!(
        reply(session.on_rcpt(&request, &mut detached.cx())).code,
        452
    );
}

#[test]
fn the_session_counts_state_across_transactions() {
    let mut detached = DetachedCtx::new();
    let mut session = Policy::default();
    let mail = AddressRequest::mail(peer(), "alice@example.org", &[]);
    let msg = message("alice@example.org", &["bob@example.org"]);
    for _ in 0..2 {
        assert!(matches!(
            session.on_mail(&mail, &mut detached.cx()),
            Outcome::Accept
        ));
        assert!(matches!(
            session.process_message(&msg, &mut detached.cx()),
            Outcome::Accept
        ));
    }
    // A transaction abandoned with RSET.
    assert!(matches!(
        session.on_mail(&mail, &mut detached.cx()),
        Outcome::Accept
    ));
    session.on_reset(&mut detached.cx());
    // The third message of the connection is refused; the count lives in the session.
    assert!(matches!(
        session.on_mail(&mail, &mut detached.cx()),
        Outcome::Accept
    ));
    assert_eq!(
        reply(session.process_message(&msg, &mut detached.cx())),
        Reply::new(452, "4.3.1 Two messages per connection")
    );
    assert_eq!(
        (session.transactions, session.delivered, session.resets),
        (4, 2, 1)
    );
    // A second connection's session starts afresh.
    let mut other = Policy::default();
    assert!(matches!(
        other.process_message(&msg, &mut detached.cx()),
        Outcome::Accept
    ));
}

#[test]
fn a_dropped_ticket_is_reported_and_there_is_no_reactor() {
    let mut detached = DetachedCtx::new();
    let mut cx = detached.cx();
    assert!(cx.is_detached());
    assert!(cx.try_ctx().is_none());
    let ticket = cx.defer();
    let deferral = ticket.deferral();
    thread::spawn(move || drop(ticket)).join().unwrap();
    assert_eq!(
        detached.answer(&deferral, WAIT),
        Some(TicketAnswer::Dropped)
    );
}

#[test]
#[should_panic(expected = "detached from a reactor")]
fn the_reactor_context_of_a_detached_ctx_panics_with_a_clear_message() {
    let mut detached = DetachedCtx::new();
    let mut cx = detached.cx();
    let _ = cx.ctx();
}

/// A CPython-shaped server: its hooks run through the session its `Rc<RefCell<..>>` opens.
#[derive(Default)]
struct Classic {
    helos: Vec<String>,
    messages: usize,
    commands: Vec<String>,
}

impl SmtpServer for Classic {
    fn process_message(&mut self, _message: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.messages += 1;
        Outcome::Accept
    }

    fn on_helo(&mut self, request: &HeloRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.helos.push(request.name.to_string());
        Outcome::Accept
    }

    fn on_connect(&mut self, peer: SocketAddr, _cx: &mut ServerCtx<'_, '_>) -> Option<Reply> {
        peer.ip()
            .is_loopback()
            .then(|| Reply::new(554, "5.7.1 not from here"))
    }

    fn commands(&self) -> Vec<String> {
        vec!["XSTAT".into()]
    }

    fn on_command(&mut self, request: &CommandRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.commands
            .push(format!("{} {}", request.verb, request.arg));
        Outcome::Reply(Reply::new(250, format!("{} messages", self.messages)))
    }
}

#[test]
fn an_smtp_server_runs_through_the_sessions_its_rc_opens() {
    let server = Rc::new(RefCell::new(Classic::default()));
    let mut backend = server.clone();
    assert_eq!(backend.commands(), ["XSTAT"]);
    let mut detached = DetachedCtx::new();
    let mut first = backend.open_session(&Peer::new(peer()));
    let mut second = backend.open_session(&Peer::new(peer()));
    // on_connect's `None` greets, a reply refuses.
    assert!(matches!(
        first.on_connect(&Peer::new(peer()), &mut detached.cx()),
        Outcome::Accept
    ));
    let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    assert_eq!(
        reply(second.on_connect(&Peer::new(local), &mut detached.cx())).code,
        554
    );
    // Both sessions reach the one shared server.
    first.on_helo(
        &HeloRequest::new(peer(), "one.example", false),
        &mut detached.cx(),
    );
    second.on_helo(
        &HeloRequest::new(peer(), "two.example", true),
        &mut detached.cx(),
    );
    first.process_message(&message("a@x", &["b@y"]), &mut detached.cx());
    second.process_message(&message("a@x", &["b@y"]), &mut detached.cx());
    let stat = second.on_command(
        &CommandRequest::new(peer(), Some("two.example"), "XSTAT", "now"),
        &mut detached.cx(),
    );
    assert_eq!(reply(stat), Reply::new(250, "2 messages"));
    let server = server.borrow();
    assert_eq!(server.helos, ["one.example", "two.example"]);
    assert_eq!(server.commands, ["XSTAT now"]);
}
