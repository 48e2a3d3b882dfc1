//! The `smtpd` command line, checked against `python3 -m smtpd`: version and help, argument
//! errors, server classes, privilege dropping, IPv6, SIZE and SMTPUTF8 in EHLO, and graceful
//! shutdown on SIGTERM/SIGINT.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    assert_in_order, free_port, python_ok, run, start_cpython_smtpd, start_smtpd, Output, Proc,
    RawClient, SMTPD,
};

const QUICK: Duration = Duration::from_secs(20);

fn ours(args: &[&str]) -> Output {
    let mut cmd = Command::new(SMTPD);
    cmd.args(args);
    run(cmd, QUICK)
}

fn cpython(args: &[&str]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.args(["-W", "ignore", "-m", "smtpd"]).args(args);
    run(cmd, QUICK)
}

#[test]
fn version_prints_name_and_version() {
    let want = format!("smtpd-rs {}\n", env!("CARGO_PKG_VERSION"));
    for flag in ["-V", "--version"] {
        let out = ours(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        assert_eq!(out.stdout, want, "{flag}");
        assert_eq!(out.stderr, "", "{flag}");
    }
}

#[test]
fn help_prints_usage() {
    for flag in ["-h", "--help"] {
        let out = ours(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        assert!(out.stdout.contains("Usage:"), "{flag}: {}", out.stdout);
        assert!(out.stdout.contains("--nosetuid"), "{flag}: {}", out.stdout);
        assert_eq!(out.stderr, "", "{flag}");
    }
}

/// Each bad command line exits 1 with CPython's message on stderr.
#[test]
fn argument_errors_match_cpython() {
    let table: &[(&[&str], &str)] = &[
        (&["-n", "x"], "Bad local spec: x"),
        (&["-n", "x:y"], "Bad local port: x:y"),
        (&["-n", "127.0.0.1:1", "remote"], "Bad remote spec: remote"),
        (&["-n", "127.0.0.1:1", "r:p"], "Bad remote port: r:p"),
        (&["-n", "-s", "abc"], "Invalid size: abc"),
        (
            &["-n", "a:1", "b:2", "c:3"],
            "Invalid arguments: a:1, b:2, c:3",
        ),
        (&["-n", "-x"], "option -x not recognized"),
        (&["--bogus"], "option --bogus not recognized"),
        (&["-n", "-s"], "option -s requires argument"),
    ];
    for (args, message) in table {
        let theirs = cpython(args);
        assert_eq!(
            theirs.status.code(),
            Some(1),
            "cpython {args:?}: {theirs:?}"
        );
        let their_line = theirs
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .to_string();
        assert_eq!(their_line, *message, "CPython's message for {args:?}");

        let out = ours(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            out.stderr.lines().any(|l| l == their_line),
            "{args:?}: stderr lacks {their_line:?}:\n{}",
            out.stderr
        );
        assert_eq!(out.stdout, "", "{args:?}");
    }
}

fn port_spec() -> String {
    format!("127.0.0.1:{}", support::free_port())
}

#[test]
fn unknown_class_names_the_available_ones() {
    let spec = port_spec();
    let out = ours(&["-n", "-c", "NoSuchClass", &spec]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    for word in ["NoSuchClass", "DebuggingServer", "Sink"] {
        assert!(
            out.stderr.contains(word),
            "stderr lacks {word}: {}",
            out.stderr
        );
    }
}

#[test]
fn mailman_proxy_starts_without_mailman_and_defers_list_mail() {
    let (upstream, upstream_port) = start_smtpd(&["-n", "-c", "DebuggingServer"]);
    let remote = format!("127.0.0.1:{upstream_port}");
    let closed = format!("127.0.0.1:{}", free_port());
    let proxy_port = free_port();
    let local = format!("127.0.0.1:{proxy_port}");
    let mut proxy = Proc::smtpd(&[
        "-n",
        "-c",
        "MailmanProxy",
        "--mailman-lmtp",
        &closed,
        &local,
        &remote,
    ]);
    proxy.wait_listening(SocketAddr::from(([127, 0, 0, 1], proxy_port)));
    // A warning at start-up, not an exit.
    assert!(
        proxy.stderr().contains("does not answer") && proxy.stderr().contains("451"),
        "{}",
        proxy.stderr()
    );
    let out = python_ok(
        r#"
import smtplib, sys
c = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10)
# A list candidate while Mailman is away: 451 at RCPT, so the sender keeps it.
print(c.sendmail('a@example.com', ['test@example.com', 'not-a-list@example.com'],
                 b'Subject: via mailman proxy\r\n\r\nrelayed part\r\n'))
c.quit()
"#,
        &[&proxy_port.to_string()],
    );
    assert!(out.contains("'test@example.com': (451"), "{out}");
    assert!(
        upstream.wait_stdout_count("relayed part", 1, Duration::from_secs(5)),
        "{}",
        upstream.stdout()
    );
}

#[test]
fn mailman_proxy_options_are_checked() {
    let spec = port_spec();
    let table: &[(&[&str], &str)] = &[
        (
            &["--mailman-lmtp", "nowhere"],
            "Invalid Mailman LMTP address: nowhere",
        ),
        (
            &["--mailman-suffixes", "all"],
            "Invalid Mailman suffixes: all",
        ),
        (
            &[
                "--mailman-lmtp",
                "127.0.0.1:1",
                "--mailman2-prefix",
                "/nonexistent",
            ],
            "not both",
        ),
    ];
    for (extra, message) in table {
        let mut args = vec!["-n", "-c", "MailmanProxy"];
        args.extend_from_slice(extra);
        args.extend([spec.as_str(), "127.0.0.1:25"]);
        let out = ours(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("listening on"), "{}", out.stderr);
    }
}

#[test]
fn pure_proxy_is_the_default_class_and_relays_to_the_upstream() {
    // The upstream: our own DebuggingServer binary.
    let (upstream, upstream_port) = start_smtpd(&["-n", "-c", "DebuggingServer"]);
    let remote = format!("127.0.0.1:{upstream_port}");
    let proxy_port = free_port();
    let local = format!("127.0.0.1:{proxy_port}");
    // No -c: PureProxy, as in Python.
    let mut proxy = Proc::smtpd(&["-n", &local, &remote]);
    proxy.wait_listening(SocketAddr::from(([127, 0, 0, 1], proxy_port)));
    let out = python_ok(
        r#"
import smtplib, sys
c = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10)
print(c.sendmail('a@example.com', ['b@example.com'], b'Subject: relayed\r\n\r\nvia the proxy\r\n'))
c.quit()
"#,
        &[&proxy_port.to_string()],
    );
    assert_eq!(out.trim(), "{}", "no recipient refused");
    assert!(
        upstream.wait_stdout_count("via the proxy", 1, Duration::from_secs(5)),
        "{}",
        upstream.stdout()
    );
    let printed = upstream.stdout();
    assert_in_order(
        &printed,
        &[
            "Received: from ",
            "by ",
            "Subject: relayed",
            "X-Peer: 127.0.0.1",
            "via the proxy",
        ],
    );
    // With the upstream gone, the proxy answers 451: the sender keeps the message.
    drop(upstream);
    let out = python_ok(
        r#"
import smtplib, sys
c = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10)
try:
    c.sendmail('a@example.com', ['b@example.com'], b'Subject: lost?\r\n\r\nno\r\n')
    print('accepted')
except smtplib.SMTPResponseException as e:
    # Live relaying (the default) hears it at MAIL already.
    print(e.smtp_code)
"#,
        &[&proxy_port.to_string()],
    );
    assert_eq!(out.trim(), "451");
}

#[test]
fn pure_proxy_options_are_checked() {
    let spec = port_spec();
    let out = ours(&["-n", "--relay-mode", "sometimes", &spec]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("Invalid relay mode: sometimes"),
        "{}",
        out.stderr
    );
    let out = ours(&["-n", "--trusted", "not-a-net", &spec, "127.0.0.1:25"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("Invalid trusted network: not-a-net"),
        "{}",
        out.stderr
    );
    let out = ours(&["-n", "--upstream-timeout", "0", &spec]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("Invalid upstream timeout: 0"),
        "{}",
        out.stderr
    );
}

fn id(flag: &str, user: Option<&str>) -> u32 {
    let mut cmd = Command::new("id");
    cmd.arg(flag);
    if let Some(user) = user {
        cmd.arg(user);
    }
    let out = run(cmd, QUICK);
    assert!(out.status.success(), "id {flag} {user:?}: {out:?}");
    out.stdout.trim().parse().expect("numeric id")
}

/// The `Uid:`/`Gid:` fields of /proc/PID/status (real, effective, saved, filesystem).
fn proc_ids(pid: u32, key: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line[key.len()..]
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

const SEND_ONE: &str = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
with smtplib.SMTP(host, port, local_hostname='client.example', timeout=20) as s:
    r = s.sendmail('a@example.com', ['b@example.com'],
                   b'Subject: ' + sys.argv[3].encode() + b'\r\n\r\nbody\r\n')
    print('refused', r)
"#;

#[test]
fn without_n_drops_privileges_to_nobody() {
    let port = support::free_port();
    let spec = format!("127.0.0.1:{port}");
    let mut proc = Proc::smtpd(&["-c", "DebuggingServer", &spec]);
    if id("-u", None) == 0 {
        proc.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
        let (uid, gid) = (id("-u", Some("nobody")), id("-g", Some("nobody")));
        assert_eq!(proc_ids(proc.pid(), "Uid:"), vec![uid; 4]);
        assert_eq!(proc_ids(proc.pid(), "Gid:"), vec![gid; 4]);
        assert_eq!(proc_ids(proc.pid(), "Groups:"), vec![gid]);
        let out = python_ok(SEND_ONE, &["127.0.0.1", &port.to_string(), "as-nobody"]);
        assert_eq!(out.trim(), "refused {}");
        assert!(
            proc.wait_stdout_count("Subject: as-nobody", 1, Duration::from_secs(5)),
            "message not printed:\n{}",
            proc.stdout()
        );
    } else {
        let status = proc.expect_exit(QUICK);
        assert_eq!(status.code(), Some(1));
        assert!(
            proc.stderr()
                .contains("Cannot setuid \"nobody\"; try running with -n option."),
            "{}",
            proc.stderr()
        );
    }
}

#[test]
fn ipv6_local_spec() {
    if let Err(e) = TcpListener::bind("[::1]:0") {
        panic!("this machine cannot bind [::1]:0 ({e}); the IPv6 test needs loopback IPv6");
    }
    let port = support::free_port_v6();
    let spec = format!("[::1]:{port}");
    let mut proc = Proc::smtpd(&["-n", "-c", "DebuggingServer", &spec]);
    proc.wait_listening(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)));
    let out = python_ok(SEND_ONE, &["::1", &port.to_string(), "over-v6"]);
    assert_eq!(out.trim(), "refused {}");
    assert!(
        proc.wait_stdout_count("------------ END MESSAGE", 1, Duration::from_secs(5)),
        "{}",
        proc.stdout()
    );
    support::assert_in_order(&proc.stdout(), &["Subject: over-v6\n", "X-Peer: ::1\n"]);
}

/// Prints the EHLO keywords, then tries a 200-byte message with sendmail (SIZE= in MAIL) and
/// once more by hand without SIZE=, printing each outcome; then QUIT if argv[2] is `quit`.
/// (CPython 3.11 stays in DATA state after `552 Too much mail data`, so its dialogue ends with
/// the data reply; ours returns to command state and answers QUIT.)
const SIZE_SCRIPT: &str = r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.example', timeout=20)
code, _ = s.ehlo()
print('ehlo', code)
for line in s.ehlo_resp.decode().split('\n')[1:]:
    print('ext', line)
msg = b'Subject: big\r\n\r\n' + b'x' * (200 - 18) + b'\r\n'
assert len(msg) == 200
try:
    print('sendmail', s.sendmail('a@example.com', ['b@example.com'], msg))
except smtplib.SMTPSenderRefused as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
s.rset()
print('mail', *s.docmd('MAIL', 'FROM:<a@example.com>'))
print('rcpt', *s.rcpt('b@example.com'))
code, text = s.data(msg)
print('data', code, text.decode())
if sys.argv[2:] == ['quit']:
    print('quit', *s.quit())
s.close()
"#;

fn size_dialogue(args: &[&str], cpython_args: &[&str]) -> (String, String) {
    let (_ours, port) = start_smtpd(args);
    let out = python_ok(SIZE_SCRIPT, &[&port.to_string(), "quit"]);
    let (_theirs, their_port) = start_cpython_smtpd(cpython_args);
    let theirs = python_ok(SIZE_SCRIPT, &[&their_port.to_string()]);
    // The same dialogue, plus our answer to QUIT.
    (out, theirs + "quit 221 b'Bye'\n")
}

#[test]
fn size_limit_100_is_advertised_and_enforced() {
    let args = ["-n", "-c", "DebuggingServer", "-s", "100"];
    let (out, theirs) = size_dialogue(&args, &args);
    let want = "\
ehlo 250
ext SIZE 100
ext 8BITMIME
ext HELP
refused 552 Error: message size exceeds fixed maximum message size
mail 250 b'OK'
rcpt 250 b'OK'
data 552 Error: Too much mail data
quit 221 b'Bye'
";
    assert_eq!(theirs, want, "CPython's dialogue changed");
    assert_eq!(out, want);
}

#[test]
fn size_zero_means_no_limit_and_no_size_keyword() {
    let args = ["-n", "-c", "DebuggingServer", "-s", "0"];
    let (out, theirs) = size_dialogue(&args, &args);
    let want = "\
ehlo 250
ext 8BITMIME
ext HELP
sendmail {}
mail 250 b'OK'
rcpt 250 b'OK'
data 250 OK
quit 221 b'Bye'
";
    assert_eq!(theirs, want, "CPython's dialogue changed");
    assert_eq!(out, want);
}

/// Without `-s` the limit is 32 MiB and is advertised, as CPython's documentation says. (CPython
/// 3.11's `-m smtpd` itself passes `None` and advertises nothing; ours follows the documented
/// default, so CPython is run with `-s 33554432` for the comparison.)
#[test]
fn default_size_is_32_mib() {
    let (out, theirs) = size_dialogue(
        &["-n", "-c", "DebuggingServer"],
        &["-n", "-c", "DebuggingServer", "-s", "33554432"],
    );
    assert!(out.contains("ext SIZE 33554432\n"), "{out}");
    assert_eq!(out, theirs);
}

#[test]
fn smtputf8_flag_is_advertised() {
    let (_with, port) = start_smtpd(&["-n", "-c", "Sink", "-u"]);
    let out = python_ok(SIZE_SCRIPT, &[&port.to_string(), "quit"]);
    assert!(out.contains("\next SMTPUTF8\n"), "{out}");
    let (_without, port) = start_smtpd(&["-n", "-c", "Sink"]);
    let out = python_ok(SIZE_SCRIPT, &[&port.to_string(), "quit"]);
    assert!(!out.contains("SMTPUTF8"), "{out}");
}

#[test]
fn sigterm_finishes_the_transaction_then_says_421() {
    let (mut proc, port) = start_smtpd(&["-n", "-c", "DebuggingServer"]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let mut busy = RawClient::connect(addr);
    assert!(busy.reply()[0].starts_with("220 "));
    let mut idle = RawClient::connect(addr);
    assert!(idle.reply()[0].starts_with("220 "));

    let ehlo = busy.cmd("EHLO client.example");
    assert!(ehlo.last().unwrap().starts_with("250 "), "{ehlo:?}");
    assert_eq!(busy.cmd("MAIL FROM:<a@example.com>"), ["250 OK"]);
    assert_eq!(busy.cmd("RCPT TO:<b@example.com>"), ["250 OK"]);
    assert_eq!(busy.cmd("DATA"), ["354 End data with <CR><LF>.<CR><LF>"]);
    busy.send("Subject: during shutdown\r\n\r\nfirst line\r\n");
    busy.send("second line");

    proc.signal("TERM");

    // The idle client hears 421 at once and is disconnected.
    let started = Instant::now();
    let line = idle.line().expect("421 for the idle client");
    assert!(line.starts_with("421 "), "idle client got {line:?}");
    assert!(idle.at_eof(), "idle connection left open");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The busy client may finish its message: 250, then 421 and the close.
    busy.send("\r\n.\r\n");
    assert_eq!(busy.reply(), ["250 OK"]);
    let line = busy.line().expect("421 after the message");
    assert!(line.starts_with("421 "), "busy client got {line:?}");
    assert!(busy.at_eof(), "busy connection left open");

    let status = proc.expect_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proc.stderr());
    support::assert_in_order(
        &proc.stdout(),
        &[
            "---------- MESSAGE FOLLOWS ----------\n",
            "Subject: during shutdown\n",
            "X-Peer: 127.0.0.1\n",
            "\nfirst line\nsecond line\n",
            "------------ END MESSAGE ------------\n",
        ],
    );
}

#[test]
fn sigint_without_clients_exits_promptly() {
    let (mut proc, _port) = start_smtpd(&["-n", "-c", "DebuggingServer"]);
    let started = Instant::now();
    proc.signal("INT");
    let status = proc.expect_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proc.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn sigterm_without_clients_exits_promptly() {
    let (mut proc, _port) = start_smtpd(&["-n", "-c", "Sink"]);
    proc.signal("TERM");
    let status = proc.expect_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "stderr:\n{}", proc.stderr());
}

/// A DebuggingServer whose stdout is gone (the reader of its pipe went away) still accepts
/// mail, says so once on stderr, and never panics.
#[test]
fn debugging_server_survives_a_closed_stdout() {
    let port = free_port();
    let mut child = Command::new(SMTPD)
        .args(["-n", "-c", "DebuggingServer", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end of its stdout pipe: every write now fails with EPIPE.
    drop(child.stdout.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = python_ok(
        r#"
import smtplib, sys
c = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10)
for i in range(3):
    print(c.sendmail('a@example.com', ['b@example.com'], 'Subject: %d\r\n\r\nbody' % i))
c.quit()
"#,
        &[&port.to_string()],
    );
    assert_eq!(out.trim(), "{}\n{}\n{}", "every message accepted");
    assert!(child.try_wait().unwrap().is_none(), "the server died");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("DebuggingServer cannot print messages")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The per-message log line names the null sender as `from=<>`.
#[test]
fn the_null_sender_is_logged_as_empty_angle_brackets() {
    let (proc, port) = start_smtpd(&["-n", "-c", "Sink"]);
    python_ok(
        "import smtplib, sys\n\
         s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]))\n\
         s.sendmail('<>', ['b@example.com'], 'Subject: bounce\\r\\n\\r\\nx\\r\\n')\n\
         s.quit()\n",
        &[&port.to_string()],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc.stderr().contains("from=<>") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(proc.stderr().contains("from=<> to="), "{}", proc.stderr());
    assert!(!proc.stderr().contains("from=<<>>"), "{}", proc.stderr());
}

/// `--hostname` names the server in the greeting and the EHLO reply; `--bare-lf normalize`
/// takes a body with lone LFs that the default refuses.
#[test]
fn hostname_and_bare_lf_options() {
    let script = "import smtplib, sys\n\
        s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]))\n\
        print(s.ehlo()[1].decode().splitlines()[0])\n\
        try:\n    s.sendmail('a@example.com', ['b@example.com'], b'Subject: lf\\nbody\\n')\n    print('accepted')\n\
        except smtplib.SMTPDataError as e:\n    print('refused', e.smtp_code)\n\
        s.quit()\n";
    let (_proc, port) = start_smtpd(&["-n", "-c", "Sink", "--hostname", "mx.test.example"]);
    let out = python_ok(script, &[&port.to_string()]);
    assert_eq!(out, "mx.test.example\nrefused 554\n", "{out}");
    let (_proc, port) = start_smtpd(&["-n", "-c", "Sink", "--bare-lf", "normalize"]);
    let out = python_ok(script, &[&port.to_string()]);
    assert!(out.ends_with("accepted\n"), "{out}");
    let out = ours(&["--hostname", "two words"]);
    assert!(out.stderr.contains("Invalid host name"), "{out:?}");
    let out = ours(&["--bare-lf", "maybe"]);
    assert!(out.stderr.contains("Invalid --bare-lf policy"), "{out:?}");
}
