//! Shared helpers for the process-level tests: free ports, child processes that are always
//! killed (a Drop guard), output captured to files that can be polled, bounded waits, and a
//! raw SMTP client over std sockets.

// Each test binary uses only part of this module.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The `smtpd` binary under test.
pub const SMTPD: &str = env!("CARGO_BIN_EXE_smtpd");

/// How long a server may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a Python client script may run.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// A port that was free a moment ago on ::1.
pub fn free_port_v6() -> u16 {
    let listener = TcpListener::bind("[::1]:0").expect("bind [::1]:0");
    listener.local_addr().unwrap().port()
}

/// Polls `done` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh empty directory under the system temp dir, removed by [`Proc`]'s Drop.
fn scratch_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("smtpd-it-{}-{}-{}", std::process::id(), n, nanos));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A child process whose stdout and stderr go to files (so they can be polled while it runs).
/// Dropping it kills the process if it is still running and reaps it.
pub struct Proc {
    child: Child,
    status: Option<ExitStatus>,
    dir: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub name: String,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and output captured to files.
    pub fn spawn(mut cmd: Command) -> Proc {
        let dir = scratch_dir();
        let stdout_path = dir.join("stdout");
        let stderr_path = dir.join("stderr");
        let out = File::create(&stdout_path).unwrap();
        let err = File::create(&stderr_path).unwrap();
        let name = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            status: None,
            dir,
            stdout_path,
            stderr_path,
            name,
        }
    }

    /// `smtpd ARGS...`.
    pub fn smtpd(args: &[&str]) -> Proc {
        let mut cmd = Command::new(SMTPD);
        cmd.args(args);
        Proc::spawn(cmd)
    }

    /// CPython's `python3 -W ignore -m smtpd ARGS...`.
    pub fn cpython_smtpd(args: &[&str]) -> Proc {
        let mut cmd = Command::new("python3");
        cmd.args(["-W", "ignore", "-m", "smtpd"]).args(args);
        Proc::spawn(cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.stdout_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout_bytes()).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_status();
            status.is_some()
        });
        status
    }

    /// Waits at most `timeout` for the exit and panics (with the output) if it does not come.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!(
                "{} still running after {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            ),
        }
    }

    /// Sends a signal (`TERM`, `INT`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits until `addr` accepts a TCP connection (the probe connection is closed at once),
    /// panicking with the output if the process exits first or the time runs out.
    pub fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_status() {
                panic!(
                    "{} exited ({status}) before listening on {addr}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening on {addr} after {START_TIMEOUT:?}\nstderr:\n{}",
                self.name,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits at most `timeout` until stdout contains `needle` `count` times.
    pub fn wait_stdout_count(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.stdout().matches(needle).count() >= count)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `smtpd ARGS... 127.0.0.1:PORT` on a free port and waits until it listens.
pub fn start_smtpd(args: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let spec = format!("127.0.0.1:{port}");
    let mut all: Vec<&str> = args.to_vec();
    all.push(&spec);
    let mut proc = Proc::smtpd(&all);
    proc.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    (proc, port)
}

/// Starts CPython's `python3 -m smtpd ARGS... 127.0.0.1:PORT` and waits until it listens.
pub fn start_cpython_smtpd(args: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let spec = format!("127.0.0.1:{port}");
    let mut all: Vec<&str> = args.to_vec();
    all.push(&spec);
    let mut proc = Proc::cpython_smtpd(&all);
    proc.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    (proc, port)
}

/// The captured result of a finished short-lived command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion within `timeout` (killing it and panicking otherwise).
pub fn run(mut cmd: Command, timeout: Duration) -> Output {
    let name = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{name} did not finish within {timeout:?}");
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Runs `python3 -c SCRIPT ARGS...` within [`SCRIPT_TIMEOUT`].
pub fn python(script: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    run(cmd, SCRIPT_TIMEOUT)
}

/// Runs a Python script that must succeed; returns its stdout.
pub fn python_ok(script: &str, args: &[&str]) -> String {
    let out = python(script, args);
    assert!(
        out.status.success(),
        "python script failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Asserts that `needles` occur in `haystack` in this order; returns the offset after the last.
pub fn assert_in_order(haystack: &str, needles: &[&str]) -> usize {
    let mut at = 0;
    for needle in needles {
        match haystack[at..].find(needle) {
            Some(i) => at += i + needle.len(),
            None => panic!(
                "{needle:?} not found (in order) after offset {at} in:\n{haystack}\nexpected order: {needles:#?}"
            ),
        }
    }
    at
}

/// A raw SMTP client over a std socket, every read bounded by a timeout.
pub struct RawClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let writer = stream.try_clone().unwrap();
        RawClient {
            reader: BufReader::new(stream),
            writer,
        }
    }

    /// The socket, to write raw bytes or shut it down.
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
    }

    pub fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("send");
    }

    /// One reply line without its CRLF; `None` on EOF. Panics on a timeout.
    pub fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_string()),
            Err(e) => panic!("reading a reply line: {e} (partial: {line:?})"),
        }
    }

    /// One whole (possibly multi-line) reply.
    pub fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self
                .line()
                .unwrap_or_else(|| panic!("EOF in a reply; so far {lines:?}"));
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// Sends `line` + CRLF and reads the reply.
    pub fn cmd(&mut self, line: &str) -> Vec<String> {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }

    /// True when the server closed the connection (EOF or reset), within the read timeout.
    pub fn at_eof(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => panic!("expected EOF, got {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("expected EOF, got error {e}"),
        }
    }
}
