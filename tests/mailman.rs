//! MailmanProxy against scripted servers: a fake Mailman 3 LMTP runner (TCP and unix socket), a
//! fake upstream MTA, and a fake Mailman 2 installation whose wrapper records its arguments and
//! stdin. The real Mailman 3 is in `tests/mailman3.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use smtpd::client::RelayOptions;
use smtpd::reactor::{Reactor, StopHandle};
use smtpd::server::{Listener, ServerOptions};
use smtpd::servers::mailman::{LmtpAddr, Mailman2, MailmanVersion, Suffixes};
use smtpd::servers::{MailmanOptions, MailmanProxy};

/// A message a scripted server took.
#[derive(Clone, Debug)]
struct Delivered {
    from: String,
    rcpts: Vec<String>,
    data: String,
}

/// Addresses the fake Mailman 3 knows (as its LMTP runner would answer them).
const LISTS: &[&str] = &[
    "test@example.com",
    "test-request@example.com",
    "test-owner@example.com",
    "test-bounces@example.com",
    "test-join@example.com",
    "my-list@example.com",
    "defect@example.com",
    "late@example.com",
];

/// A scripted SMTP or LMTP server on std threads.
/// LMTP: RCPT is 250 for [`LISTS`], 451 for `tempfail@…`, else 550; after the data one reply
/// per recipient: 501 for all if `defect@…` is among them, 451 for `late@…`, else 250.
/// SMTP: RCPT `r550…`/`r450…` refused with that code, else 250.
struct Fake {
    addr: Option<SocketAddr>,
    delivered: Arc<Mutex<Vec<Delivered>>>,
    rcpt_log: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Fake {
    fn smtp() -> Fake {
        Fake::start(Bound::Tcp(TcpListener::bind("127.0.0.1:0").unwrap()), false)
    }

    fn lmtp() -> Fake {
        Fake::start(Bound::Tcp(TcpListener::bind("127.0.0.1:0").unwrap()), true)
    }

    fn lmtp_unix(path: &Path) -> Fake {
        Fake::start(Bound::Unix(UnixListener::bind(path).unwrap()), true)
    }

    fn start(bound: Bound, lmtp: bool) -> Fake {
        let addr = match &bound {
            Bound::Tcp(l) => {
                l.set_nonblocking(true).unwrap();
                Some(l.local_addr().unwrap())
            }
            Bound::Unix(l) => {
                l.set_nonblocking(true).unwrap();
                None
            }
        };
        let delivered: Arc<Mutex<Vec<Delivered>>> = Default::default();
        let rcpt_log: Arc<Mutex<Vec<String>>> = Default::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, rl, c, s) = (
            delivered.clone(),
            rcpt_log.clone(),
            connections.clone(),
            stop.clone(),
        );
        let thread = thread::spawn(move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let conn: Option<(Box<dyn ReadWrite>, Box<dyn ReadWrite>)> = match &bound {
                    Bound::Tcp(l) => l.accept().ok().map(|(c, _)| {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        let r = c.try_clone().unwrap();
                        (Box::new(r) as Box<dyn ReadWrite>, Box::new(c) as _)
                    }),
                    Bound::Unix(l) => l.accept().ok().map(|(c, _)| {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                        let r = c.try_clone().unwrap();
                        (Box::new(r) as Box<dyn ReadWrite>, Box::new(c) as _)
                    }),
                };
                match conn {
                    Some((r, w)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let (d, rl, s) = (d.clone(), rl.clone(), s.clone());
                        workers.push(thread::spawn(move || serve(r, w, lmtp, d, rl, s)));
                    }
                    None => thread::sleep(Duration::from_millis(2)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        Fake {
            addr,
            delivered,
            rcpt_log,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr.unwrap()
    }

    fn delivered(&self) -> Vec<Delivered> {
        self.delivered.lock().unwrap().clone()
    }

    fn rcpts_seen(&self) -> Vec<String> {
        self.rcpt_log.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

fn serve(
    r: Box<dyn ReadWrite>,
    mut w: Box<dyn ReadWrite>,
    lmtp: bool,
    delivered: Arc<Mutex<Vec<Delivered>>>,
    rcpt_log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut r = BufReader::new(r);
    let mut say = |s: &str| w.write_all(format!("{s}\r\n").as_bytes()).is_ok();
    say(if lmtp {
        "220 localhost GNU Mailman LMTP runner 2.0"
    } else {
        "220 upstream.example ESMTP"
    });
    let read_line = |r: &mut BufReader<Box<dyn ReadWrite>>, line: &mut String| -> bool {
        line.clear();
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            match r.read_line(line) {
                Ok(0) => return false,
                Ok(_) if line.ends_with('\n') => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return false,
            }
        }
    };
    let strip = |s: &str| {
        s.trim()
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or("")
            .to_string()
    };
    let (mut from, mut rcpts, mut line) = (String::new(), Vec::<String>::new(), String::new());
    while read_line(&mut r, &mut line) {
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        if upper.starts_with("LHLO") || upper.starts_with("EHLO") {
            say("250-server.example\r\n250-8BITMIME\r\n250 SIZE 33554432");
        } else if upper.starts_with("MAIL FROM:") {
            from = strip(&cmd[10..]);
            rcpts.clear();
            say("250 Ok");
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = strip(&cmd[8..]);
            rcpt_log.lock().unwrap().push(rcpt.clone());
            let known = LISTS.contains(&rcpt.to_lowercase().as_str());
            if lmtp && rcpt.starts_with("tempfail@") {
                say("451 Requested action aborted: try later");
            } else if (lmtp && !known) || rcpt.starts_with("r550") {
                say("550 Requested action not taken: mailbox unavailable");
            } else if rcpt.starts_with("r450") {
                say("450 4.2.1 mailbox busy");
            } else {
                rcpts.push(rcpt);
                say("250 Ok");
            }
        } else if upper == "DATA" {
            say("354 End data with <CR><LF>.<CR><LF>");
            let mut data = String::new();
            let mut complete = false;
            while read_line(&mut r, &mut line) {
                if line == ".\r\n" {
                    complete = true;
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            if !complete {
                return;
            }
            if lmtp {
                let defect = rcpts.iter().any(|r| r.starts_with("defect@"));
                // Recorded before the replies, so a test that saw them sees the delivery.
                if !defect {
                    delivered.lock().unwrap().push(Delivered {
                        from: from.clone(),
                        rcpts: rcpts.clone(),
                        data,
                    });
                }
                for rcpt in &rcpts {
                    if defect {
                        say("501 Message has defects");
                    } else if rcpt.starts_with("late@") {
                        say("451 Requested action aborted: error in processing");
                    } else {
                        say("250 Ok");
                    }
                }
            } else {
                delivered.lock().unwrap().push(Delivered {
                    from: from.clone(),
                    rcpts: rcpts.clone(),
                    data,
                });
                say("250 queued");
            }
        } else if upper == "RSET" {
            rcpts.clear();
            say("250 Ok");
        } else if upper == "QUIT" {
            say("221 Bye");
            return;
        } else {
            say("502 not implemented");
        }
    }
}

/// The proxy under test, on its own reactor thread.
struct Proxy {
    addr: SocketAddr,
    stop: StopHandle,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(
        upstream: SocketAddr,
        configure: impl FnOnce(&mut MailmanOptions) + Send + 'static,
    ) -> Proxy {
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut reactor = Reactor::new().unwrap();
            let mut options = MailmanOptions::default();
            options.proxy.hostname = "proxy.example".into();
            let mut fast = RelayOptions::default();
            fast.connect_timeout = Duration::from_secs(2);
            fast.command_timeout = Duration::from_secs(2);
            fast.data_timeout = Duration::from_secs(2);
            options.proxy.relay = fast.clone();
            options.lmtp = fast;
            configure(&mut options);
            let proxy = MailmanProxy::new(upstream, options);
            let mut server_options = ServerOptions::default();
            server_options.session.hostname = "proxy.example".into();
            let listener = Listener::bind(
                &mut reactor,
                "127.0.0.1:0".parse().unwrap(),
                proxy,
                server_options,
            )
            .unwrap();
            tx.send((listener.local_addr(), reactor.stop_handle()))
                .unwrap();
            let _ = reactor.run_until(Instant::now() + Duration::from_secs(120), |_| false);
        });
        let (addr, stop) = rx.recv().unwrap();
        Proxy {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn mm3(upstream: SocketAddr, lmtp: SocketAddr) -> Proxy {
        Proxy::start(upstream, move |o| {
            o.mailman = MailmanVersion::Mailman3(LmtpAddr::Tcp(lmtp));
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        assert!(c.reply().starts_with("220 "));
        c.cmd("EHLO client.example");
        c
    }

    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            assert!(line.ends_with("\r\n"), "connection closed: {line:?}");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    /// MAIL, each RCPT (all sent, whatever their replies), DATA if any was accepted.
    /// Returns the RCPT replies and the final reply.
    fn send(&mut self, from: &str, rcpts: &[&str], body: &str) -> (Vec<String>, String) {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "{r}");
        let replies: Vec<String> = rcpts
            .iter()
            .map(|rcpt| self.cmd(&format!("RCPT TO:<{rcpt}>")))
            .collect();
        if !replies.iter().any(|r| r.starts_with("250")) {
            self.cmd("RSET");
            return (replies, String::new());
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "{r}");
        self.w.write_all(body.as_bytes()).unwrap();
        self.w.write_all(b"\r\n.\r\n").unwrap();
        let last = self.reply();
        (replies, last)
    }
}

fn codes(replies: &[String]) -> Vec<&str> {
    replies.iter().map(|r| &r[..3]).collect()
}

const BODY: &str = "To: test@example.com\r\nSubject: hello\r\n\r\nhi there";

#[test]
fn list_mail_goes_to_mailman_and_the_rest_upstream() {
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp());
    let proxy = Proxy::mm3(upstream.addr(), lmtp.addr());
    let mut c = Client::connect(proxy.addr);
    let (rcpts, last) = c.send(
        "sender@example.org",
        &[
            "test@example.com",
            "friend@example.org",
            "nolist@example.com",
            "Test-Request@Example.COM",
        ],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["250", "250", "250", "250"]);
    assert_eq!(last, "250 OK");
    let mm = lmtp.delivered();
    assert_eq!(mm.len(), 1);
    assert_eq!(mm[0].from, "sender@example.org");
    assert_eq!(
        mm[0].rcpts,
        ["test@example.com", "test-request@example.com"]
    );
    let data = &mm[0].data;
    assert!(
        data.starts_with("Received: from client.example (127.0.0.1)\r\n"),
        "{data}"
    );
    assert!(
        data.contains(
            "\r\nTo: test@example.com\r\nSubject: hello\r\nFrom: sender@example.org\r\nDate: "
        ),
        "{data}"
    );
    assert!(data.ends_with("\r\n\r\nhi there\r\n"), "{data}");
    assert!(!data.contains("X-Peer"), "{data}");
    let up = upstream.delivered();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].rcpts, ["friend@example.org", "nolist@example.com"]);
    // Upstream's copy: trace headers as PureProxy adds them, no From/Date added.
    assert!(
        up[0]
            .data
            .contains("Subject: hello\r\nX-Peer: 127.0.0.1\r\n\r\n"),
        "{}",
        up[0].data
    );
    assert!(!up[0].data.contains("From:"));
    // nolist@ was asked of Mailman first (550), then relayed.
    assert!(lmtp
        .rcpts_seen()
        .contains(&"nolist@example.com".to_string()));
}

#[test]
fn cpython_classification_decides_what_mailman_is_asked() {
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp());
    let proxy = Proxy::mm3(upstream.addr(), lmtp.addr());
    let mut c = Client::connect(proxy.addr);
    let (rcpts, last) = c.send(
        "s@example.org",
        // -admin is Mailman 3's -bounces; my-list (a dash) is never a list for CPython;
        // -bounces is not among CPython's suffixes.
        &[
            "test-admin@example.com",
            "my-list@example.com",
            "test-bounces@example.com",
        ],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["250", "250", "250"]);
    assert_eq!(last, "250 OK");
    assert_eq!(lmtp.rcpts_seen(), ["test-bounces@example.com"]);
    assert_eq!(lmtp.delivered()[0].rcpts, ["test-bounces@example.com"]);
    assert_eq!(
        upstream.delivered()[0].rcpts,
        ["my-list@example.com", "test-bounces@example.com"]
    );
}

#[test]
fn mailman3_suffixes_option_asks_mailman_about_its_own_addresses() {
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp());
    let lmtp_addr = lmtp.addr();
    let proxy = Proxy::start(upstream.addr(), move |o| {
        o.mailman = MailmanVersion::Mailman3(LmtpAddr::Tcp(lmtp_addr));
        o.suffixes = Suffixes::Mailman3;
    });
    let mut c = Client::connect(proxy.addr);
    let (rcpts, last) = c.send(
        "s@example.org",
        &[
            "my-list@example.com",
            "test-bounces@example.com",
            "test-confirm+tok@example.com",
        ],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["250", "250", "250"]);
    assert_eq!(last, "250 OK");
    assert_eq!(
        lmtp.delivered()[0].rcpts,
        ["my-list@example.com", "test-bounces@example.com"]
    );
    // Not a list of the fake: asked, refused with 550, relayed.
    assert_eq!(
        upstream.delivered()[0].rcpts,
        ["test-confirm+tok@example.com"]
    );
}

#[test]
fn mailman_down_gives_451_to_list_candidates_only() {
    let upstream = Fake::smtp();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::mm3(upstream.addr(), closed);
    let mut c = Client::connect(proxy.addr);
    // With CPython's rules every plain local part is a candidate: while Mailman cannot say
    // whether it is a list, it is deferred, never relayed upstream by mistake. `a-b-c` has two
    // dashes, so it is no candidate and is relayed.
    let (rcpts, last) = c.send(
        "s@example.org",
        &[
            "test@example.com",
            "a-b-c@example.org",
            "nolist@example.com",
        ],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["451", "250", "451"], "{rcpts:?}");
    assert!(
        rcpts[0].contains("mailing list server is not available"),
        "{rcpts:?}"
    );
    assert_eq!(last, "250 OK");
    assert_eq!(upstream.delivered()[0].rcpts, ["a-b-c@example.org"]);
}

#[test]
fn temporary_refusal_at_rcpt_is_451() {
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp());
    let proxy = Proxy::mm3(upstream.addr(), lmtp.addr());
    let mut c = Client::connect(proxy.addr);
    let (rcpts, last) = c.send(
        "s@example.org",
        &["tempfail@example.com", "test@example.com"],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["451", "250"]);
    assert_eq!(last, "250 OK");
    assert!(upstream.delivered().is_empty());
}

#[test]
fn defects_and_temporary_failures_after_data_are_reported() {
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp());
    let proxy = Proxy::mm3(upstream.addr(), lmtp.addr());
    let mut c = Client::connect(proxy.addr);
    // 501 from Mailman for every recipient: permanent, so the whole message is refused with it,
    // saying the upstream recipient was delivered.
    let (_, last) = c.send(
        "s@example.org",
        &["defect@example.com", "friend@example.org"],
        BODY,
    );
    assert!(
        last.starts_with(
            "501 <defect@example.com>: Message has defects (1 of 2 recipients were delivered)"
        ),
        "{last}"
    );
    assert_eq!(upstream.delivered().len(), 1);
    // 451 for one list recipient: the client must retry (the rest may be duplicated).
    let (_, last) = c.send(
        "s@example.org",
        &["test@example.com", "late@example.com"],
        BODY,
    );
    assert!(last.starts_with("451 4.3.0 "), "{last}");
    assert!(last.contains("<late@example.com>"), "{last}");
    // The same connection goes on working; the sessions are reused.
    let (_, last) = c.send(
        "s@example.org",
        &["test@example.com", "friend@example.org"],
        BODY,
    );
    assert_eq!(last, "250 OK");
    assert_eq!(lmtp.connections.load(Ordering::SeqCst), 1);
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
}

#[test]
fn upstream_refusals_and_upstream_down() {
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp());
    let proxy = Proxy::mm3(upstream.addr(), lmtp.addr());
    let mut c = Client::connect(proxy.addr);
    let (rcpts, last) = c.send(
        "s@example.org",
        &["r550@example.org", "r450@example.org", "test@example.com"],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["550", "450", "250"]);
    assert_eq!(last, "250 OK");
    drop(c);

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy2 = Proxy::mm3(closed, lmtp.addr());
    let mut c = Client::connect(proxy2.addr);
    let (rcpts, last) = c.send(
        "s@example.org",
        &["friend@example.org", "test@example.com"],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["451", "250"]);
    assert_eq!(last, "250 OK", "list mail does not need the upstream");
    assert_eq!(lmtp.delivered().len(), 2);
    drop(proxy);
}

#[test]
fn rset_and_list_only_transactions_leave_the_sessions_clean() {
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp());
    let proxy = Proxy::mm3(upstream.addr(), lmtp.addr());
    let mut c = Client::connect(proxy.addr);
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<test@example.com>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<friend@example.org>").starts_with("250"));
    assert!(c.cmd("RSET").starts_with("250"));
    let (_, last) = c.send("t@example.org", &["test-owner@example.com"], BODY);
    assert_eq!(last, "250 OK");
    let mm = lmtp.delivered();
    assert_eq!(mm.len(), 1);
    assert_eq!(
        (mm[0].from.as_str(), mm[0].rcpts.as_slice()),
        ("t@example.org", &["test-owner@example.com".to_string()][..])
    );
    assert!(upstream.delivered().is_empty());
    assert_eq!(c.cmd("QUIT"), "221 Bye");
}

#[test]
fn relaying_is_refused_to_untrusted_clients_but_lists_are_served() {
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp());
    let lmtp_addr = lmtp.addr();
    let proxy = Proxy::start(upstream.addr(), move |o| {
        o.mailman = MailmanVersion::Mailman3(LmtpAddr::Tcp(lmtp_addr));
        o.proxy.trust_loopback = false;
    });
    let mut c = Client::connect(proxy.addr);
    let (rcpts, last) = c.send(
        "s@example.org",
        &[
            "friend@example.org",
            "test@example.com",
            "nolist@example.com",
        ],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["554", "250", "554"]);
    assert_eq!(last, "250 OK");
    assert!(upstream.delivered().is_empty());
}

#[test]
fn lmtp_over_a_unix_socket() {
    let dir = TempDir::new("lmtp-unix");
    let sock = dir.path().join("lmtp.sock");
    let (upstream, lmtp) = (Fake::smtp(), Fake::lmtp_unix(&sock));
    let proxy = Proxy::start(upstream.addr(), move |o| {
        o.mailman = MailmanVersion::Mailman3(LmtpAddr::Unix(sock));
    });
    let mut c = Client::connect(proxy.addr);
    let (rcpts, last) = c.send(
        "s@example.org",
        &["test@example.com", "nolist@example.com"],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["250", "250"]);
    assert_eq!(last, "250 OK");
    assert_eq!(lmtp.delivered()[0].rcpts, ["test@example.com"]);
    assert_eq!(upstream.delivered()[0].rcpts, ["nolist@example.com"]);
}

// ---- Mailman 2 ----

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "smtpd-mailman-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake Mailman 2 prefix: lists `test`, `other` (config.db.last), `gone` and `grp` and `slow`,
/// plus `$prefix/config.pck` (what `lists/../config.pck` would find). The wrapper records
/// `ARGS` and stdin under `record/`, and exits 1 for `gone`, 2 for `grp`, sleeps for `slow`.
fn fake_mailman2() -> TempDir {
    let dir = TempDir::new("mm2");
    let p = dir.path();
    for (list, file) in [
        ("test", "config.pck"),
        ("other", "config.db.last"),
        ("gone", "config.pck"),
        ("grp", "config.pck"),
        ("slow", "config.pck"),
    ] {
        std::fs::create_dir_all(p.join("lists").join(list)).unwrap();
        std::fs::write(p.join("lists").join(list).join(file), b"").unwrap();
    }
    std::fs::write(p.join("config.pck"), b"").unwrap();
    std::fs::create_dir_all(p.join("mail")).unwrap();
    std::fs::create_dir_all(p.join("record")).unwrap();
    let wrapper = p.join("mail").join("mailman");
    std::fs::write(
        &wrapper,
        r#"#!/bin/sh
rec="$(dirname "$0")/../record/$$"
echo "$@" > "$rec.args"
cat > "$rec.stdin"
case "$2" in
  gone) echo "post script, list not found: $2" >&2; exit 1 ;;
  grp) echo "Group mismatch error.  Mailman expected the mail wrapper script to be executed as group \"list\"" >&2; exit 2 ;;
  slow) exec sleep 30 ;;
esac
exit 0
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// What the fake wrapper recorded: (arguments, stdin), sorted by arguments.
fn wrapper_runs(dir: &Path) -> Vec<(String, String)> {
    let mut runs = Vec::new();
    for entry in std::fs::read_dir(dir.join("record")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "args") {
            let args = std::fs::read_to_string(&path).unwrap().trim().to_string();
            let stdin = std::fs::read_to_string(path.with_extension("stdin")).unwrap_or_default();
            runs.push((args, stdin));
        }
    }
    runs.sort();
    runs
}

fn mm2_proxy(upstream: SocketAddr, prefix: &Path, timeout: Duration) -> Proxy {
    let prefix = prefix.to_path_buf();
    Proxy::start(upstream, move |o| {
        o.mailman = MailmanVersion::Mailman2(Mailman2::at(prefix));
        o.wrapper_timeout = timeout;
    })
}

#[test]
fn mailman2_lists_are_piped_to_the_wrapper() {
    let upstream = Fake::smtp();
    let mm2 = fake_mailman2();
    let proxy = mm2_proxy(upstream.addr(), mm2.path(), Duration::from_secs(10));
    let mut c = Client::connect(proxy.addr);
    let (rcpts, last) = c.send(
        "sender@example.org",
        &[
            "Test@lists.example.com",
            "test-request@whatever",
            "other-leave@x",
            "test-admin@x",
            "friend@example.org",
            "nolist@x",
            "..@x",
            "my-list@x",
        ],
        BODY,
    );
    assert_eq!(codes(&rcpts), ["250"; 8]);
    assert_eq!(last, "250 OK");
    let runs = wrapper_runs(mm2.path());
    let args: Vec<&str> = runs.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        args,
        ["admin test", "leave other", "post test", "request test"]
    );
    for (_, stdin) in &runs {
        assert!(
            stdin.contains("Subject: hello\r\nFrom: sender@example.org\r\nDate: "),
            "{stdin}"
        );
        assert!(stdin.ends_with("\r\n\r\nhi there"), "{stdin:?}");
    }
    // `..` never reached the file system as a list; it and the others went upstream.
    assert_eq!(
        upstream.delivered()[0].rcpts,
        ["friend@example.org", "nolist@x", "..@x", "my-list@x"]
    );
}

#[test]
fn mailman2_exit_codes_become_replies() {
    let upstream = Fake::smtp();
    let mm2 = fake_mailman2();
    let proxy = mm2_proxy(upstream.addr(), mm2.path(), Duration::from_millis(700));
    let mut c = Client::connect(proxy.addr);
    let (_, last) = c.send("s@example.org", &["gone@x"], BODY);
    assert!(last.starts_with("550 <gone@x>: 5.1.1"), "{last}");
    let (_, last) = c.send("s@example.org", &["grp@x", "test@x"], BODY);
    assert!(
        last.starts_with("451 4.3.0 Requested action aborted: <grp@x>: 451"),
        "{last}"
    );
    assert!(
        last.contains("(1 of 2 recipients were delivered)"),
        "{last}"
    );
    let started = Instant::now();
    let (_, last) = c.send("s@example.org", &["slow@x"], BODY);
    assert!(last.starts_with("451 "), "{last}");
    assert!(last.contains("timed out"), "{last}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The proxy still serves.
    let (_, last) = c.send("s@example.org", &["test@x"], BODY);
    assert_eq!(last, "250 OK");
}

#[test]
fn mailman2_large_message_streams_through_the_pipe() {
    let upstream = Fake::smtp();
    let mm2 = fake_mailman2();
    let proxy = mm2_proxy(upstream.addr(), mm2.path(), Duration::from_secs(20));
    let mut c = Client::connect(proxy.addr);
    // Far more than a pipe buffer (64 KiB): written as the child reads.
    let line = "x".repeat(998);
    let body = format!(
        "Subject: big\r\n\r\n{}",
        vec![line.as_str(); 1000].join("\r\n")
    );
    let (_, last) = c.send("s@example.org", &["test@x"], &body);
    assert_eq!(last, "250 OK");
    let runs = wrapper_runs(mm2.path());
    assert_eq!(runs.len(), 1);
    assert!(runs[0].1.len() > 1_000_000);
    assert!(runs[0].1.ends_with(&line));
}
