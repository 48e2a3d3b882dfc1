//! Differential tests: the same scripted dialogues over loopback against CPython 3.11's
//! `smtpd.SMTPServer` (started by `tests/differential/cpython_server.py`) and against ours,
//! comparing every reply line, code and text (the greeting's product name aside).
//!
//! Each option set (size limit, SMTPUTF8, decode_data, sink or echo server) is one `#[test]`:
//! one CPython process and one reactor of ours, reused by every dialogue of the set, each
//! dialogue on its own connection(s). A step either expects the same replies from both servers
//! (`Same`), fixed replies from both (`Literal`, for what a client written against CPython
//! asserts), or states the intended difference: CPython's replies and ours (`Differ`, each one
//! listed in `docs/differences.md`).
//!
//! The `echo` servers answer a message with `250 ` and a JSON list of what `process_message`
//! received (mail_from, rcpt_tos, mail_options, rcpt_options, data), so envelopes, options and
//! data are compared on the wire too.
//!
//! Missing `python3` or a Python without `smtpd` (3.12 removed it) FAILS these tests; set
//! `SMTPD_PYTHON` to another interpreter.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use smtpd::reactor::{Reactor, StopHandle};
use smtpd::server::{Listener, Message, Outcome, Reply, ServerCtx, ServerOptions, SmtpServer};
use smtpd::smtp::BareLf;

/// The name both servers greet with (CPython's `socket.getfqdn` is patched to return it).
const HOST: &str = "mx.test.example";
/// CPython's `DATA_SIZE_DEFAULT`.
const DEFAULT_SIZE: usize = 33_554_432;
/// How long a step that expects no reply waits before calling it silence.
const SILENCE: Duration = Duration::from_millis(300);
/// How long any expected reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The two servers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// `process_message` returns `None`: `250 OK`.
    Sink,
    /// `process_message` answers `250 [mailfrom, rcpttos, mail_options, rcpt_options, data]`.
    Echo,
}

/// The constructor arguments both servers get.
#[derive(Clone, Copy, Debug)]
struct Opts {
    class: Class,
    data_size_limit: usize,
    smtputf8: bool,
    decode_data: bool,
}

impl Opts {
    const fn new(class: Class, data_size_limit: usize) -> Opts {
        Opts {
            class,
            data_size_limit,
            smtputf8: false,
            decode_data: false,
        }
    }
}

/// A CPython `smtpd` server in a child process, killed on drop.
struct CPython {
    child: Child,
    addr: SocketAddr,
}

impl CPython {
    fn start(opts: Opts) -> CPython {
        let python = std::env::var("SMTPD_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/differential/cpython_server.py"
        );
        let class = match opts.class {
            Class::Sink => "sink",
            Class::Echo => "echo",
        };
        let flag = |b: bool| if b { "1" } else { "0" };
        let mut child = Command::new(&python)
            .args(["-W", "ignore", script, HOST, class])
            .arg(opts.data_size_limit.to_string())
            .args([flag(opts.smtputf8), flag(opts.decode_data)])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the differential tests need `{python}` (CPython 3.11, with the smtpd module) \
                     to run the reference server, but it cannot be started: {e}. Install \
                     Python 3.11 or set SMTPD_PYTHON to one."
                )
            });
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
        let Ok(port) = line.trim().parse::<u16>() else {
            let mut err = String::new();
            let _ = child.stderr.take().expect("piped").read_to_string(&mut err);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the differential tests need `{python}` with CPython's smtpd module (Python \
                 3.11; 3.12 removed it), but the reference server did not start:\n{err}"
            );
        };
        CPython {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for CPython {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python's `json.dumps` of a string (ASCII only, `\uXXXX` escapes, lower-case hex).
fn py_json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// Python's `json.dumps` of a list of strings.
fn py_json_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| py_json_str(s)).collect();
    format!("[{}]", items.join(", "))
}

struct Sink;

impl SmtpServer for Sink {
    fn process_message(&mut self, _: &Message, _: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }
}

/// What `cpython_server.py`'s `Echo` answers, computed from our [`Message`].
struct Echo {
    decode_data: bool,
}

impl SmtpServer for Echo {
    fn process_message(&mut self, m: &Message, _: &mut ServerCtx<'_, '_>) -> Outcome {
        // CPython hands over bytes (shown as latin-1) or, with decode_data, text; and passes
        // no options with decode_data.
        let (data, options) = if self.decode_data {
            let text = String::from_utf8(m.data.clone()).expect("decode_data gives UTF-8");
            (text, None)
        } else {
            let text = m.data.iter().map(|&b| char::from(b)).collect();
            (text, Some((&m.mail_options, &m.rcpt_options)))
        };
        let (mail, rcpt) = match options {
            Some((mail, rcpt)) => (py_json_list(mail), py_json_list(rcpt)),
            None => ("null".to_owned(), "null".to_owned()),
        };
        let seen = format!(
            "[{}, {}, {mail}, {rcpt}, {}]",
            py_json_str(&m.mail_from),
            py_json_list(&m.rcpt_tos),
            py_json_str(&data)
        );
        Outcome::Reply(Reply::new(250, seen))
    }
}

/// Our server, on a reactor in a background thread, stopped on drop.
struct Ours {
    addr: SocketAddr,
    stop: StopHandle,
    thread: Option<thread::JoinHandle<()>>,
}

impl Ours {
    fn start(opts: Opts) -> Ours {
        Ours::start_with(opts, |_| {})
    }

    fn start_with(opts: Opts, tweak: impl FnOnce(&mut ServerOptions) + Send + 'static) -> Ours {
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut reactor = Reactor::new().expect("reactor");
            let mut options = ServerOptions::default();
            options.session.hostname = HOST.into();
            options.session.data_size_limit = opts.data_size_limit;
            options.session.enable_smtputf8 = opts.smtputf8;
            options.session.decode_data = opts.decode_data;
            // CPython joins message lines with "\n"; the echo compares the data itself.
            options.session.lf_newlines = opts.class == Class::Echo;
            tweak(&mut options);
            let server: Rc<RefCell<dyn SmtpServer>> = match opts.class {
                Class::Sink => Rc::new(RefCell::new(Sink)),
                Class::Echo => Rc::new(RefCell::new(Echo {
                    decode_data: opts.decode_data,
                })),
            };
            let addr = "127.0.0.1:0".parse().expect("address");
            let listener = Listener::bind(&mut reactor, addr, server, options).expect("bind");
            tx.send((listener.local_addr(), reactor.stop_handle()))
                .expect("test thread");
            reactor.run().expect("reactor run");
        });
        let (addr, stop) = rx.recv().expect("our server started");
        Ours {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dialogues
// ---------------------------------------------------------------------------------------------

/// What a step expects to read back.
#[derive(Clone, Debug)]
enum Expect {
    /// This many replies, the same from both servers.
    Same(usize),
    /// These replies, from both servers.
    Literal(Vec<String>),
    /// An intended difference: CPython's replies, then ours.
    Differ(Vec<String>, Vec<String>),
}

/// Bytes written to one connection (in chunks, with a pause between them), then replies read.
#[derive(Clone, Debug)]
struct Step {
    conn: usize,
    chunks: Vec<Vec<u8>>,
    expect: Expect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// QUIT on every connection: `221 Bye`, then the server closes.
    Quit,
    /// Just hang up (the dialogue left the servers in different states, or closed).
    HangUp,
}

#[derive(Clone, Debug)]
struct Dialogue {
    name: String,
    steps: Vec<Step>,
    end: End,
}

/// Builds a dialogue: `dlg("name").ehlo().cmd("MAIL FROM:<a@b>")...`.
struct D {
    dialogue: Dialogue,
    conn: usize,
}

fn dlg(name: &str) -> D {
    D {
        dialogue: Dialogue {
            name: name.to_owned(),
            steps: Vec::new(),
            end: End::Quit,
        },
        conn: 0,
    }
}

fn strings(replies: &[&str]) -> Vec<String> {
    replies.iter().map(|s| (*s).to_owned()).collect()
}

impl D {
    fn step(mut self, chunks: Vec<Vec<u8>>, expect: Expect) -> D {
        self.dialogue.steps.push(Step {
            conn: self.conn,
            chunks,
            expect,
        });
        self
    }

    /// Following steps use connection `conn` (opened, and its greeting compared, on first use).
    fn on(mut self, conn: usize) -> D {
        self.conn = conn;
        self
    }

    /// One command line (CRLF added), one reply, the same from both.
    fn cmd(self, line: impl AsRef<[u8]>) -> D {
        let mut bytes = line.as_ref().to_vec();
        bytes.extend_from_slice(b"\r\n");
        self.step(vec![bytes], Expect::Same(1))
    }

    fn cmds(mut self, lines: &[&str]) -> D {
        for line in lines {
            self = self.cmd(line);
        }
        self
    }

    /// Raw bytes in one write, `n` replies, the same from both.
    fn send(self, bytes: impl AsRef<[u8]>, n: usize) -> D {
        self.step(vec![bytes.as_ref().to_vec()], Expect::Same(n))
    }

    /// Raw bytes in several writes with pauses between them, `n` replies, the same from both.
    fn chunks(self, chunks: &[&[u8]], n: usize) -> D {
        let chunks = chunks.iter().map(|c| c.to_vec()).collect();
        self.step(chunks, Expect::Same(n))
    }

    /// One command line; both servers must answer exactly `reply`.
    fn expect(self, line: &str, reply: &str) -> D {
        self.step(
            vec![format!("{line}\r\n").into_bytes()],
            Expect::Literal(strings(&[reply])),
        )
    }

    /// Raw bytes; CPython answers `python`, we answer `ours`. `<silence>` stands for no reply,
    /// `<closed>` for a closed connection.
    fn differ(self, bytes: impl AsRef<[u8]>, python: &[&str], ours: &[&str]) -> D {
        self.step(
            vec![bytes.as_ref().to_vec()],
            Expect::Differ(strings(python), strings(ours)),
        )
    }

    fn helo(self) -> D {
        self.cmd("HELO example")
    }

    fn ehlo(self) -> D {
        self.cmd("EHLO example")
    }

    /// MAIL and RCPT.
    fn envelope(self) -> D {
        self.cmd("MAIL FROM:<eggs@example>")
            .cmd("RCPT TO:<spam@example>")
    }

    /// MAIL, RCPT and DATA (`354`).
    fn start_data(self) -> D {
        self.envelope().cmd("DATA")
    }

    fn hang_up(mut self) -> D {
        self.dialogue.end = End::HangUp;
        self
    }

    fn build(self) -> Dialogue {
        self.dialogue
    }
}

// ---------------------------------------------------------------------------------------------
// Running a dialogue against one server
// ---------------------------------------------------------------------------------------------

/// A client connection that reads whole replies.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    fn write(&mut self, chunks: &[Vec<u8>]) {
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                thread::sleep(Duration::from_millis(5));
            }
            // A server that already closed makes the write fail: its replies tell.
            if self.stream.write_all(chunk).is_err() {
                return;
            }
        }
    }

    /// Reads one reply, its lines joined with `\n`; `<closed>` on end of stream or reset,
    /// `<silence>` when nothing (complete) arrives within `wait`.
    fn reply(&mut self, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        let mut lines: Vec<String> = Vec::new();
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                let more = line.get(3) == Some(&b'-');
                lines.push(String::from_utf8_lossy(&line).into_owned());
                if more {
                    continue;
                }
                return lines.join("\n");
            }
            if self.closed {
                return "<closed>".into();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return "<silence>".into();
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return "<silence>".into()
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    fn replies(&mut self, expected: &[String]) -> Vec<String> {
        (0..expected.len())
            .map(|i| {
                let wait = if expected[i] == "<silence>" {
                    SILENCE
                } else {
                    REPLY_TIMEOUT
                };
                self.reply(wait)
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Python,
    Ours,
}

/// What one server answered: the greeting of each connection, the replies of each step, and
/// what followed QUIT.
#[derive(Debug, Default)]
struct Transcript {
    greetings: Vec<String>,
    steps: Vec<Vec<String>>,
    end: Vec<String>,
}

fn run(addr: SocketAddr, dialogue: &Dialogue, side: Side) -> Transcript {
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut t = Transcript::default();
    for step in &dialogue.steps {
        if conns.len() <= step.conn {
            conns.resize_with(step.conn + 1, || None);
        }
        let conn = conns[step.conn].get_or_insert_with(|| {
            let mut c = Conn::open(addr);
            t.greetings.push(c.reply(REPLY_TIMEOUT));
            c
        });
        conn.write(&step.chunks);
        let expected: Vec<String> = match (&step.expect, side) {
            (Expect::Same(n), _) => vec![String::new(); *n],
            (Expect::Literal(r), _) => r.clone(),
            (Expect::Differ(python, _), Side::Python) => python.clone(),
            (Expect::Differ(_, ours), Side::Ours) => ours.clone(),
        };
        t.steps.push(conn.replies(&expected));
    }
    for conn in conns.iter_mut().flatten() {
        match dialogue.end {
            End::Quit => {
                conn.write(&[b"QUIT\r\n".to_vec()]);
                t.end.push(conn.reply(REPLY_TIMEOUT));
                t.end.push(conn.reply(REPLY_TIMEOUT));
            }
            End::HangUp => {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
    }
    t
}

fn show(bytes: &[u8]) -> String {
    let text: String = bytes.escape_ascii().to_string();
    if text.len() > 160 {
        format!("{}... ({} bytes)", &text[..150], bytes.len())
    } else {
        text
    }
}

/// Runs `dialogue` against both servers; describes every disagreement.
fn compare(python: SocketAddr, ours: SocketAddr, dialogue: &Dialogue) -> Vec<String> {
    let p = run(python, dialogue, Side::Python);
    let o = run(ours, dialogue, Side::Ours);
    let mut problems = Vec::new();
    let mut fail = |what: String| problems.push(format!("[{}] {what}", dialogue.name));
    let greeting = format!("220 {HOST} ");
    for (side, t) in [("CPython", &p), ("ours", &o)] {
        for g in &t.greetings {
            if !g.starts_with(&greeting) {
                fail(format!("{side} greeted with {g:?}"));
            }
        }
    }
    for (i, step) in dialogue.steps.iter().enumerate() {
        let sent: Vec<u8> = step.chunks.concat();
        let (got_p, got_o) = (&p.steps[i], &o.steps[i]);
        let at = format!("step {i} (conn {}) sent {}", step.conn, show(&sent));
        match &step.expect {
            Expect::Same(_) => {
                if got_p != got_o {
                    fail(format!(
                        "{at}\n    CPython: {got_p:?}\n    ours:    {got_o:?}"
                    ));
                }
            }
            Expect::Literal(want) => {
                if got_p != want || got_o != want {
                    fail(format!(
                        "{at}\n    wanted:  {want:?}\n    CPython: {got_p:?}\n    ours:    {got_o:?}"
                    ));
                }
            }
            Expect::Differ(want_p, want_o) => {
                if got_p != want_p {
                    fail(format!(
                        "{at}\n    CPython was expected to answer {want_p:?}, got {got_p:?}"
                    ));
                }
                if got_o != want_o {
                    fail(format!(
                        "{at}\n    we were expected to answer {want_o:?}, got {got_o:?}"
                    ));
                }
            }
        }
    }
    if dialogue.end == End::Quit {
        let want: Vec<String> = (0..p.end.len() / 2)
            .flat_map(|_| ["221 Bye".to_owned(), "<closed>".to_owned()])
            .collect();
        if p.end != want || o.end != want {
            fail(format!(
                "after QUIT\n    CPython: {:?}\n    ours:    {:?}",
                p.end, o.end
            ));
        }
    }
    problems
}

/// Starts both servers with `opts` and runs every dialogue; fails listing every disagreement.
fn run_set(opts: Opts, dialogues: Vec<Dialogue>) {
    let python = CPython::start(opts);
    let ours = Ours::start(opts);
    let mut problems = Vec::new();
    for dialogue in &dialogues {
        problems.extend(compare(python.addr, ours.addr, dialogue));
    }
    assert!(
        problems.is_empty(),
        "{} of {} dialogues ({opts:?}) disagree:\n{}",
        problems.len(),
        dialogues.len(),
        problems.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The option sets and their dialogues
// ---------------------------------------------------------------------------------------------

const SINK: Opts = Opts::new(Class::Sink, DEFAULT_SIZE);
const ECHO: Opts = Opts::new(Class::Echo, DEFAULT_SIZE);
const SMALL: Opts = Opts::new(Class::Echo, 32);
const UNLIMITED: Opts = Opts::new(Class::Sink, 0);
const UTF8: Opts = Opts {
    smtputf8: true,
    ..Opts::new(Class::Echo, DEFAULT_SIZE)
};
const DECODE: Opts = Opts {
    decode_data: true,
    ..Opts::new(Class::Echo, DEFAULT_SIZE)
};

const SYNTAX_MAIL_ESMTP: &str = "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]";

/// `MAIL from:<aaa...@example>` of exactly `len` bytes.
fn long_mail(len: usize, fill: char) -> String {
    let fixed = "MAIL from:<@example>".len();
    let fill: String = std::iter::repeat_n(fill, 1)
        .cycle()
        .take(len - fixed)
        .collect();
    assert_eq!(fill.len(), len - fixed, "one-byte fill characters only");
    format!("MAIL from:<{fill}@example>")
}

/// Greeting, HELO/EHLO, HELP, NOOP, QUIT, RSET, VRFY, EXPN, unknown commands, command order.
fn sink_dialogues() -> Vec<Dialogue> {
    let help_all = "250 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY";
    let mut v = vec![
        dlg("greeting then QUIT").build(),
        dlg("test_missing_data: empty line").cmd("").build(),
        dlg("test_EHLO")
            .expect(
                "EHLO example",
                "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250 HELP",
            )
            .build(),
        dlg("test_EHLO_bad_syntax")
            .expect("EHLO", "501 Syntax: EHLO hostname")
            .build(),
        dlg("EHLO with only a space").cmd("EHLO ").build(),
        dlg("test_EHLO_duplicate")
            .ehlo()
            .expect("EHLO example", "503 Duplicate HELO/EHLO")
            .build(),
        dlg("test_EHLO_HELO_duplicate")
            .ehlo()
            .cmd("HELO example")
            .build(),
        dlg("test_HELO")
            .expect("HELO example", "250 mx.test.example")
            .build(),
        dlg("test_HELO_EHLO_duplicate")
            .helo()
            .cmd("EHLO example")
            .build(),
        dlg("test_HELO_bad_syntax")
            .expect("HELO", "501 Syntax: HELO hostname")
            .build(),
        dlg("test_HELO_duplicate")
            .helo()
            .cmd("HELO example")
            .build(),
        dlg("HELO with extra words and spaces")
            .cmd("HELO   a b c   ")
            .cmd("NOOP")
            .build(),
        dlg("lower-case and mixed-case verbs")
            .cmds(&[
                "ehlo example",
                "mAiL fRoM:<a@example>",
                "rcpt to:<b@example>",
                "Data",
            ])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("test_HELP").expect("HELP", help_all).build(),
        dlg("test_HELP_command")
            .expect("HELP MAIL", "250 Syntax: MAIL FROM: <address>")
            .build(),
        dlg("test_HELP_command_unknown").cmd("HELP SPAM").build(),
        dlg("HELP topics before a greeting")
            .cmds(&[
                "HELP EHLO",
                "HELP HELO",
                "HELP MAIL",
                "HELP RCPT",
                "HELP DATA",
                "HELP RSET",
                "HELP NOOP",
                "HELP QUIT",
                "HELP VRFY",
                "HELP EXPN",
                "help mail",
                "HELP  rcpt ",
            ])
            .build(),
        dlg("HELP topics after HELO")
            .helo()
            .cmds(&["HELP MAIL", "HELP RCPT", "HELP"])
            .build(),
        dlg("HELP topics after EHLO: extended syntax")
            .ehlo()
            .expect(
                "HELP MAIL",
                "250 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
            )
            .expect(
                "HELP rcpt",
                "250 Syntax: RCPT TO: <address> [SP <mail-parameters>]",
            )
            .cmds(&["HELP DATA", "HELP", "HELP MAIL RCPT"])
            .build(),
        dlg("test_NOOP").expect("NOOP", "250 OK").build(),
        dlg("test_HELO_NOOP").helo().cmd("NOOP").build(),
        dlg("test_NOOP_bad_syntax")
            .expect("NOOP hi", "501 Syntax: NOOP")
            .build(),
        dlg("NOOP with trailing space")
            .cmd("NOOP ")
            .cmd("NOOP   ")
            .build(),
        dlg("test_QUIT").build(),
        dlg("test_HELO_QUIT").helo().build(),
        dlg("test_QUIT_arg_ignored")
            .expect("QUIT bye bye", "221 Bye")
            .hang_up()
            .build(),
        dlg("test_RSET")
            .helo()
            .envelope()
            .expect("RSET", "250 OK")
            .cmds(&["MAIL From:foo@example", "RCPT To:eggs@example", "DATA"])
            .send("data\r\n.\r\n", 1)
            .build(),
        dlg("test_HELO_RSET").helo().cmd("RSET").build(),
        dlg("test_RSET_syntax")
            .expect("RSET hi", "501 Syntax: RSET")
            .build(),
        dlg("RSET keeps the greeting")
            .helo()
            .cmd("RSET")
            .cmd("MAIL FROM:<a@example>")
            .build(),
        dlg("RSET before any greeting")
            .cmd("RSET")
            .cmd("MAIL FROM:<a@example>")
            .build(),
        dlg("test_VRFY")
            .expect(
                "VRFY eggs@example",
                "252 Cannot VRFY user, but will accept message and attempt delivery",
            )
            .build(),
        dlg("VRFY forms")
            .cmds(&[
                "VRFY <eggs@example>",
                "VRFY \"Fred Blogs\"@example.com",
                "VRFY postmaster",
                "VRFY eggs@example and more",
                "VRFY from:<a@b> size=10",
                "VRFY a@b,c@d",
                "vrfy <a@[127.0.0.1]>",
            ])
            .build(),
        dlg("test_VRFY_syntax")
            .expect("VRFY", "501 Syntax: VRFY <address>")
            .build(),
        dlg("test_EXPN_not_implemented")
            .expect("EXPN", "502 EXPN not implemented")
            .build(),
        dlg("EXPN with an argument")
            .cmd("EXPN list@example")
            .helo()
            .cmd("EXPN x")
            .build(),
        dlg("test_unknown_command")
            .expect(
                "UNKNOWN_CMD",
                "500 Error: command \"UNKNOWN_CMD\" not recognized",
            )
            .build(),
        dlg("unknown commands are upper-cased and echoed")
            .cmds(&[
                "foo",
                "foo bar baz",
                "STARTTLS",
                "AUTH PLAIN x",
                "BDAT 10",
                "TURN",
                "HELO,x",
                "MAIL:FROM:<a@b>",
                "smtp_HELO x",
            ])
            .build(),
        dlg("a tab is part of the verb")
            .cmd("NOOP\tx")
            .cmd("\tNOOP")
            .build(),
        dlg("leading space: an empty verb")
            .cmd(" NOOP")
            .cmd("  ")
            .build(),
        dlg("test_no_HELO_MAIL")
            .expect("MAIL from:<foo@example.com>", "503 Error: send HELO first")
            .build(),
        dlg("test_no_HELO_RCPT").cmd("RCPT to eggs@example").build(),
        dlg("test_no_HELO_DATA")
            .cmd("DATA spam")
            .cmd("DATA")
            .build(),
        dlg("test_need_MAIL")
            .helo()
            .expect("RCPT to:spam@example", "503 Error: need MAIL command")
            .build(),
        dlg("test_need_RCPT")
            .helo()
            .expect("MAIL From:eggs@example", "250 OK")
            .expect("DATA", "503 Error: need RCPT command")
            .build(),
        dlg("test_nested_MAIL")
            .helo()
            .cmd("MAIL from:eggs@example")
            .expect("MAIL from:spam@example", "503 Error: nested MAIL command")
            .build(),
        dlg("nested MAIL with a bad address: syntax first")
            .helo()
            .cmd("MAIL FROM:<a@b>")
            .cmd("MAIL FROM:")
            .build(),
        dlg("test_DATA_syntax")
            .helo()
            .envelope()
            .expect("DATA spam", "501 Syntax: DATA")
            .build(),
        dlg("DATA with argument before RCPT: need RCPT first")
            .helo()
            .cmd("MAIL FROM:<a@b>")
            .cmd("DATA x")
            .build(),
        dlg("test_data_dialog (sink)")
            .helo()
            .expect("MAIL From:eggs@example", "250 OK")
            .expect("RCPT To:spam@example", "250 OK")
            .expect("DATA", "354 End data with <CR><LF>.<CR><LF>")
            .step(
                vec![b"data\r\nmore\r\n.\r\n".to_vec()],
                Expect::Literal(strings(&["250 OK"])),
            )
            .build(),
        dlg("two transactions in one session")
            .ehlo()
            .start_data()
            .send("one\r\n.\r\n", 1)
            .cmd("RCPT TO:<x@example>")
            .start_data()
            .send("two\r\n.\r\n", 1)
            .build(),
        dlg("MAIL again after a message")
            .helo()
            .start_data()
            .send("m\r\n.\r\n", 1)
            .cmd("DATA")
            .build(),
    ];
    v.extend(length_dialogues());
    v.extend(framing_dialogues());
    v.extend(sink_differences());
    v
}

/// The command-length limit (512, MAIL +26 with SIZE) and over-long lines.
fn length_dialogues() -> Vec<Dialogue> {
    vec![
        dlg("test_command_too_long")
            .helo()
            .expect(
                &format!("MAIL from: {}", "a".repeat(512)),
                "500 Error: line too long",
            )
            .build(),
        dlg("lines of exactly 512 and 513 bytes")
            .cmd(format!("NOOP {}", "x".repeat(507)))
            .cmd(format!("NOOP {}", "x".repeat(508)))
            .cmd(format!("XYZZY {}", "x".repeat(600)))
            .cmd("NOOP")
            .build(),
        dlg("test_MAIL_command_limit_extended_with_SIZE")
            .ehlo()
            .expect(&long_mail(538, 'a'), "250 OK")
            .cmd("RSET")
            .expect(&long_mail(539, 'a'), "500 Error: line too long")
            .build(),
        dlg("the MAIL allowance needs EHLO")
            .helo()
            .cmd(long_mail(513, 'a'))
            .cmd(long_mail(512, 'b'))
            .build(),
        dlg("the MAIL allowance is for MAIL only")
            .ehlo()
            .envelope()
            .cmd(format!("RCPT TO:<{}@example>", "r".repeat(520)))
            .cmd(format!("VRFY {}", "v".repeat(520)))
            .build(),
        dlg("test_multiple_emails_with_extended_command_length (SIZE)")
            .ehlo()
            .cmd(long_mail(539, 'a'))
            .cmd(long_mail(538, 'a'))
            .cmd("rcpt to:<hans@example.com>")
            .cmd("data")
            .send("test\r\n.\r\n", 1)
            .cmd(long_mail(539, 'b'))
            .cmd(long_mail(538, 'b'))
            .build(),
        dlg("a 10 MB command line: 500, and the session goes on")
            .send(
                [b"NOOP ".as_slice(), &vec![b'x'; 10 << 20], b"\r\n"].concat(),
                1,
            )
            .cmd("NOOP")
            .ehlo()
            .build(),
        dlg("an over-long line in odd chunks")
            .chunks(
                &[
                    b"MAIL FROM:<",
                    &[b'a'; 700],
                    b"@exa",
                    b"mple>\r",
                    b"\nNOOP\r\n",
                ],
                2,
            )
            .build(),
    ]
}

/// Pipelining and input split into odd chunks.
fn framing_dialogues() -> Vec<Dialogue> {
    vec![
        dlg("a whole transaction pipelined in one write")
            .send(
                "EHLO example\r\nMAIL FROM:<a@example>\r\nRCPT TO:<b@example>\r\nRCPT TO:<c@example>\r\nDATA\r\nhello\r\n.\r\nNOOP\r\n",
                7,
            )
            .build(),
        dlg("pipelined errors keep their order")
            .send("MAIL FROM:<a@b>\r\nHELO x\r\nDATA\r\nRCPT TO:<c@d>\r\nFOO\r\n\r\nNOOP 1\r\nVRFY\r\n", 8)
            .build(),
        dlg("a command split byte by byte")
            .chunks(&[b"E", b"H", b"L", b"O", b" ", b"e", b"x", b"\r", b"\n"], 1)
            .build(),
        dlg("commands pipelined after QUIT are not answered")
            .send("QUIT\r\nNOOP\r\n", 2)
            .hang_up()
            .build(),
        dlg("a whole transaction one byte at a time")
            .step(
                b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n.a\r\n\r\n.\r\nNOOP\r\n"
                    .iter()
                    .map(|&b| vec![b])
                    .collect(),
                Expect::Same(6),
            )
            .build(),
        dlg("CRLF split across writes")
            .chunks(&[b"HELO example\r", b"\nNOOP\r", b"\n"], 2)
            .build(),
        dlg("data and its end split at odd places")
            .helo()
            .start_data()
            .chunks(&[b"line 1\r", b"\n.", b".dot\r\n", b"\r", b"\n.", b"\r", b"\n"], 1)
            .cmd("NOOP")
            .build(),
        dlg("the end of data split after CRLF.")
            .helo()
            .start_data()
            .chunks(&[b"body\r\n.", b"\r\nNOOP\r\n"], 2)
            .build(),
        dlg("commands pipelined after DATA's end")
            .helo()
            .envelope()
            .send("DATA\r\nsome data\r\n.\r\nRSET\r\nMAIL FROM:<x@y>\r\n", 4)
            .build(),
        dlg("a line that looks like the end but is not: CRLF..CRLF")
            .helo()
            .start_data()
            .send("a\r\n..\r\nb\r\n.\r\n", 1)
            .build(),
        dlg("text after the final dot is data: CRLF.x")
            .helo()
            .start_data()
            .send("a\r\n.x\r\n.\r\n", 1)
            .build(),
        dlg("a bare CR in data is data")
            .helo()
            .start_data()
            .send("a\rb\r\n\r.\r\n.\r\n", 1)
            .build(),
        dlg("smuggling: <CR>.<CR><LF> does not end the data")
            .helo()
            .start_data()
            .send("a\r.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<y@z>\r\nDATA\r\nevil\r\n.\r\n", 1)
            .build(),
    ]
}

/// The intended differences visible with the default options (docs/differences.md).
fn sink_differences() -> Vec<Dialogue> {
    let bad = "500 Error: bad syntax";
    vec![
        dlg("difference 1: DATA then the end of data at once")
            .helo()
            .envelope()
            .differ(
                "DATA\r\n.\r\nNOOP\r\n",
                &["354 End data with <CR><LF>.<CR><LF>", "<silence>"],
                &["354 End data with <CR><LF>.<CR><LF>", "250 OK", "250 OK"],
            )
            .hang_up()
            .build(),
        dlg("difference 1: an empty message, the end in its own write")
            .helo()
            .start_data()
            .differ(".\r\n", &["<silence>"], &["250 OK"])
            .hang_up()
            .build(),
        dlg("difference 2: another connection takes away the MAIL allowance")
            .ehlo()
            .on(1)
            .cmd("NOOP")
            .on(0)
            .differ(
                format!("{}\r\n", long_mail(538, 'a')),
                &["500 Error: line too long"],
                &["250 OK"],
            )
            .build(),
        dlg("difference 2: another connection's EHLO widens the MAIL limit")
            .on(1)
            .cmd("NOOP")
            .on(0)
            .ehlo()
            .on(1)
            .ehlo()
            .on(0)
            .differ(
                format!("{}\r\n", long_mail(560, 'a')),
                &["250 OK"],
                &["500 Error: line too long"],
            )
            .build(),
        dlg("difference 4: a command that is not UTF-8")
            .differ(b"NOOP \xff\r\n", &["<closed>"], &[bad])
            .hang_up()
            .build(),
        dlg("difference 4: a verb that is not UTF-8")
            .helo()
            .differ(b"\xc3\x28\r\n", &["<closed>"], &[bad])
            .hang_up()
            .build(),
        dlg("difference 5: a bare LF inside a command line")
            .differ(
                "NOOP\nNOOP\r\n",
                &["500 Error: command \"NOOP\nNOOP\" not recognized"],
                &[bad],
            )
            .build(),
        dlg("difference 5: a bare CR inside a command line")
            .differ(
                "NOOP\rQUIT\r\n",
                &["500 Error: command \"NOOP\rQUIT\" not recognized"],
                &[bad],
            )
            .build(),
        dlg("difference 5: a line with a bare LF is not executed")
            .differ(
                "HELO x\nMAIL FROM:<a@b>\r\n",
                &["250 mx.test.example"],
                &[bad],
            )
            .differ(
                "MAIL FROM:<a@b>\r\n",
                &["250 OK"],
                &["503 Error: send HELO first"],
            )
            .build(),
        dlg("difference 5: a bare LF at the end of a command line")
            .helo()
            .differ(
                "RSET\n\r\n",
                &["500 Error: command \"RSET\n\" not recognized"],
                &[bad],
            )
            .build(),
        dlg("difference 7: non-ASCII text echoed")
            .differ(
                "ÜBER\r\n",
                &["<closed>"],
                &["500 Error: command \"?BER\" not recognized"],
            )
            .hang_up()
            .build(),
        dlg("difference 7: a control character echoed")
            .differ(
                "NO\x00OP\r\n",
                &["500 Error: command \"NO\x00OP\" not recognized"],
                &["500 Error: command \"NO?OP\" not recognized"],
            )
            .build(),
        dlg("difference 8: unparsable sender")
            .ehlo()
            .differ(
                "MAIL FROM:<a@b..c>\r\n",
                &["<closed>"],
                &[SYNTAX_MAIL_ESMTP],
            )
            .hang_up()
            .build(),
        dlg("difference 8: unparsable recipient")
            .helo()
            .cmd("MAIL FROM:<a@b>")
            .differ(
                "RCPT TO:<a@@b>\r\n",
                &["<closed>"],
                &["501 Syntax: RCPT TO: <address>"],
            )
            .hang_up()
            .build(),
        dlg("difference 8: unparsable VRFY argument")
            .differ("VRFY @@@\r\n", &["<closed>"], &["502 Could not VRFY @@@"])
            .hang_up()
            .build(),
        dlg("difference 8: more addresses that crash CPython")
            .ehlo()
            .differ("MAIL FROM:<foo@>\r\n", &["<closed>"], &[SYNTAX_MAIL_ESMTP])
            .hang_up()
            .build(),
        dlg("difference 9: the null path as a recipient and in VRFY")
            .helo()
            .cmd("MAIL FROM:<>")
            .differ(
                "RCPT TO:<>\r\n",
                &["250 OK"],
                &["501 Syntax: RCPT TO: <address>"],
            )
            .differ(
                "VRFY <>\r\n",
                &["252 Cannot VRFY user, but will accept message and attempt delivery"],
                &["502 Could not VRFY <>"],
            )
            .build(),
        dlg("difference 10: a non-ASCII address without SMTPUTF8")
            .ehlo()
            .differ(
                "MAIL FROM:<ä@example>\r\n",
                &["250 OK"],
                &["553 Error: non-ASCII address requires SMTPUTF8"],
            )
            .build(),
        dlg("difference 11: SIZE without a value")
            .ehlo()
            .differ(
                "MAIL FROM:<a@b> SIZE\r\n",
                &["<closed>"],
                &[SYNTAX_MAIL_ESMTP],
            )
            .hang_up()
            .build(),
        dlg("difference 29: paths CPython accepts with defects")
            .ehlo()
            .differ("MAIL FROM:<a@b\r\n", &["250 OK"], &[SYNTAX_MAIL_ESMTP])
            .differ(
                "RSET\r\nMAIL FROM:<a b@c>\r\n",
                &["250 OK", "250 OK"],
                &["250 OK", SYNTAX_MAIL_ESMTP],
            )
            .differ(
                "RSET\r\nMAIL FROM:<a@b(comment)>\r\n",
                &["250 OK", "250 OK"],
                &["250 OK", SYNTAX_MAIL_ESMTP],
            )
            .differ(
                "RSET\r\nMAIL FROM:<a@[]>\r\n",
                &["250 OK", "250 OK"],
                &["250 OK", SYNTAX_MAIL_ESMTP],
            )
            .differ(
                "RSET\r\nMAIL FROM:<\"a>\r\n",
                &["250 OK", "250 OK"],
                &["250 OK", SYNTAX_MAIL_ESMTP],
            )
            .build(),
    ]
}

/// MAIL and RCPT: addresses, parameters, sizes, and what `process_message` receives.
fn echo_dialogues() -> Vec<Dialogue> {
    let mut v = vec![
        dlg("test_data_dialog (echo): what process_message gets")
            .helo()
            .cmds(&["MAIL From:eggs@example", "RCPT To:spam@example", "DATA"])
            .send("data\r\nmore\r\n.\r\n", 1)
            .build(),
        dlg("test_data_transparency_section_4_5_2")
            .helo()
            .start_data()
            .send("..\r\n.\r\n", 1)
            .build(),
        dlg("dot-stuffing in many places")
            .helo()
            .start_data()
            .send("..a\r\nb.\r\n...\r\n. \r\n\r\n.\r\n", 1)
            .build(),
        dlg("test_multiple_RCPT")
            .helo()
            .cmds(&[
                "MAIL From:eggs@example",
                "RCPT To:spam@example",
                "RCPT To:ham@example",
                "DATA",
            ])
            .send("data\r\n.\r\n", 1)
            .build(),
        dlg("empty lines and a trailing empty line in data")
            .helo()
            .start_data()
            .send("\r\nSubject: x\r\n\r\nbody\r\n\r\n.\r\n", 1)
            .build(),
        dlg("data that is one empty line")
            .helo()
            .start_data()
            .send("\r\n.\r\n", 1)
            .build(),
        dlg("8-bit data")
            .ehlo()
            .cmd("MAIL FROM:<a@b> BODY=8BITMIME")
            .cmd("RCPT TO:<c@d>")
            .cmd("DATA")
            .send(b"caf\xc3\xa9 \xff\x00\x7f\r\n.\r\n", 1)
            .build(),
        dlg("test_MAIL_chevrons")
            .helo()
            .cmd("MAIL from:<eggs@example>")
            .start_data()
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("test_MAIL_empty_chevrons")
            .ehlo()
            .expect("MAIL from:<>", "250 OK")
            .cmd("RCPT TO:<a@b>")
            .cmd("DATA")
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("test_MAIL_quoted_localpart")
            .ehlo()
            .expect("MAIL from: <\"Fred Blogs\"@example.com>", "250 OK")
            .cmd("RCPT TO:<a@b>")
            .cmd("DATA")
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("test_MAIL_quoted_localpart_no_angles")
            .ehlo()
            .cmd("MAIL from: \"Fred Blogs\"@example.com")
            .cmd("RCPT TO:<a@b>")
            .cmd("DATA")
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("test_MAIL_quoted_localpart_with_size")
            .ehlo()
            .cmd("MAIL from: <\"Fred Blogs\"@example.com> SIZE=1000")
            .cmd("RCPT TO:<a@b>")
            .cmd("DATA")
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("test_MAIL_quoted_localpart_with_size_no_angles")
            .ehlo()
            .cmd("MAIL from: \"Fred Blogs\"@example.com SIZE=1000")
            .cmd("RCPT TO:<a@b>")
            .cmd("DATA")
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("address forms: route, literal, quoting undone where not needed")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<@a,@b:x@y>",
                "RCPT TO:<postmaster>",
                "RCPT TO:<\"abc\"@x>",
                "RCPT TO:< a@b >",
                "RCPT TO:<a@[1.2.3.4]>",
                "RCPT TO:<a@[IPv6:::1]>",
                "RCPT TO:<a+b=c@d.e>",
                "RCPT TO:<\"a.b\"@x>",
                "RCPT TO:<\"a@b\"@c>",
                "RCPT TO:<\"a\\ b\"@c>",
                "RCPT TO:<\"\"@a>",
                "RCPT TO:<a@b-c_d.e>",
                "RCPT TO:Postmaster",
                "RCPT TO:<a%b@c>",
                "DATA",
            ])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("lenient dots in local parts")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<a.@b>",
                "RCPT TO:<.a@b>",
                "RCPT TO:<a..b@c>",
                "RCPT TO:a",
                "DATA",
            ])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("quoted pair in the sender")
            .ehlo()
            .cmds(&["MAIL FROM:<\"a\\\"b\"@c>", "RCPT TO:<d@e>", "DATA"])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("spaces around the path")
            .ehlo()
            .cmds(&["MAIL FROM: < a@b >  SIZE=5 ", "RCPT TO:   <c@d>   ", "DATA"])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("parameters right after the closing bracket")
            .ehlo()
            .cmd("MAIL FROM:<a@b>x")
            .cmd("MAIL FROM:<a@b>SIZE=10")
            .cmds(&["RCPT TO:<c@d>", "DATA"])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("test_MAIL_allows_space_after_colon")
            .helo()
            .expect("MAIL from:   <foo@example.com>", "250 OK")
            .build(),
        dlg("test_extended_MAIL_allows_space_after_colon")
            .ehlo()
            .expect("MAIL from:   <foo@example.com> size=20", "250 OK")
            .build(),
        dlg("test_MAIL_syntax_HELO")
            .helo()
            .expect("MAIL from eggs@example", "501 Syntax: MAIL FROM: <address>")
            .build(),
        dlg("test_MAIL_syntax_EHLO")
            .ehlo()
            .expect("MAIL from eggs@example", SYNTAX_MAIL_ESMTP)
            .build(),
        dlg("test_MAIL_missing_address")
            .helo()
            .cmd("MAIL from:")
            .cmd("MAIL")
            .cmd("MAIL ")
            .cmd("MAIL FROM: ")
            .build(),
        dlg("MAIL syntax errors after EHLO")
            .ehlo()
            .cmds(&[
                "MAIL",
                "MAIL from:",
                "MAIL TO:<a@b>",
                "MAIL FROM<a@b>",
                "MAIL FROM:<a@b> <c@d>",
                "MAIL FROM:a@b,c@d",
                "MAIL FROM:<a@b>>",
                "MAIL FROM:<a@b c>",
            ])
            .build(),
        dlg("test_HELO_parameter_rejected_when_extensions_not_enabled")
            .helo()
            .expect(
                "MAIL from:<foo@example.com> SIZE=1234",
                "501 Syntax: MAIL FROM: <address>",
            )
            .build(),
        dlg("test_RCPT_syntax_HELO")
            .helo()
            .cmd("MAIL From: eggs@example")
            .expect("RCPT to eggs@example", "501 Syntax: RCPT TO: <address>")
            .build(),
        dlg("test_RCPT_syntax_EHLO")
            .ehlo()
            .cmd("MAIL From: eggs@example")
            .expect(
                "RCPT to eggs@example",
                "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]",
            )
            .build(),
        dlg("test_RCPT_lowercase_to_OK")
            .helo()
            .cmd("MAIL From: eggs@example")
            .expect("RCPT to: <eggs@example>", "250 OK")
            .build(),
        dlg("RCPT syntax errors")
            .ehlo()
            .cmd("MAIL FROM:<a@b>")
            .cmds(&[
                "RCPT",
                "RCPT TO:",
                "RCPT FROM:<a@b>",
                "RCPT TO:<a@b> <c@d>",
                "RCPT TO:<a@b> X-Y=1",
                "RCPT TO:<a@b> A=",
            ])
            .build(),
        dlg("RCPT parameters after HELO")
            .helo()
            .cmd("MAIL FROM:<a@b>")
            .cmd("RCPT TO:<c@d> FOO=bar")
            .build(),
        dlg("test_params_rejected: RCPT parameters")
            .ehlo()
            .cmd("MAIL from: <foo@example.com> size=20")
            .expect(
                "RCPT to: <foo@example.com> foo=bar",
                "555 RCPT TO parameters not recognized or not implemented",
            )
            .build(),
        dlg("test_nothing_accepted")
            .ehlo()
            .cmd("MAIL from: <foo@example.com> size=20")
            .cmd("RCPT to: <foo@example.com>")
            .build(),
        dlg("test_MAIL_size_parameter")
            .ehlo()
            .expect("MAIL FROM:<eggs@example> SIZE=512", "250 OK")
            .build(),
        dlg("test_MAIL_invalid_size_parameter")
            .ehlo()
            .expect("MAIL FROM:<eggs@example> SIZE=invalid", SYNTAX_MAIL_ESMTP)
            .build(),
        dlg("SIZE forms")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<a@b> SIZE=",
                "MAIL FROM:<a@b> SIZE=-1",
                "MAIL FROM:<a@b> SIZE=1.5",
                "MAIL FROM:<a@b> SIZE=33554433",
                "MAIL FROM:<a@b> SIZE=99999999999999999999999",
                "MAIL FROM:<a@b> SIZE=0",
            ])
            .build(),
        dlg("SIZE at the limit")
            .ehlo()
            .cmd("MAIL FROM:<a@b> size=33554432")
            .build(),
        dlg("test_MAIL_RCPT_unknown_parameters")
            .ehlo()
            .expect(
                "MAIL FROM:<eggs@example> ham=green",
                "555 MAIL FROM parameters not recognized or not implemented",
            )
            .cmd("MAIL FROM:<eggs@example>")
            .cmd("RCPT TO:<eggs@example> ham=green")
            .build(),
        dlg("parameter syntax: keys must be alphanumeric, values non-empty")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<a@b> X-Y=1",
                "MAIL FROM:<a@b> =1",
                "MAIL FROM:<a@b> A=",
                "MAIL FROM:<a@b> A=B=C",
                "MAIL FROM:<a@b> SIZE=1 SIZE=2",
            ])
            .build(),
        dlg("BODY values")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<a@b> BODY=BINARYMIME",
                "MAIL FROM:<a@b> BODY=",
                "MAIL FROM:<a@b> BODY",
                "MAIL FROM:<a@b> body=7bit",
            ])
            .build(),
        dlg("test_with_decode_data_false: SMTPUTF8 and BODY without decode_data")
            .ehlo()
            .cmd("MAIL from: <foo@example.com> size=20 SMTPUTF8")
            .cmd("MAIL from: <foo@example.com> size=20 SMTPUTF8 BODY=8BITMIME")
            .expect(
                "MAIL from: <foo@example.com> size=20 SMTPUTF8 BODY=UNKNOWN",
                "501 Error: BODY can only be one of 7BIT, 8BITMIME",
            )
            .expect(
                "MAIL from: <foo@example.com> size=20 body=8bitmime",
                "250 OK",
            )
            .build(),
        dlg("test_MAIL_command_rejects_SMTPUTF8_by_default")
            .ehlo()
            .cmd("MAIL from: <naive@example.com> BODY=8BITMIME SMTPUTF8")
            .build(),
        dlg("mail_options handed over upper-cased and split")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<a@b>   size=20    body=8bitmime ",
                "RCPT TO:<c@d>",
                "DATA",
            ])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("rcpt_options are empty for accepted recipients")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<a@b> BODY=7BIT",
                "RCPT TO:<c@d>",
                "RCPT TO:<e@f>",
                "DATA",
            ])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("options of a second transaction")
            .ehlo()
            .cmds(&["MAIL FROM:<a@b> SIZE=10", "RCPT TO:<c@d>", "DATA"])
            .send("x\r\n.\r\n", 1)
            .cmds(&["MAIL FROM:<e@f>", "RCPT TO:<g@h>", "DATA"])
            .send("y\r\n.\r\n", 1)
            .build(),
        dlg("RSET clears the envelope")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<a@b> SIZE=10",
                "RCPT TO:<c@d>",
                "RSET",
                "DATA",
                "RCPT TO:<x@y>",
                "MAIL FROM:<e@f>",
                "RCPT TO:<g@h>",
                "DATA",
            ])
            .send("x\r\n.\r\n", 1)
            .build(),
        dlg("a process_message reply after a pipelined body")
            .ehlo()
            .send(
                "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nl1\r\nl2\r\n.\r\nMAIL FROM:<x@y>\r\n",
                5,
            )
            .build(),
    ];
    v.extend(echo_differences());
    v
}

/// Intended differences seen through the echo server.
fn echo_differences() -> Vec<Dialogue> {
    let bare_lf = "554 Error: bare LF not allowed in message data";
    let smuggled = r#"250 ["eggs@example", ["spam@example"], [], [], "hello\n.\nMAIL FROM:<evil@x>\nRCPT TO:<y@z>\nDATA\nevil"]"#;
    let attack = "\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<y@z>\r\nDATA\r\nevil\r\n.\r\n";
    vec![
        dlg("difference 6: smuggling with <LF>.<LF>: one message, refused")
            .helo()
            .start_data()
            .differ(
                format!("hello\n.\n{}", &attack[2..]),
                &[smuggled],
                &[bare_lf],
            )
            .cmd("NOOP")
            .build(),
        dlg("difference 6: smuggling with <LF>.<CR><LF>: one message, refused")
            .helo()
            .start_data()
            .differ(format!("hello\n.{attack}"), &[smuggled], &[bare_lf])
            .cmd("NOOP")
            .build(),
        dlg("difference 6: a bare LF in the body")
            .helo()
            .start_data()
            .differ(
                "a\nb\r\n.\r\n",
                &[r#"250 ["eggs@example", ["spam@example"], [], [], "a\nb"]"#],
                &[bare_lf],
            )
            .cmd("MAIL FROM:<x@y>")
            .build(),
        dlg("difference 12: rcpt_options of a refused RCPT")
            .ehlo()
            .cmds(&[
                "MAIL FROM:<a@b>",
                "RCPT TO:<c@d>",
                "RCPT TO:<e@f> FOO=BAR",
                "DATA",
            ])
            .differ(
                "x\r\n.\r\n",
                &[r#"250 ["a@b", ["c@d"], [], ["FOO=BAR"], "x"]"#],
                &[r#"250 ["a@b", ["c@d"], [], [], "x"]"#],
            )
            .build(),
    ]
}

/// `data_size_limit=32`, as CPython's test_data_limit_dialog.
fn small_dialogues() -> Vec<Dialogue> {
    vec![
        dlg("EHLO with a small SIZE")
            .expect(
                "EHLO example",
                "250-mx.test.example\n250-SIZE 32\n250-8BITMIME\n250 HELP",
            )
            .build(),
        dlg("test_data_limit_dialog")
            .helo()
            .start_data()
            .send("data\r\nmore\r\n.\r\n", 1)
            .build(),
        dlg("test_data_limit_dialog_too_much_data")
            .helo()
            .start_data()
            .step(
                vec![b"This message is longer than 32 bytes\r\n.\r\n".to_vec()],
                Expect::Literal(strings(&["552 Error: Too much mail data"])),
            )
            .hang_up()
            .build(),
        dlg("a body of exactly the limit")
            .helo()
            .start_data()
            .send(format!("{}\r\n.\r\n", "x".repeat(32)), 1)
            .build(),
        dlg("a body one byte over the limit")
            .helo()
            .start_data()
            .send(format!("{}\r\n.\r\n", "x".repeat(33)), 1)
            .hang_up()
            .build(),
        dlg("dot-stuffing counts towards the limit (as received)")
            .helo()
            .start_data()
            .send(format!("{}\r\n.\r\n", ".".repeat(33)), 1)
            .hang_up()
            .build(),
        dlg("test_MAIL_size_parameter_larger_than_default_data_size_limit")
            .ehlo()
            .expect(
                "MAIL FROM:<eggs@example> SIZE=33",
                "552 Error: message size exceeds fixed maximum message size",
            )
            .expect("MAIL FROM:<eggs@example> SIZE=32", "250 OK")
            .build(),
        dlg("difference 3: after 552 the session is back in command state")
            .helo()
            .start_data()
            .send("This message is longer than 32 bytes\r\n.\r\n", 1)
            .differ("NOOP\r\n", &["<silence>"], &["250 OK"])
            .differ(
                ".\r\n",
                &[r#"250 ["eggs@example", ["spam@example"], [], [], "NOOP"]"#],
                &["500 Error: command \".\" not recognized"],
            )
            .build(),
        dlg("a 10 MB message over the limit")
            .helo()
            .start_data()
            .send([&vec![b'y'; 10 << 20][..], b"\r\n.\r\n"].concat(), 1)
            .hang_up()
            .build(),
    ]
}

/// `data_size_limit=0`: no SIZE, no MAIL allowance for it.
fn unlimited_dialogues() -> Vec<Dialogue> {
    vec![
        dlg("EHLO without SIZE")
            .expect(
                "EHLO example",
                "250-mx.test.example\n250-8BITMIME\n250 HELP",
            )
            .build(),
        dlg("no MAIL allowance without a limit")
            .ehlo()
            .cmd(long_mail(513, 'a'))
            .cmd(long_mail(512, 'a'))
            .build(),
        dlg("any SIZE is accepted")
            .ehlo()
            .cmd("MAIL FROM:<a@b> SIZE=99999999999999999999")
            .cmd("RSET")
            .cmd("MAIL FROM:<a@b> SIZE=x")
            .build(),
        dlg("a large message")
            .helo()
            .start_data()
            .send([&vec![b'z'; 1 << 20][..], b"\r\n.\r\n"].concat(), 1)
            .build(),
    ]
}

/// `enable_SMTPUTF8=True`.
fn utf8_dialogues() -> Vec<Dialogue> {
    vec![
        dlg("EHLO with SMTPUTF8")
            .expect(
                "EHLO example",
                "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250-SMTPUTF8\n250 HELP",
            )
            .build(),
        dlg("test_with_enable_smtputf8_true")
            .ehlo()
            .expect(
                "MAIL from: <foo@example.com> size=20 body=8bitmime smtputf8",
                "250 OK",
            )
            .build(),
        dlg("test_MAIL_command_accepts_SMTPUTF8_when_announced")
            .ehlo()
            .expect(
                "MAIL from: <naïve@example.com> BODY=8BITMIME SMTPUTF8",
                "250 OK",
            )
            .build(),
        dlg("test_process_smtputf8_message")
            .ehlo()
            .cmds(&["MAIL from: <a@example> ", "rcpt to:<b@example.com>", "data"])
            .send("c\r\n.\r\n", 1)
            .cmds(&[
                "MAIL from: <a@example> BODY=8BITMIME SMTPUTF8",
                "rcpt to:<b@example.com>",
                "data",
            ])
            .send("c\r\n.\r\n", 1)
            .build(),
        dlg("test_utf8_data")
            .ehlo()
            .cmds(&[
                "MAIL From: naïve@examplé BODY=8BITMIME SMTPUTF8",
                "RCPT To:späm@examplé",
                "DATA",
            ])
            .send(b"utf8 enriched text: \xc5\xbc\xc5\xba\xc4\x87\r\n.\r\n", 1)
            .build(),
        dlg("SMTPUTF8 takes no arguments")
            .ehlo()
            .cmd("MAIL FROM:<a@b> SMTPUTF8=yes")
            .cmd("MAIL FROM:<a@b> smtputf8")
            .build(),
        dlg("test_MAIL_command_limit_extended_with_SIZE_and_SMTPUTF8")
            .cmd("ehlo example")
            .expect(&long_mail(549, 'a'), "500 Error: line too long")
            .expect(&long_mail(548, 'a'), "250 OK")
            .build(),
        dlg("test_multiple_emails_with_extended_command_length")
            .cmd("ehlo example")
            .cmd(long_mail(549, 'a'))
            .cmd(long_mail(548, 'a'))
            .cmds(&["rcpt to:<hans@example.com>", "data"])
            .send("test\r\n.\r\n", 1)
            .cmd(long_mail(549, 'b'))
            .cmd(long_mail(548, 'b'))
            .cmds(&["rcpt to:<hans@example.com>", "data"])
            .send("test\r\n.\r\n", 1)
            .build(),
        dlg("non-ASCII echoed in an SMTPUTF8 transaction")
            .ehlo()
            .cmd("MAIL FROM:<ä@b> SMTPUTF8")
            .cmd("VRFY ö")
            .cmd("ünknown")
            .build(),
        dlg("difference 10: non-ASCII addresses in a transaction without SMTPUTF8")
            .ehlo()
            .differ(
                "MAIL FROM:<ä@b>\r\n",
                &["250 OK"],
                &["553 Error: non-ASCII address requires SMTPUTF8"],
            )
            .differ(
                "RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<ü@c>\r\n",
                &["250 OK", "250 OK", "250 OK"],
                &[
                    "250 OK",
                    "250 OK",
                    "553 Error: non-ASCII address requires SMTPUTF8",
                ],
            )
            .build(),
        dlg("difference 7: non-ASCII echoed outside an SMTPUTF8 transaction")
            .ehlo()
            .differ(
                "ÜBER\r\n",
                &["<closed>"],
                &["500 Error: command \"?BER\" not recognized"],
            )
            .hang_up()
            .build(),
        dlg("after the SMTPUTF8 message, SMTPUTF8 must be asked again")
            .ehlo()
            .cmds(&["MAIL FROM:<ä@b> SMTPUTF8", "RCPT TO:<ü@c>", "DATA"])
            .send("x\r\n.\r\n", 1)
            .cmds(&["MAIL FROM:<a@b> SMTPUTF8", "RCPT TO:<ü@c>", "DATA"])
            .send("y\r\n.\r\n", 1)
            .build(),
    ]
}

/// `decode_data=True`.
fn decode_dialogues() -> Vec<Dialogue> {
    vec![
        dlg("EHLO without 8BITMIME")
            .expect(
                "EHLO example",
                "250-mx.test.example\n250-SIZE 33554432\n250 HELP",
            )
            .build(),
        dlg("test_with_decode_data_true: no BODY, no SMTPUTF8")
            .ehlo()
            .cmds(&[
                "MAIL from: <foo@example.com> size=20 SMTPUTF8",
                "MAIL from: <foo@example.com> size=20 SMTPUTF8 BODY=8BITMIME",
                "MAIL from: <foo@example.com> size=20 BODY=UNKNOWN",
                "MAIL from: <foo@example.com> size=20 body=8bitmime",
            ])
            .expect("MAIL from: <foo@example.com> size=20", "250 OK")
            .build(),
        dlg("test_process_message_with_decode_data_true")
            .helo()
            .start_data()
            .send("plain ascii text\r\n.\r\n", 1)
            .build(),
        dlg("decode_data: UTF-8 data as text")
            .helo()
            .start_data()
            .send(
                b"utf8 enriched text: \xc5\xbc\xc5\xba\xc4\x87\r\nand some plain ascii\r\n.\r\n",
                1,
            )
            .build(),
        dlg("decode_data: dot-stuffing")
            .helo()
            .start_data()
            .send("..a\r\n.\r\n", 1)
            .build(),
    ]
}

#[test]
fn differential_sink() {
    run_set(SINK, sink_dialogues());
}

#[test]
fn differential_echo() {
    run_set(ECHO, echo_dialogues());
}

#[test]
fn differential_small_limit() {
    run_set(SMALL, small_dialogues());
}

#[test]
fn differential_unlimited() {
    run_set(UNLIMITED, unlimited_dialogues());
}

#[test]
fn differential_smtputf8() {
    run_set(UTF8, utf8_dialogues());
}

#[test]
fn differential_decode_data() {
    run_set(DECODE, decode_dialogues());
}

/// All dialogues, for counting.
fn all_dialogues() -> Vec<Dialogue> {
    [
        sink_dialogues(),
        echo_dialogues(),
        small_dialogues(),
        unlimited_dialogues(),
        utf8_dialogues(),
        decode_dialogues(),
    ]
    .concat()
}

#[test]
fn the_suite_is_large_and_states_its_differences() {
    let all = all_dialogues();
    eprintln!("{} dialogues", all.len());
    assert!(all.len() >= 100, "only {} dialogues", all.len());
    let mut names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all.len(), "dialogue names must be unique");
    // Every intended difference names its entry in docs/differences.md.
    let docs = include_str!("../docs/differences.md");
    for d in &all {
        if d.steps
            .iter()
            .any(|s| matches!(s.expect, Expect::Differ(..)))
        {
            let number = d
                .name
                .strip_prefix("difference ")
                .and_then(|rest| rest.split(':').next())
                .unwrap_or_else(|| panic!("{:?} differs but names no difference", d.name));
            assert!(
                docs.contains(&format!("\n| {number} |")),
                "{:?}: difference {number} is not in docs/differences.md",
                d.name
            );
        }
    }
}

/// A client written against CPython's smtpd (Python's smtplib, asserting the exact replies)
/// passes unchanged against both servers.
#[test]
fn a_client_written_for_cpython_passes_against_ours() {
    const CLIENT: &str = r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=10)
assert s.helo('example') == (250, b'mx.test.example')
assert s.mail('eggs@example') == (250, b'OK')
assert s.docmd('DATA') == (503, b'Error: need RCPT command')
assert s.rcpt('spam@example') == (250, b'OK')
assert s.data(b'data\r\nmore') == (250, b'OK')
assert s.docmd('NOOP', 'hi') == (501, b'Syntax: NOOP')
assert s.quit() == (221, b'Bye')
"#;
    let python = CPython::start(SINK);
    let ours = Ours::start(SINK);
    for (who, addr) in [("CPython", python.addr), ("ours", ours.addr)] {
        let out = Command::new(std::env::var("SMTPD_PYTHON").unwrap_or_else(|_| "python3".into()))
            .args(["-c", CLIENT, &addr.port().to_string()])
            .output()
            .expect("python3 runs (checked by CPython::start)");
        assert!(
            out.status.success(),
            "the smtplib client failed against {who}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The peak resident memory of this test process, in bytes.
fn peak_memory() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Writes `total` bytes of `fill` without holding them in memory.
fn stream(conn: &mut Conn, fill: u8, total: usize) {
    let chunk = vec![fill; 64 << 10];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        conn.stream.write_all(&chunk[..n]).expect("server reads");
        left -= n;
    }
}

/// An over-long line or an over-size message is discarded as it arrives, never buffered whole:
/// 256 MB of either leave the peak memory of the process far below 256 MB, and the session
/// answers and goes on.
#[test]
fn oversize_input_is_discarded_as_it_arrives() {
    const HUGE: usize = 256 << 20;
    let ours = Ours::start(SMALL);
    let before = peak_memory();
    let mut c = Conn::open(ours.addr);
    assert!(c.reply(REPLY_TIMEOUT).starts_with("220 "));
    c.write(&[b"NOOP ".to_vec()]);
    stream(&mut c, b'x', HUGE);
    c.write(&[b"\r\nNOOP\r\n".to_vec()]);
    assert_eq!(c.reply(REPLY_TIMEOUT), "500 Error: line too long");
    assert_eq!(c.reply(REPLY_TIMEOUT), "250 OK");
    c.write(&[b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec()]);
    for want in [
        "250 mx.test.example",
        "250 OK",
        "250 OK",
        "354 End data with <CR><LF>.<CR><LF>",
    ] {
        assert_eq!(c.reply(REPLY_TIMEOUT), want);
    }
    stream(&mut c, b'y', HUGE);
    c.write(&[b"\r\n.\r\nNOOP\r\n".to_vec()]);
    assert_eq!(c.reply(REPLY_TIMEOUT), "552 Error: Too much mail data");
    assert_eq!(c.reply(REPLY_TIMEOUT), "250 OK");
    let grown = peak_memory().saturating_sub(before);
    assert!(grown < 100 << 20, "peak memory grew by {grown} bytes");
}

/// `BareLf::Normalize` accepts a bare LF as a line end inside the message, but never as the
/// end of the message.
#[test]
fn bare_lf_normalize_policy() {
    let ours = Ours::start_with(ECHO, |o| o.session.bare_lf = BareLf::Normalize);
    let mut c = Conn::open(ours.addr);
    c.reply(REPLY_TIMEOUT);
    c.write(&[b"HELO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".to_vec()]);
    for _ in 0..4 {
        c.reply(REPLY_TIMEOUT);
    }
    c.write(&[b"a\nb\n.\nMAIL FROM:<evil@x>\r\n.\r\nNOOP\r\n".to_vec()]);
    assert_eq!(
        c.reply(REPLY_TIMEOUT),
        r#"250 ["a@b", ["c@d"], [], [], "a\nb\n\nMAIL FROM:<evil@x>"]"#
    );
    assert_eq!(c.reply(REPLY_TIMEOUT), "250 OK");
}
