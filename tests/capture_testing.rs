//! The testing API for captured mail: `wait_for` returns on the matching message and times out
//! cleanly otherwise, `wait_for_count`, parsed headers, the server-side transcripts, and a
//! capture store attached to a DebuggingServer run by a `TestServer`.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use smtpd::servers::capture::Maildir;
use smtpd::servers::debugging::Print;
use smtpd::servers::DebuggingServer;
use smtpd::testing::{Client, MessageExt, TestServer};

fn send(server: &TestServer, subject: &str, to: &str) {
    let mut client = Client::connect(server.addr()).unwrap();
    client.ehlo("app.example").unwrap();
    let body = format!("Subject: {subject}\r\nTo: {to}\r\n\r\nhello\r\n");
    assert_eq!(
        client
            .send_mail("app@example.com", &[to], body.as_bytes())
            .unwrap()
            .code,
        250
    );
    client.quit().unwrap();
}

#[test]
fn wait_for_returns_on_the_matching_message() {
    let server = TestServer::start().unwrap();
    let addr = server.addr();
    let sender = thread::spawn(move || {
        let server_addr = addr;
        thread::sleep(Duration::from_millis(200));
        for (subject, to) in [("welcome", "a@x.org"), ("reset password", "b@x.org")] {
            let mut client = Client::connect(server_addr).unwrap();
            client.ehlo("app.example").unwrap();
            let body = format!("Subject: {subject}\r\nTo: {to}\r\n\r\nhello\r\n");
            client
                .send_mail("app@example.com", &[to], body.as_bytes())
                .unwrap();
            client.quit().unwrap();
        }
    });
    let started = Instant::now();
    let reset = server
        .wait_for(
            |m| {
                m.headers()
                    .get("SUBJECT")
                    .is_some_and(|s| s.contains("reset"))
            },
            Duration::from_secs(10),
        )
        .expect("the reset mail");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(reset.rcpt_tos, ["b@x.org"]);
    assert_eq!(reset.headers().get("to"), Some("b@x.org"));
    sender.join().unwrap();
    // Earlier messages are still searchable, taken or not.
    assert!(server
        .wait_for(|m| m.rcpt_tos == ["a@x.org"], Duration::ZERO)
        .is_some());
    assert_eq!(
        server
            .wait_for_count(2, Duration::from_secs(5))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn wait_for_times_out_cleanly() {
    let server = TestServer::start().unwrap();
    send(&server, "something else", "a@x.org");
    let started = Instant::now();
    let found = server.wait_for(
        |m| m.headers().get("subject") == Some("never sent"),
        Duration::from_millis(300),
    );
    let waited = started.elapsed();
    assert!(found.is_none());
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert!(server
        .wait_for_count(2, Duration::from_millis(100))
        .is_none());
    assert_eq!(server.messages().len(), 1);
    // The server still works afterwards.
    send(&server, "later", "b@x.org");
    assert_eq!(
        server
            .wait_for_count(2, Duration::from_secs(5))
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn transcripts_show_each_connection() {
    let server = TestServer::start().unwrap();
    send(&server, "one", "a@x.org");
    send(&server, "two", "b@x.org");
    let transcripts = server.wait_for_closed(2, Duration::from_secs(5)).unwrap();
    assert_eq!(transcripts.len(), 2);
    let first = transcripts[0].text();
    assert!(
        first.starts_with("C: (connected)\nS: (greeting)\nC: EHLO app.example\nS: (built-in)\n"),
        "{first}"
    );
    assert!(
        first.contains("C: RCPT TO:<a@x.org>\nS: 250 OK\n"),
        "{first}"
    );
    assert!(first.ends_with("C: (closed)\n"), "{first}");
    assert!(transcripts[1].text().contains("RCPT TO:<b@x.org>"));
}

#[test]
fn debugging_server_with_a_maildir_in_a_test_server() {
    let dir = std::env::temp_dir().join(format!("smtpd-capture-testing-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let root = dir.clone();
    let server = TestServer::builder()
        .server(move || {
            DebuggingServer::new()
                .with_print(Print::None)
                .with_store(Maildir::open(root).unwrap())
        })
        .start()
        .unwrap();
    send(&server, "stored", "a@x.org");
    server.wait_for_count(1, Duration::from_secs(5)).unwrap();
    let files: Vec<_> = fs::read_dir(dir.join("new")).unwrap().collect();
    assert_eq!(files.len(), 1);
    let text = fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert_eq!(text, "Subject: stored\r\nTo: a@x.org\r\n\r\nhello\r\n");
    let _ = fs::remove_dir_all(&dir);
}
