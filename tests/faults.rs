//! `--fault` over loopback with Python's smtplib: a reply for matching addresses, a delay that
//! does not stall other clients, a dropped connection, accept-but-discard, the `421` rate
//! limit; every fault logged when it fires. Then the same wrapper through `smtpd::testing`.

mod support;

use std::fs;
use std::time::Duration;

use smtpd::servers::faults::Faults;
use smtpd::testing::{Client, TestServer};
use support::{python_ok, start_smtpd, wait_until};

/// Runs smtplib steps against the server; each prints one line.
const STEPS: &str = r#"
import smtplib, sys, threading, time
port = int(sys.argv[1])
def conn():
    return smtplib.SMTP('127.0.0.1', port, local_hostname='client.example', timeout=20)

# 1. A reply for matching recipients only.
with conn() as s:
    refused = s.sendmail('a@example.com', ['bad@example.com', 'good@example.com'], b'Subject: one\r\n\r\n1\r\n')
    print('refused', refused)

# 2. A delayed end of data; another client is served meanwhile.
result = {}
def slow():
    with conn() as s:
        t0 = time.monotonic()
        s.sendmail('a@example.com', ['slow@example.com'], b'Subject: slow\r\n\r\n2\r\n')
        result['slow'] = time.monotonic() - t0
t = threading.Thread(target=slow)
t.start()
time.sleep(0.3)
with conn() as s:
    t0 = time.monotonic()
    s.noop()
    s.sendmail('a@example.com', ['good@example.com'], b'Subject: fast\r\n\r\n3\r\n')
    fast = time.monotonic() - t0
t.join()
print('slow', result['slow'] >= 1.0, 'fast', fast < 0.6)

# 3. A dropped connection at MAIL.
try:
    with conn() as s:
        s.sendmail('drop@example.com', ['good@example.com'], b'Subject: dropped\r\n\r\n4\r\n')
    print('not dropped')
except smtplib.SMTPServerDisconnected as e:
    print('dropped')

# 4. Accepted but discarded.
with conn() as s:
    print('discard', s.sendmail('a@example.com', ['void@example.com'], b'Subject: void\r\n\r\n5\r\n'))
"#;

#[test]
fn each_fault_kind_over_loopback() {
    let dir = std::env::temp_dir().join(format!("smtpd-faults-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let maildir = dir.join("Maildir");
    let (proc, port) = start_smtpd(&[
        "-n",
        "-c",
        "DebuggingServer",
        "--print",
        "none",
        "--maildir",
        maildir.to_str().unwrap(),
        "--fault",
        "rcpt=bad@*:550 5.1.1 No such user",
        "--fault",
        "data=slow@*:delay=1s",
        "--fault",
        "mail=drop@*:drop",
        "--fault",
        "data=void@*:discard",
    ]);
    let out = python_ok(STEPS, &[&port.to_string()]);
    assert_eq!(
        out,
        "refused {'bad@example.com': (550, b'5.1.1 No such user')}\n\
         slow True fast True\ndropped\ndiscard {}\n"
    );
    // Stored: one, slow, fast; not the dropped or the discarded one.
    let mut subjects: Vec<String> = fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| {
            let text = fs::read_to_string(e.unwrap().path()).unwrap();
            text.lines().next().unwrap().to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["Subject: fast", "Subject: one", "Subject: slow"]);
    for spec in [
        "fault rcpt=bad@*:550 5.1.1 No such user fired",
        "fault data=slow@*:delay=1s fired",
        "fault mail=drop@*:drop fired",
        "fault data=void@*:discard fired",
    ] {
        assert!(
            wait_until(Duration::from_secs(5), || proc.stderr().contains(spec)),
            "{spec} not logged:\n{}",
            proc.stderr()
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn rate_limit_answers_421_past_n_per_period() {
    let (proc, port) = start_smtpd(&["-n", "-c", "Sink", "--fault", "rate:2/60s"]);
    let script = r#"
import smtplib, sys
port = int(sys.argv[1])
with smtplib.SMTP('127.0.0.1', port, timeout=20) as s:
    for n in range(3):
        try:
            s.sendmail('a@example.com', ['b@example.com'], b'Subject: %d\r\n\r\nx\r\n' % n)
            print(n, 'ok')
        except smtplib.SMTPSenderRefused as e:
            print(n, e.smtp_code, e.smtp_error.decode())
"#;
    assert_eq!(
        python_ok(script, &[&port.to_string()]),
        "0 ok\n1 ok\n2 421 4.7.0 Too many messages, slow down\n"
    );
    assert!(wait_until(Duration::from_secs(5), || proc
        .stderr()
        .contains("fault rate:2/60s fired")));
}

#[test]
fn connect_and_helo_faults() {
    let (_proc, port) = start_smtpd(&[
        "-n",
        "-c",
        "Sink",
        "--fault",
        "helo=bad.example:550 5.7.1 Go away",
    ]);
    let script = r#"
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, local_hostname='bad.example', timeout=20)
print(s.ehlo())
s.close()
s = smtplib.SMTP('127.0.0.1', port, local_hostname='good.example', timeout=20)
print(s.ehlo()[0])
s.quit()
"#;
    assert_eq!(
        python_ok(script, &[&port.to_string()]),
        "(550, b'5.7.1 Go away')\n250\n"
    );
    let (_proc, port) = start_smtpd(&[
        "-n",
        "-c",
        "Sink",
        "--fault",
        "connect:554 5.7.1 No service",
    ]);
    let script = r#"
import smtplib, sys
try:
    smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20)
except smtplib.SMTPConnectError as e:
    print(e.smtp_code, e.smtp_error.decode())
"#;
    assert_eq!(
        python_ok(script, &[&port.to_string()]),
        "554 5.7.1 No service\n"
    );
}

#[test]
fn bad_fault_specs_are_refused_at_start() {
    let out = support::run(
        {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_smtpd"));
            cmd.args(["-n", "--fault", "rcpt:discard"]);
            cmd
        },
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("invalid fault \"rcpt:discard\": discard is for data only"),
        "{}",
        out.stderr
    );
}

#[test]
fn faults_in_the_test_server() {
    let faults = Faults::parse(["rcpt=bad@*:550 5.1.1 No such user", "mail:delay=300ms"]).unwrap();
    let server = TestServer::builder().faults(faults).start().unwrap();
    let mut client = Client::connect(server.addr()).unwrap();
    client.ehlo("me").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(client.command("MAIL FROM:<a@x.org>").unwrap().code, 250);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        client.command("RCPT TO:<BAD@x.org>").unwrap().to_string(),
        "550 5.1.1 No such user"
    );
    assert_eq!(client.command("RCPT TO:<ok@x.org>").unwrap().code, 250);
    client.command("QUIT").unwrap();
    // The refused recipient never reached the server: its transcript shows only the others.
    let transcripts = server
        .wait_for_closed(1, Duration::from_secs(5))
        .expect("connection closed");
    let text = transcripts[0].text();
    assert!(
        text.contains("C: MAIL FROM:<a@x.org>\nS: 250 OK\n"),
        "{text}"
    );
    assert!(
        text.contains("C: RCPT TO:<ok@x.org>\nS: 250 OK\n"),
        "{text}"
    );
    assert!(!text.contains("BAD@x.org"), "{text}");
}
