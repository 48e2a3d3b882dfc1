//! The byte-level receiver (`smtp::Receiver`) against the framing contract, written here a
//! second, naive way: the whole input in one buffer, each unit found by searching it from
//! the start. Whatever the input and however it is cut into reads, the receiver must give
//! the session exactly the units the naive framer gives it: the same replies, the same
//! messages. Also: it stops at a pending decision and hands back the rest, and message data
//! stays within a memory budget.

#![allow(clippy::field_reassign_with_default)] // Config gains fields: build it from Default

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use proptest::prelude::*;
use smtpd::smtp::{
    Config, Decision, MemoryBudget, Message, Output, Receiver, Reply, Request, Session,
};

fn peer() -> SocketAddr {
    "192.0.2.9:2525".parse().unwrap()
}

fn config(data_limit: usize) -> Config {
    let mut c = Config::default();
    c.hostname = "rx.test".into();
    c.data_size_limit = data_limit;
    c.max_errors = 10;
    c.check_mail = true;
    c.check_rcpt = true;
    c.check_helo = true;
    c
}

/// What a session said: replies in order, and the messages it handed out.
#[derive(Debug, Default, PartialEq)]
struct Transcript {
    replies: Vec<Reply>,
    messages: Vec<Message>,
    resets: usize,
    closed: bool,
}

impl Transcript {
    /// Takes `out`, answering every request with the default decision.
    fn absorb(&mut self, resolve: &mut dyn FnMut(&mut Vec<Output>), out: &mut Vec<Output>) {
        while !out.is_empty() {
            for o in std::mem::take(out) {
                match o {
                    Output::Reply(r) => self.replies.push(r),
                    Output::Decide(request) => {
                        if let Request::Message(m) = request {
                            self.messages.push(m);
                        }
                        resolve(out);
                    }
                    Output::Reset => self.resets += 1,
                    Output::Close => self.closed = true,
                    other => panic!("unexpected output {other:?}"),
                }
            }
        }
    }
}

/// The naive framer: CRLF lines, and a body that ends at the first `CRLF.CRLF` of the
/// `DATA` line's CRLF followed by the input.
fn naive(config: Config, input: &[u8]) -> Transcript {
    let session = Rc::new(std::cell::RefCell::new(Session::new(
        Arc::new(config),
        peer(),
    )));
    let mut t = Transcript::default();
    let mut out = Vec::new();
    session.borrow_mut().start(&mut out);
    let s2 = session.clone();
    let mut resolve =
        move |out: &mut Vec<Output>| s2.borrow_mut().resolve(Decision::Default, out).unwrap();
    t.absorb(&mut resolve, &mut out);
    let mut pos = 0;
    while pos < input.len() && !t.closed {
        let mut s = session.borrow_mut();
        let limit = s.input_limit();
        if !s.is_data() {
            let Some(i) = find(&input[pos..], b"\r\n") else {
                break;
            };
            let line = &input[pos..pos + i];
            if limit.is_some_and(|l| line.len() > l) {
                s.feed_oversize(&mut out).unwrap();
            } else {
                s.feed_line(line, &mut out).unwrap();
            }
            pos += i + 2;
        } else {
            let mut virt = b"\r\n".to_vec();
            virt.extend_from_slice(&input[pos..]);
            let Some(j) = find(&virt, b"\r\n.\r\n") else {
                break;
            };
            let body = if j == 0 {
                &[][..]
            } else {
                &input[pos..pos + j - 2]
            };
            if limit.is_some_and(|l| body.len() > l) {
                s.feed_oversize(&mut out).unwrap();
            } else {
                s.feed_data(body, &mut out).unwrap();
            }
            pos += if j == 0 { 3 } else { j - 2 + 5 };
        }
        drop(s);
        t.absorb(&mut resolve, &mut out);
    }
    t
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The receiver, fed `input` cut at `cuts`.
fn received(config: Config, input: &[u8], cuts: &[usize]) -> Transcript {
    let rx = Rc::new(std::cell::RefCell::new(Receiver::new(Session::new(
        Arc::new(config),
        peer(),
    ))));
    let mut t = Transcript::default();
    let mut out = Vec::new();
    rx.borrow_mut().start(&mut out);
    let r2 = rx.clone();
    let mut resolve =
        move |out: &mut Vec<Output>| r2.borrow_mut().resolve(Decision::Default, out).unwrap();
    t.absorb(&mut resolve, &mut out);
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c % (input.len() + 1)).collect();
    bounds.push(input.len());
    bounds.sort_unstable();
    let mut pending: Vec<u8> = Vec::new();
    let mut start = 0;
    for end in bounds {
        // What the receiver did not take stays with the caller, in front of the next read.
        pending.extend_from_slice(&input[start..end]);
        start = end;
        loop {
            let used = rx.borrow_mut().receive(&pending, &mut out);
            pending.drain(..used);
            let progressed = !out.is_empty();
            t.absorb(&mut resolve, &mut out);
            if t.closed || !progressed || pending.is_empty() {
                break;
            }
        }
        if t.closed {
            break;
        }
    }
    t
}

trait IsData {
    fn is_data(&self) -> bool;
}

impl IsData for Session {
    fn is_data(&self) -> bool {
        self.framing() == smtpd::smtp::Framing::Data
    }
}

fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b".".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"\r\n..\r\n".to_vec()),
        Just(b"EHLO a.example\r\n".to_vec()),
        Just(b"MAIL FROM:<a@example.com>\r\n".to_vec()),
        Just(b"RCPT TO:<b@example.com>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(vec![b'x'; 90]),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_receiver_frames_as_the_contract_says(
        tokens in prop::collection::vec(token(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        limit in prop_oneof![Just(0usize), Just(40), Just(200)],
    ) {
        // Greeted, so that transactions (and bodies) happen often.
        let mut input = b"EHLO a.example\r\n".to_vec();
        input.extend(tokens.concat());
        let want = naive(config(limit), &input);
        let got = received(config(limit), &input, &cuts);
        prop_assert_eq!(got, want);
    }
}

#[test]
fn every_cut_of_a_dialogue_gives_the_same_transcript() {
    let input = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.\r\n\
MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n..x\r\n\r\n.\r\r\n.\r\n\
MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n\r\n.\r\nNOOP\r\nQUIT\r\n";
    let want = naive(config(1000), input);
    assert_eq!(want.messages.len(), 3);
    assert_eq!(want.messages[0].data, b"");
    assert_eq!(want.messages[1].data, b".x\r\n\r\n\r");
    assert_eq!(want.messages[2].data, b"");
    assert!(want.closed);
    for cut in 0..=input.len() {
        assert_eq!(received(config(1000), input, &[cut]), want, "cut at {cut}");
    }
    for a in (0..input.len()).step_by(7) {
        for b in (a..input.len()).step_by(5) {
            assert_eq!(received(config(1000), input, &[a, b]), want, "cuts {a} {b}");
        }
    }
}

#[test]
fn a_pending_decision_stops_the_receiver_and_hands_back_the_rest() {
    let mut rx = Receiver::new(Session::new(Arc::new(config(1000)), peer()));
    let mut out = Vec::new();
    rx.start(&mut out);
    out.clear();
    let input = b"HELO a\r\nNOOP\r\n";
    let used = rx.receive(input, &mut out);
    assert_eq!(&input[used..], b"NOOP\r\n");
    assert!(matches!(out.as_slice(), [Output::Decide(Request::Helo(_))]));
    assert!(!rx.wants_input());
    out.clear();
    assert_eq!(
        rx.receive(b"NOOP\r\n", &mut out),
        0,
        "nothing is taken while deciding"
    );
    assert!(out.is_empty());
    rx.resolve(Decision::Default, &mut out).unwrap();
    assert_eq!(out.len(), 1);
    out.clear();
    assert_eq!(rx.receive(&input[used..], &mut out), 6);
    assert_eq!(out, vec![Output::Reply(Reply::new(250, "OK"))]);
}

/// A budget with a fixed number of bytes, shared so the test can look at it.
struct Budget {
    left: Rc<Cell<usize>>,
}

impl MemoryBudget for Budget {
    fn try_reserve(&mut self, bytes: usize) -> bool {
        if bytes > self.left.get() {
            return false;
        }
        self.left.set(self.left.get() - bytes);
        true
    }
    fn release(&mut self, bytes: usize) {
        self.left.set(self.left.get() + bytes);
    }
}

#[test]
fn message_data_stays_within_the_budget() {
    let mut plain = config(1 << 20);
    plain.check_mail = false;
    plain.check_rcpt = false;
    plain.check_helo = false;
    let mut rx = Receiver::new(Session::new(Arc::new(plain), peer()));
    let left = Rc::new(Cell::new(10_000));
    let mut budget = Budget { left: left.clone() };
    let mut out = Vec::new();
    rx.start(&mut out);
    let head = b"HELO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n";
    rx.receive_within(head, &mut budget, &mut out);
    // 30 KB in 1 KB reads: more than the budget.
    for _ in 0..30 {
        rx.receive_within(&[b'z'; 1000], &mut budget, &mut out);
        assert!(left.get() <= 10_000);
    }
    assert_eq!(
        rx.reserved(),
        0,
        "the message was dropped once it did not fit"
    );
    out.clear();
    rx.receive_within(b"\r\n.\r\n", &mut budget, &mut out);
    assert_eq!(
        out.last(),
        Some(&Output::Reply(Reply::new(
            452,
            "4.3.1 Insufficient system storage"
        )))
    );
    assert_eq!(left.get(), 10_000);
    // A message that fits is taken, and its memory given back at its end.
    rx.receive_within(
        b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
        &mut budget,
        &mut out,
    );
    for _ in 0..5 {
        rx.receive_within(&[b'w'; 1000], &mut budget, &mut out);
    }
    assert!(rx.reserved() >= 5000);
    assert_eq!(left.get() + rx.reserved(), 10_000);
    out.clear();
    rx.receive_within(b"\r\n.\r\n", &mut budget, &mut out);
    assert!(matches!(&out[..], [Output::Decide(Request::Message(m))] if m.data.len() == 5000));
    assert_eq!(left.get(), 10_000);
}
