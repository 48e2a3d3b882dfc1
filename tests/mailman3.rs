//! The `smtpd` binary as `MailmanProxy` in front of a real GNU Mailman 3 (3.3.10, SQLite,
//! loopback), started by `tools/mailman3.sh`, which also runs a capture sink that is both
//! Mailman's outgoing MTA and our upstream. `.ci/run` runs these with `tools/mailman3.sh test`;
//! by hand: `tools/mailman3.sh install && tools/mailman3.sh start target/mm3 &&
//! MAILMAN3_ENV=target/mm3/env cargo test --release --test mailman3 -- --ignored`, then
//! `tools/mailman3.sh stop target/mm3`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{free_port, Proc, RawClient};

const NEEDS: &str = "MAILMAN3_ENV is not set: run tools/mailman3.sh test";

/// Ports and paths of the running Mailman (from `STATE/env`).
struct Mailman {
    lmtp_port: u16,
    sink_port: u16,
    sink_dir: PathBuf,
}

fn mailman() -> Mailman {
    let path = std::env::var("MAILMAN3_ENV").expect(NEEDS);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let env: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    Mailman {
        lmtp_port: env["LMTP_PORT"].parse().unwrap(),
        sink_port: env["SINK_PORT"].parse().unwrap(),
        sink_dir: PathBuf::from(env["SINK_DIR"]),
    }
}

/// A message the sink captured: its envelope and its text.
#[derive(Debug)]
struct Captured {
    from: String,
    to: Vec<String>,
    text: String,
}

impl Mailman {
    /// Waits (at most 20 s) for a captured message matching `pred`.
    fn wait_for(&self, what: &str, pred: impl Fn(&Captured) -> bool) -> Captured {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut found = None;
            for entry in std::fs::read_dir(&self.sink_dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_none_or(|e| e != "eml") {
                    continue;
                }
                let raw = std::fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&raw).into_owned();
                let mut lines = text.splitn(3, "\r\n");
                let from = lines
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("X-Envelope-From: ");
                let to = lines
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("X-Envelope-To: ");
                let c = Captured {
                    from: from.to_string(),
                    to: to.split(' ').map(str::to_string).collect(),
                    text: lines.next().unwrap_or("").to_string(),
                };
                if pred(&c) {
                    found = Some(c);
                    break;
                }
            }
            if let Some(c) = found {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "no captured message: {what} (sink: {})",
                self.sink_dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Our binary as `MailmanProxy`, with the sink as its upstream.
fn proxy(mm: &Mailman, extra: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let local = format!("127.0.0.1:{port}");
    let lmtp = format!("127.0.0.1:{}", mm.lmtp_port);
    let upstream = format!("127.0.0.1:{}", mm.sink_port);
    let mut args = vec!["-n", "-c", "MailmanProxy", "--mailman-lmtp", &lmtp];
    args.extend_from_slice(extra);
    args.extend([local.as_str(), upstream.as_str()]);
    let mut p = Proc::smtpd(&args);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    p.wait_listening(addr);
    (p, addr)
}

/// A tag that makes each test's mail its own.
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// One transaction: the RCPT replies' codes and the final reply.
fn send(addr: SocketAddr, from: &str, rcpts: &[&str], message: &str) -> (Vec<String>, String) {
    let mut c = RawClient::connect(addr);
    c.set_read_timeout(Duration::from_secs(30));
    assert!(c.reply()[0].starts_with("220"));
    c.cmd("EHLO client.example");
    assert!(c.cmd(&format!("MAIL FROM:<{from}>"))[0].starts_with("250"));
    let codes: Vec<String> = rcpts
        .iter()
        .map(|r| c.cmd(&format!("RCPT TO:<{r}>"))[0][..3].to_string())
        .collect();
    assert!(c.cmd("DATA")[0].starts_with("354"));
    c.send(&format!("{message}\r\n.\r\n"));
    let last = c.reply().join(" ");
    c.cmd("QUIT");
    (codes, last)
}

#[test]
#[ignore = "needs Mailman 3: tools/mailman3.sh test (pip install mailman==3.3.10 'sqlalchemy<2.1')"]
fn a_post_is_distributed_and_the_other_recipients_relayed() {
    let mm = mailman();
    let (_p, addr) = proxy(&mm, &[]);
    let subject = unique("post");
    let sender = format!("{}@example.net", unique("alice"));
    let (codes, last) = send(
        addr,
        &sender,
        &[
            "test@example.com",
            "friend@example.org",
            "nolist@example.com",
        ],
        &format!("To: test@example.com\r\nSubject: {subject}\r\n\r\nHello list.\r\n"),
    );
    assert_eq!(codes, ["250", "250", "250"]);
    assert_eq!(last, "250 OK");
    // Mailman distributed the post to the list's member, through its outgoing MTA.
    let copy = mm.wait_for("the list copy for member@example.org", |c| {
        c.to == ["member@example.org"] && c.text.contains(&subject)
    });
    assert_eq!(copy.from, "test-bounces@example.com");
    assert!(
        copy.text.contains(&format!("Subject: [Test] {subject}")),
        "{}",
        copy.text
    );
    assert!(
        copy.text.contains("List-Id: <test.example.com>"),
        "{}",
        copy.text
    );
    // We added From: (the post had none) and Mailman kept it.
    assert!(
        copy.text.contains(&format!("From: {sender}")),
        "{}",
        copy.text
    );
    // The non-list recipients, in the same message, were relayed upstream, as sent.
    let relayed = mm.wait_for("the relayed copy", |c| {
        c.from == sender && c.text.contains(&subject)
    });
    assert_eq!(relayed.to, ["friend@example.org", "nolist@example.com"]);
    assert!(
        relayed.text.contains("X-Peer: 127.0.0.1"),
        "{}",
        relayed.text
    );
    assert!(!relayed.text.contains("[Test]"));
}

#[test]
#[ignore = "needs Mailman 3: tools/mailman3.sh test (pip install mailman==3.3.10 'sqlalchemy<2.1')"]
fn a_request_for_help_gets_mailmans_answer() {
    let mm = mailman();
    let (_p, addr) = proxy(&mm, &[]);
    let sender = format!("{}@example.net", unique("bob"));
    let (codes, last) = send(
        addr,
        &sender,
        &["Test-Request@example.com"],
        "Subject: help\r\n\r\nhelp\r\n",
    );
    assert_eq!(
        (codes.as_slice(), last.as_str()),
        (&["250".to_string()][..], "250 OK")
    );
    let answer = mm.wait_for("Mailman's answer to help", |c| c.to == [sender.clone()]);
    assert!(
        answer.text.contains("The results of your email command"),
        "{}",
        answer.text
    );
}

#[test]
#[ignore = "needs Mailman 3: tools/mailman3.sh test (pip install mailman==3.3.10 'sqlalchemy<2.1')"]
fn owner_mail_reaches_the_owner_and_admin_is_bounces() {
    let mm = mailman();
    let (_p, addr) = proxy(&mm, &[]);
    let subject = unique("for-the-owner");
    let (codes, last) = send(
        addr,
        &format!("{}@example.net", unique("carol")),
        &["test-owner@example.com"],
        &format!("Subject: {subject}\r\n\r\nDear owner.\r\n"),
    );
    assert_eq!((codes[0].as_str(), last.as_str()), ("250", "250 OK"));
    let copy = mm.wait_for("the owner's copy", |c| {
        c.to == ["owner@example.org"] && c.text.contains(&subject)
    });
    assert!(copy.from.starts_with("test-bounces"), "{}", copy.from);

    // Mailman 2's -admin is Mailman 3's -bounces: not a DSN, so the owner hears of it.
    let subject = unique("not-a-bounce");
    let (codes, last) = send(
        addr,
        &format!("{}@example.net", unique("dave")),
        &["test-admin@example.com"],
        &format!("Subject: {subject}\r\n\r\nnot a DSN\r\n"),
    );
    assert_eq!((codes[0].as_str(), last.as_str()), ("250", "250 OK"));
    mm.wait_for("the uncaught bounce notice", |c| {
        c.to == ["owner@example.org"]
            && c.text.contains("Uncaught bounce notification")
            && c.text.contains(&subject)
    });
}

#[test]
#[ignore = "needs Mailman 3: tools/mailman3.sh test (pip install mailman==3.3.10 'sqlalchemy<2.1')"]
fn unknown_lists_are_relayed_not_lost() {
    let mm = mailman();
    // With Mailman 3's suffixes too: a name with a dash is asked about, refused, relayed.
    let (_p, addr) = proxy(&mm, &["--mailman-suffixes", "mailman3"]);
    let subject = unique("nolist");
    let sender = format!("{}@example.net", unique("erin"));
    let (codes, last) = send(
        addr,
        &sender,
        &[
            "nolist@example.com",
            "no-such-list-request@example.com",
            "test@other.example",
        ],
        &format!("Subject: {subject}\r\n\r\nfor nobody's list\r\n"),
    );
    assert_eq!(codes, ["250", "250", "250"]);
    assert_eq!(last, "250 OK");
    let relayed = mm.wait_for("the relayed message", |c| {
        c.from == sender && c.text.contains(&subject)
    });
    assert_eq!(
        relayed.to,
        [
            "nolist@example.com",
            "no-such-list-request@example.com",
            "test@other.example"
        ]
    );
}
