//! Every example in `examples/` is exercised here: its logic is compiled into this test (each
//! example keeps its work in bounded functions that `main` calls), and the built example
//! binaries are run as `cargo run --example <name>` would run them.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../examples/run_in_thread.rs"]
mod run_in_thread;

#[allow(dead_code)]
#[path = "../examples/drive_manually.rs"]
mod drive_manually;

#[allow(dead_code)]
#[path = "../examples/nested_epoll.rs"]
mod nested_epoll;

#[allow(dead_code)]
#[path = "../examples/chat_room.rs"]
mod chat_room;

#[allow(dead_code)]
#[path = "../examples/custom_server.rs"]
mod custom_server;

#[allow(dead_code)]
#[path = "../examples/echo_line_protocol.rs"]
mod echo_line_protocol;

#[allow(dead_code)]
#[path = "../examples/adopt_listener.rs"]
mod adopt_listener;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn run_in_thread_with_graceful_shutdown() {
    let received = run_in_thread::demo(true).unwrap();
    assert_eq!(received.len(), 2);
    assert!(received[1].data.starts_with(b"Subject: message 2\r\n"));
}

#[test]
fn run_in_thread_with_stop_handle() {
    assert_eq!(run_in_thread::demo(false).unwrap().len(), 2);
}

#[test]
fn drive_manually_never_sleeps_past_a_frame() {
    let frame = Duration::from_millis(5);
    let stats = drive_manually::demo(frame, 3, LIMIT).unwrap();
    assert_eq!(stats.messages.len(), 3);
    assert_eq!(stats.messages[2].data, b"#2");
    assert!(stats.longest_nap <= frame);
    assert!(stats.frames > 1 && stats.hooks > 0, "{stats:?}");
}

#[test]
fn nested_epoll_serves_work_that_does_not_wake_the_descriptor() {
    let stats = nested_epoll::demo(3, Duration::from_millis(50), LIMIT).unwrap();
    // Each answer came from a loop timer: it only fired because the host honoured next_timeout.
    assert_eq!(stats.replies, vec!["250 OK: answered by a loop timer"; 3]);
    // Each ping was handed over with Reactor::notify, which does not make the fd readable.
    assert_eq!(stats.pings, 3);
    assert!(stats.invisible_work >= 1, "{stats:?}");
    assert!(stats.reactor_wakeups >= 1, "{stats:?}");
}

#[test]
fn chat_room_pushes_each_line_to_every_other_member() {
    let (alice, bob) = chat_room::demo(LIMIT).unwrap();
    assert_eq!(
        alice,
        [
            "* welcome, you are guest1",
            "* guest2 joined",
            "* you are now alice",
            "* guest2 is now bob",
            "bob: bye alice",
            "* bob left",
        ]
    );
    assert_eq!(
        bob,
        [
            "* welcome, you are guest2",
            "* guest1 is now alice",
            "* you are now bob",
            "alice: hi bob",
            "* bye",
        ]
    );
}

#[test]
fn custom_server_port_accepts_its_domain_and_refuses_relaying() {
    let (replies, mailboxes) = custom_server::demo(LIMIT).unwrap();
    assert_eq!(replies, ["250 OK", "550 not relaying to that domain"]);
    assert_eq!(mailboxes.len(), 1);
    assert_eq!(
        mailboxes["bob@example.org"],
        [b"Subject: 1\r\n\r\nhi".to_vec()]
    );
}

const ECHO_TRANSCRIPT: &str = "+OK echo ready\r\nHELLO\r\n+OK got 6 bytes\r\n\r\n\r\n\
                               -ERR bad length\r\nMIXED CASE\r\n+OK bye\r\n";

#[test]
fn echo_line_protocol_port_answers_the_script() {
    assert_eq!(echo_line_protocol::demo(LIMIT).unwrap(), ECHO_TRANSCRIPT);
}

/// The Python original of the echo port, run by CPython 3.11's asynchat, answers the same
/// script byte for byte. Skipped where python3 has no asynchat (3.12 removed it).
#[test]
fn echo_line_protocol_matches_its_python_original() {
    let has_asynchat = Command::new("python3")
        .args(["-W", "ignore", "-c", "import asynchat"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_asynchat,
        "python3 with asynchat (CPython <= 3.11) is required for this comparison"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/python/echo_line_protocol.py"
    );
    let child = Spawned::new(
        Command::new("python3")
            .args(["-W", "ignore", script, "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let port = child.read_line();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        echo_line_protocol::run_script(addr).unwrap(),
        ECHO_TRANSCRIPT
    );
}

#[test]
fn adopt_listener_serves_a_std_listener() {
    let messages = adopt_listener::demo(LIMIT).unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].data, b"adopted");
}

/// Real socket activation: systemd-socket-activate binds, passes the socket as fd 3 with
/// LISTEN_FDS/LISTEN_PID, and the example serves it. Skipped where the tool is missing.
#[test]
fn adopt_listener_under_systemd_socket_activation() {
    let binary = example_binary("adopt_listener");
    assert!(
        Command::new("systemd-socket-activate")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "systemd-socket-activate (Debian package systemd) is required; .ci/run installs it"
    );
    // A free port (the small race with other processes is harmless on loopback in CI).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Spawned::new(
        Command::new("systemd-socket-activate")
            .arg("-l")
            .arg(format!("127.0.0.1:{port}"))
            .arg(&binary)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + LIMIT;
    let mut client = loop {
        match smtpd::testing::Client::connect(addr) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("no server on {addr}: {e}"),
        }
    };
    assert_eq!(client.greeting().code, 220);
    client.ehlo("activated.example").unwrap();
    let reply = client
        .send_mail("a@example.com", &["b@example.com"], b"via fd 3")
        .unwrap();
    assert_eq!(reply.to_string(), "250 OK");
    assert_eq!(
        child.read_line(),
        format!("serving inherited descriptor 3 on 127.0.0.1:{port}")
    );
    assert_eq!(
        child.read_line(),
        "a@example.com -> [\"b@example.com\"]: 8 bytes"
    );
}

/// Runs each example binary as `cargo run --example <name>` would (they are built by
/// `cargo test`) and checks that it finishes successfully within the time limit.
#[test]
fn example_binaries_run_to_completion() {
    let expectations = [
        ("run_in_thread", "server thread finished; 2 messages"),
        ("drive_manually", "3 messages"),
        ("nested_epoll", "answered by a loop timer"),
        ("chat_room", "alice hears: * bob left"),
        ("custom_server", "bob@example.org: 1 message(s)"),
        ("echo_line_protocol", "+OK bye"),
        (
            "adopt_listener",
            "received 1 message(s) on an adopted socket",
        ),
    ];
    for (name, expected) in expectations {
        let binary = example_binary(name);
        let mut child = Command::new(&binary)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("example {name} did not finish within {LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(
            status.success(),
            "example {name} failed: {status}\n{out}\n{err}"
        );
        assert!(out.contains(expected), "example {name} printed:\n{out}");
    }
}

/// `target/<profile>/examples/<name>`, next to this test's own `deps` directory. A plain
/// `cargo test` builds every example first; a test run that did not fails here, loudly.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run the whole `cargo test` (it builds the examples)",
        path.display()
    );
    path
}

/// A child process whose stdout lines arrive on a channel (read by a helper thread, so a read
/// can time out), killed by its own id when the test ends, even on failure.
struct Spawned {
    process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Spawned {
    fn new(mut process: std::process::Child) -> Spawned {
        use std::io::BufRead;
        let stdout = process.stdout.take().expect("stdout is piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned { process, lines }
    }

    /// The next stdout line, waiting at most [`LIMIT`].
    fn read_line(&self) -> String {
        self.lines
            .recv_timeout(LIMIT)
            .expect("the child printed nothing in time")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// `examples/custom_cli.rs`: a user's own binary with the whole `smtpd` command line and a
/// class of its own, chosen with `-c`. Python's smtplib sends to it; SIGTERM ends it cleanly.
#[test]
fn custom_cli_registers_its_own_class() {
    let binary = example_binary("custom_cli");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&binary)
        .args(["-n", "-c", "Counter", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "custom_cli never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import smtplib; c = smtplib.SMTP('127.0.0.1', {port}, timeout=10); \
             c.sendmail('a@example.com', ['b@example.com'], 'hi'); \
             c.sendmail('c@example.com', ['b@example.com'], 'again'); c.quit()"
        ))
        .status()
        .unwrap();
    assert!(sent.success());
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(
        out,
        "message 1 from a@example.com\nmessage 2 from c@example.com\n"
    );
    // An unknown class names the registered one among those available.
    let out = Command::new(&binary)
        .args(["-n", "-c", "Nope", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Counter"));
}

/// `examples/debugging_server.rs` prints what smtplib sends it.
#[test]
fn debugging_server_example_prints_a_message() {
    let binary = example_binary("debugging_server");
    let mut child = Command::new(&binary)
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "listening on 127.0.0.1:PORT" on stderr tells the port.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let sent = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import smtplib; c = smtplib.SMTP('127.0.0.1', {port}, timeout=10); \
             c.sendmail('a@example.com', ['b@example.com'], 'Subject: ex\\r\\n\\r\\nexample body'); c.quit()"
        ))
        .status()
        .unwrap();
    assert!(sent.success());
    let pid = child.id().to_string();
    // Give the server a moment to flush, then end it.
    std::thread::sleep(Duration::from_millis(200));
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    assert!(
        out.contains("---------- MESSAGE FOLLOWS ----------"),
        "{out}"
    );
    assert!(out.contains("X-Peer: 127.0.0.1\n\nexample body\n"), "{out}");
}

/// `examples/conn_scale.rs` (the benchmark's connection-scale client), on a small scale.
#[test]
fn conn_scale_example_reports_memory_and_latency() {
    let server = Command::new(env!("CARGO_BIN_EXE_smtpd"))
        .args(["-n", "-c", "Sink", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(server);
    let mut stderr = std::io::BufReader::new(server.0.stderr.take().unwrap());
    let mut port = None;
    let deadline = Instant::now() + LIMIT;
    while port.is_none() {
        assert!(
            Instant::now() < deadline,
            "smtpd never said where it listens"
        );
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            port = rest
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok());
        }
    }
    let out = Command::new(example_binary("conn_scale"))
        .args([
            format!("127.0.0.1:{}", port.unwrap()),
            server.0.id().to_string(),
            "50".into(),
            "10".into(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "idle=50",
        "bytes_per_conn=",
        "p50_us=",
        "p90_us=",
        "p99_us=",
    ] {
        assert!(text.contains(key), "{key} missing from {text:?}");
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
