//! DebuggingServer's capture options over loopback with Python's smtplib: Maildir and mbox
//! byte-exact (From lines, dots, 8-bit bodies), 50 concurrent clients into one mbox, a store
//! that cannot be written answers 451 and loses nothing, --keep, --jsonl and --print.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{python_ok, start_smtpd, wait_until};

/// A fresh directory for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("smtpd-capture-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Sends messages with smtplib. argv: port, then a Python list of (sender, [rcpts], bytes);
/// prints one line per message: `ok` or `CODE TEXT`.
const SEND: &str = r#"
import smtplib, sys
port, messages = int(sys.argv[1]), eval(sys.argv[2])
for sender, rcpts, body in messages:
    try:
        with smtplib.SMTP('127.0.0.1', port, local_hostname='client.example', timeout=20) as s:
            s.sendmail(sender, rcpts, body, mail_options=['BODY=8BITMIME'])
        print('ok')
    except smtplib.SMTPResponseException as e:
        print(e.smtp_code, e.smtp_error.decode())
"#;

/// A Python bytes literal of `data`.
fn py_bytes(data: &[u8]) -> String {
    let mut s = String::from("b'");
    for &b in data {
        s.push_str(&format!("\\x{b:02x}"));
    }
    s.push('\'');
    s
}

fn send(port: u16, messages: &[(&str, &[&str], &[u8])]) -> Vec<String> {
    let list: Vec<String> = messages
        .iter()
        .map(|(from, to, body)| {
            let to: Vec<String> = to.iter().map(|t| format!("{t:?}")).collect();
            format!("({from:?}, [{}], {})", to.join(", "), py_bytes(body))
        })
        .collect();
    let out = python_ok(
        SEND,
        &[&port.to_string(), &format!("[{}]", list.join(", "))],
    );
    out.lines().map(str::to_string).collect()
}

fn maildir_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Splits an mboxrd file into its messages, unquoted: (From line, message bytes).
fn mbox_messages(mbox: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut rest = mbox;
    let mut at_entry_start = true;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        rest = &rest[end..];
        if at_entry_start && line.starts_with(b"From ") {
            out.push((
                String::from_utf8_lossy(line).trim_end().to_string(),
                Vec::new(),
            ));
            at_entry_start = false;
            continue;
        }
        // The empty line that ends an entry: a lone LF followed by a From line or the end.
        if line == b"\n" && (rest.is_empty() || rest.starts_with(b"From ")) {
            at_entry_start = true;
            continue;
        }
        let body = &mut out.last_mut().expect("text before the first From line").1;
        let quotes = line.iter().take_while(|&&b| b == b'>').count();
        if quotes > 0 && line[quotes..].starts_with(b"From ") {
            body.extend_from_slice(&line[1..]);
        } else {
            body.extend_from_slice(line);
        }
    }
    out
}

/// A message with everything mbox and SMTP quoting must survive.
fn tricky_body(n: usize) -> Vec<u8> {
    let mut body = format!(
        "From: Alice <alice@example.com>\r\nTo: bob@example.com\r\nSubject: message {n}\r\n\
         Message-ID: <{n}@example.com>\r\n\r\nFrom the start of a line\r\n>From quoted once\r\n\
         >>From quoted twice\r\n.\r\n..two dots\r\n.leading dot\r\nFromage is not a From line\r\n"
    )
    .into_bytes();
    body.extend_from_slice(b"8-bit: caf\xc3\xa9 \xff\xfe raw\r\nlast line\r\n");
    body
}

#[test]
fn maildir_mbox_and_jsonl_store_byte_exact() {
    let dir = Scratch::new("exact");
    let (proc, port) = start_smtpd(&[
        "-n",
        "-c",
        "DebuggingServer",
        "--maildir",
        &dir.arg("Maildir"),
        "--mbox",
        &dir.arg("mbox"),
        "--jsonl",
        &dir.arg("log.jsonl"),
    ]);
    let body = tricky_body(1);
    assert_eq!(
        send(port, &[("alice@example.com", &["bob@example.com"], &body)]),
        ["ok"]
    );

    let maildir = dir.path("Maildir");
    for sub in ["tmp", "new", "cur"] {
        assert!(maildir.join(sub).is_dir(), "{sub}/ exists");
    }
    let files = maildir_files(&maildir);
    assert_eq!(files.len(), 1);
    assert_eq!(
        fs::read(&files[0]).unwrap(),
        body,
        "Maildir file is byte-exact"
    );
    assert_eq!(fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    let pid = proc.pid();
    let parts: Vec<&str> = name.splitn(3, '.').collect();
    assert!(parts[0].parse::<u64>().is_ok(), "{name}");
    assert!(
        parts[1].starts_with('M') && parts[1].contains(&format!("P{pid}Q1")),
        "{name}"
    );

    let mbox = fs::read(dir.path("mbox")).unwrap();
    assert!(
        mbox.starts_with(b"From alice@example.com "),
        "{:?}",
        String::from_utf8_lossy(&mbox)
    );
    assert!(memchr::memmem::find(&mbox, b"\r\n>From the start").is_some());
    assert!(memchr::memmem::find(&mbox, b"\r\n>>From quoted once").is_some());
    assert!(memchr::memmem::find(&mbox, b"\r\n>>>From quoted twice").is_some());
    assert!(memchr::memmem::find(&mbox, b"\r\nFromage").is_some());
    let messages = mbox_messages(&mbox);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1, body, "mbox entry unquotes to the message");

    // The JSON record, read by Python's json module (so it is valid JSON).
    let check = r#"
import json, sys
lines = open(sys.argv[1], encoding='utf-8').read().splitlines()
assert len(lines) == 1, lines
r = json.loads(lines[0])
print(r['peer'].startswith('127.0.0.1:'), r['helo'], r['mail_from'])
print(r['mail_params'], [x['address'] for x in r['recipients']])
print(r['size'], r['headers']['subject'], r['headers']['message_id'], r['headers']['to'])
print(len(r['stored']), r['stored'][0].endswith(sys.argv[2]), r['stored'][1] == sys.argv[3])
print(r['time'][:2], r['time'][-1])
"#;
    let out = python_ok(check, &[&dir.arg("log.jsonl"), &name, &dir.arg("mbox")]);
    assert_eq!(
        out,
        format!(
            "True client.example alice@example.com\n\
             [{{'keyword': 'size', 'value': '{n}'}}, {{'keyword': 'BODY', 'value': '8BITMIME'}}] ['bob@example.com']\n\
             {n} message 1 <1@example.com> bob@example.com\n2 True True\n20 Z\n",
            n = body.len()
        )
    );
    // --print defaults to CPython's block, unchanged (with its X-Peer line).
    assert!(proc.wait_stdout_count(
        "------------ END MESSAGE ------------",
        1,
        Duration::from_secs(5)
    ));
    assert!(proc.stdout().contains("X-Peer: 127.0.0.1\n"));
}

#[test]
fn fifty_concurrent_clients_never_interleave_in_one_mbox() {
    let dir = Scratch::new("concurrent");
    let (proc, port) = start_smtpd(&[
        "-n",
        "-c",
        "DebuggingServer",
        "--mbox",
        &dir.arg("mbox"),
        "--print",
        "none",
    ]);
    // Each client sends a large message slowly in pieces, so the bodies arrive interleaved.
    let script = r#"
import smtplib, sys, threading
port = int(sys.argv[1])
errors = []
def body(n):
    lines = [b'Subject: client %d' % n, b''] + [b'From client %d line %d ' % (n, i) + b'x' * 60 for i in range(400)]
    return b'\r\n'.join(lines) + b'\r\n'
def client(n):
    try:
        with smtplib.SMTP('127.0.0.1', port, timeout=60) as s:
            s.ehlo('c%d' % n)
            s.mail('c%d@example.com' % n)
            s.rcpt('sink@example.com')
            code, _ = s.docmd('DATA')
            assert code == 354, code
            data = body(n).replace(b'\r\n.', b'\r\n..')
            for i in range(0, len(data), 4096):
                s.send(data[i:i + 4096])
            s.send(b'.\r\n')
            code, msg = s.getreply()
            assert code == 250, (code, msg)
    except Exception as e:
        errors.append((n, repr(e)))
threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
for t in threads: t.start()
for t in threads: t.join()
print(errors)
"#;
    assert_eq!(python_ok(script, &[&port.to_string()]), "[]\n");
    let mbox = fs::read(dir.path("mbox")).unwrap();
    let messages = mbox_messages(&mbox);
    assert_eq!(messages.len(), 50);
    let mut seen = Vec::new();
    for (from_line, data) in &messages {
        let n: usize = from_line
            .strip_prefix("From c")
            .and_then(|r| r.split('@').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{from_line}"));
        let mut want = format!("Subject: client {n}\r\n\r\n");
        for i in 0..400 {
            want.push_str(&format!("From client {n} line {i} {}\r\n", "x".repeat(60)));
        }
        assert_eq!(String::from_utf8_lossy(data), want, "client {n}");
        seen.push(n);
    }
    seen.sort();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
    drop(proc);
}

#[test]
fn a_store_that_cannot_be_written_answers_451_and_loses_nothing() {
    let dir = Scratch::new("fail");
    let maildir = dir.path("Maildir");
    let (proc, port) = start_smtpd(&[
        "-n",
        "-c",
        "DebuggingServer",
        "--maildir",
        maildir.to_str().unwrap(),
    ]);
    // tmp/ replaced by a regular file: no file can be created under it, even by root.
    fs::remove_dir(maildir.join("tmp")).unwrap();
    fs::write(maildir.join("tmp"), b"not a directory").unwrap();
    let body = tricky_body(7);
    let got = send(port, &[("alice@example.com", &["bob@example.com"], &body)]);
    assert_eq!(
        got,
        ["451 4.3.0 Requested action aborted: cannot store the message"]
    );
    assert!(maildir_files(&maildir).is_empty());
    assert!(wait_until(Duration::from_secs(5), || proc
        .stderr()
        .contains("cannot store the message from <alice@example.com>")));
    // Nothing printed for the refused message.
    assert!(!proc.stdout().contains("MESSAGE FOLLOWS"));
    // The client retries once the disk is fixed: the message arrives, once.
    fs::remove_file(maildir.join("tmp")).unwrap();
    fs::create_dir(maildir.join("tmp")).unwrap();
    assert_eq!(
        send(port, &[("alice@example.com", &["bob@example.com"], &body)]),
        ["ok"]
    );
    let files = maildir_files(&maildir);
    assert_eq!(files.len(), 1);
    assert_eq!(fs::read(&files[0]).unwrap(), body);
}

#[test]
fn an_mbox_that_cannot_be_written_answers_451() {
    let dir = Scratch::new("mboxfail");
    let (_proc, port) = start_smtpd(&["-n", "-c", "DebuggingServer", "--mbox", &dir.arg("mbox")]);
    // The file goes away and a directory takes its name: it cannot be opened for writing.
    fs::remove_file(dir.path("mbox")).unwrap();
    fs::create_dir(dir.path("mbox")).unwrap();
    let got = send(
        port,
        &[(
            "a@example.com",
            &["b@example.com"],
            b"Subject: x\r\n\r\ny\r\n",
        )],
    );
    assert_eq!(
        got,
        ["451 4.3.0 Requested action aborted: cannot store the message"]
    );
}

#[test]
fn keep_removes_the_oldest() {
    let dir = Scratch::new("keep");
    let maildir = dir.path("Maildir");
    let (_proc, port) = start_smtpd(&[
        "-n",
        "-c",
        "DebuggingServer",
        "--maildir",
        maildir.to_str().unwrap(),
        "--jsonl",
        &dir.arg("log.jsonl"),
        "--keep",
        "3",
        "--print",
        "none",
    ]);
    let bodies: Vec<Vec<u8>> = (1..=5)
        .map(|n| format!("Subject: keep {n}\r\n\r\nbody {n}\r\n").into_bytes())
        .collect();
    for body in &bodies {
        assert_eq!(
            send(port, &[("a@example.com", &["b@example.com"], body)]),
            ["ok"]
        );
    }
    let files = maildir_files(&maildir);
    let kept: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
    assert_eq!(kept, bodies[2..].to_vec());
    let log = fs::read_to_string(dir.path("log.jsonl")).unwrap();
    let subjects: Vec<&str> = log
        .lines()
        .map(|l| {
            l.split("\"subject\":\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(subjects, ["keep 3", "keep 4", "keep 5"]);
}

#[test]
fn jsonl_to_stdout_replaces_the_printed_block() {
    let (proc, port) = start_smtpd(&["-n", "-c", "DebuggingServer", "--jsonl", "-"]);
    let body = b"Subject: =?utf-8?q?caf=C3=A9?= \"quoted\"\r\nTo: b@example.com\r\n\r\nhi\r\n";
    assert_eq!(
        send(
            port,
            &[("a@example.com", &["b@example.com", "c@example.com"], body)]
        ),
        ["ok"]
    );
    assert!(proc.wait_stdout_count("\n", 1, Duration::from_secs(5)));
    let stdout = proc.stdout();
    assert!(!stdout.contains("MESSAGE FOLLOWS"), "{stdout}");
    let check = r#"
import json, sys
r = json.loads(sys.argv[1])
print(r['headers']['subject'], [x['address'] for x in r['recipients']], r['stored'], r['size'])
"#;
    let out = python_ok(check, &[stdout.lines().next().unwrap()]);
    assert_eq!(
        out,
        format!(
            "=?utf-8?q?caf=C3=A9?= \"quoted\" ['b@example.com', 'c@example.com'] [] {}\n",
            body.len()
        )
    );
}

#[test]
fn print_raw_writes_the_message_as_stored() {
    let (proc, port) = start_smtpd(&["-n", "-c", "DebuggingServer", "--print", "raw"]);
    let body = tricky_body(3);
    assert_eq!(
        send(port, &[("a@example.com", &["b@example.com"], &body)]),
        ["ok"]
    );
    assert!(wait_until(Duration::from_secs(5), || proc
        .stdout_bytes()
        .len()
        >= body.len()));
    assert_eq!(proc.stdout_bytes(), body);
}

#[test]
fn capture_options_need_the_debugging_server() {
    let out = support::run(
        {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_smtpd"));
            cmd.args([
                "-n",
                "-c",
                "Sink",
                "--maildir",
                "/nonexistent/x",
                "127.0.0.1:0",
            ]);
            cmd
        },
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("are DebuggingServer options"),
        "{}",
        out.stderr
    );
}
