//! The relay's TLS to its upstream (`RelayOptions::tls`): PureProxy relaying to our own server
//! with a test CA, in each `UpstreamTlsMode`, and a scripted upstream that pipelines bytes
//! after its `220` to STARTTLS (response injection: they are never taken as replies).

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use smtpd::client::{upstream_ca_config, RelayOptions, UpstreamTls, UpstreamTlsMode};
use smtpd::reactor::Reactor;
use smtpd::server::{
    self, AddressRequest, Listener, Message, Outcome, ServerCtx, ServerOptions, SmtpServer,
    TlsConfig,
};
use smtpd::servers::{ProxyOptions, PureProxy, RelayMode};

/// A test CA, a leaf for `names` signed by it, and the CA as a PEM file.
struct Pki {
    ca_file: PathBuf,
    leaf: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki(names: &[&str], tag: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "smtpd-upstream-tls-{}-{tag}-ca.pem",
        std::process::id()
    ));
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    Pki {
        ca_file,
        leaf: leaf_cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// What the upstream's hooks saw.
enum Seen {
    Mail,
    Message(Box<Message>),
}

struct Record(mpsc::Sender<Seen>);

impl SmtpServer for Record {
    fn on_mail(&mut self, _r: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.0.send(Seen::Mail);
        Outcome::Accept
    }
    fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.0.send(Seen::Message(Box::new(m.clone())));
        Outcome::Accept
    }
}

/// Our own server as the upstream: STARTTLS with `pki`'s leaf, implicit TLS, or plaintext.
fn upstream(pki: Option<&Pki>, implicit: bool) -> (server::ServerHandle, mpsc::Receiver<Seen>) {
    let mut options = ServerOptions::default();
    options.session.hostname = "upstream.test".into();
    if let Some(pki) = pki {
        options.tls =
            Some(TlsConfig::from_der(vec![pki.leaf.clone()], pki.key.clone_key()).unwrap());
    }
    options.implicit_tls = implicit;
    let (tx, rx) = mpsc::channel();
    let handle = server::spawn("127.0.0.1:0".parse().unwrap(), options, move || {
        Rc::new(RefCell::new(Record(tx)))
    })
    .unwrap();
    (handle, rx)
}

/// A PureProxy (live) on its own reactor thread, relaying to `to`.
struct Proxy {
    addr: SocketAddr,
    stop: smtpd::reactor::StopHandle,
    thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(to: SocketAddr, tls: UpstreamTls) -> Proxy {
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut reactor = Reactor::new().unwrap();
            let mut options = ProxyOptions::default();
            options.mode = RelayMode::Live;
            options.hostname = "proxy.example".into();
            let mut relay = RelayOptions::default();
            relay.connect_timeout = Duration::from_secs(5);
            relay.command_timeout = Duration::from_secs(5);
            relay.tls = tls;
            options.relay = relay;
            let proxy = PureProxy::new(to, options);
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
            let deadline = Instant::now() + Duration::from_secs(60);
            let _ = reactor.run_until(deadline, |r| r.is_empty());
        });
        let (addr, stop) = rx.recv().unwrap();
        Proxy {
            addr,
            stop,
            thread: Some(thread),
        }
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

fn tls(mode: UpstreamTlsMode, pki: &Pki, name: &str) -> UpstreamTls {
    let mut tls = UpstreamTls::new(mode);
    tls.config = Some(upstream_ca_config(&pki.ca_file).unwrap());
    tls.name = Some(name.to_owned());
    tls
}

fn read_reply(r: &mut impl BufRead) -> String {
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "connection closed: {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_owned();
        }
    }
}

/// One transaction through the proxy; the first reply that is not 2xx/354, or the final one.
fn send_through(proxy: &Proxy) -> String {
    send_to(proxy.addr)
}

/// [`send_through`] to any address.
fn send_to(addr: SocketAddr) -> String {
    send_body(addr, "Subject: relayed\r\n\r\nover TLS?\r\n")
}

/// One transaction with `body` (CRLF lines, no leading dots).
fn send_body(addr: SocketAddr, body: &str) -> String {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut cmd = |line: &str, r: &mut BufReader<TcpStream>| {
        w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        read_reply(r)
    };
    assert!(read_reply(&mut r).starts_with("220 "));
    assert!(cmd("EHLO client.example", &mut r).starts_with("250 "));
    for line in [
        "MAIL FROM:<a@example.com>",
        "RCPT TO:<b@example.net>",
        "DATA",
    ] {
        let reply = cmd(line, &mut r);
        if !(reply.starts_with('2') || reply.starts_with("354")) {
            return reply;
        }
    }
    cmd(&format!("{body}."), &mut r)
}

fn message(rx: &mpsc::Receiver<Seen>) -> Message {
    loop {
        match rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no message")
        {
            Seen::Mail => {}
            Seen::Message(m) => return *m,
        }
    }
}

fn nothing_received(rx: &mpsc::Receiver<Seen>) {
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the upstream received something"
    );
}

#[test]
fn off_stays_in_plaintext_even_when_starttls_is_offered() {
    let pki = pki(&["localhost"], "off");
    let (up, rx) = upstream(Some(&pki), false);
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Off, &pki, "localhost"),
    );
    assert!(send_through(&proxy).starts_with("250"));
    assert!(message(&rx).tls.is_none());
}

#[test]
fn opportunistic_uses_starttls_when_offered_and_plaintext_otherwise() {
    let pki = pki(&["localhost"], "opp");
    let (up, rx) = upstream(Some(&pki), false);
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Opportunistic, &pki, "localhost"),
    );
    assert!(send_through(&proxy).starts_with("250"));
    let m = message(&rx);
    let info = m.tls.expect("the upstream saw a TLS session");
    assert!(info.version.starts_with("TLSv1."), "{info:?}");
    assert_eq!(info.sni.as_deref(), Some("localhost"));

    let (plain, rx) = upstream(None, false);
    let proxy = Proxy::start(
        plain.local_addr(),
        tls(UpstreamTlsMode::Opportunistic, &pki, "localhost"),
    );
    assert!(send_through(&proxy).starts_with("250"));
    assert!(message(&rx).tls.is_none());
}

#[test]
fn opportunistic_encrypts_without_verifying_the_certificate() {
    // RFC 7435, Postfix's `may`: a certificate for another name (or from an unknown CA) still
    // gets an encrypted session; only `required` turns it into a refusal.
    let pki = pki(&["wrong.example"], "oppunverified");
    let (up, rx) = upstream(Some(&pki), false);
    let mut settings = UpstreamTls::new(UpstreamTlsMode::Opportunistic);
    settings.name = Some("localhost".to_owned());
    let proxy = Proxy::start(up.local_addr(), settings);
    let reply = send_through(&proxy);
    assert!(reply.starts_with("250"), "{reply}");
    let info = message(&rx).tls.expect("encrypted all the same");
    assert!(info.version.starts_with("TLSv1."), "{info:?}");
}

#[test]
fn opportunistic_does_not_fall_back_when_the_offered_handshake_fails() {
    // STARTTLS offered, then the upstream speaks no TLS: 4xx, never a plaintext retry.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let script = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(tcp.try_clone().unwrap());
        let mut w = tcp;
        let mut line = String::new();
        w.write_all(b"220 scripted ready\r\n").unwrap();
        r.read_line(&mut line).unwrap();
        w.write_all(b"250-scripted\r\n250 STARTTLS\r\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "STARTTLS\r\n");
        w.write_all(b"220 go ahead\r\n").unwrap();
        // Whatever the client sends now is a ClientHello; the answer is not TLS.
        let _ = w.write_all(b"this is not a TLS record\r\n");
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut r, &mut rest);
        // Nothing in plaintext after the failed handshake (no MAIL, no retry).
        !String::from_utf8_lossy(&rest).contains("MAIL FROM")
    });
    let mut settings = UpstreamTls::new(UpstreamTlsMode::Opportunistic);
    settings.name = Some("localhost".to_owned());
    let proxy = Proxy::start(addr, settings);
    let reply = send_through(&proxy);
    assert!(reply.starts_with('4'), "{reply}");
    drop(proxy);
    assert!(script.join().unwrap(), "the relay went on in plaintext");
}

#[test]
fn required_without_starttls_gets_4xx_and_relays_nothing() {
    let pki = pki(&["localhost"], "reqnone");
    let (up, rx) = upstream(None, false);
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Required, &pki, "localhost"),
    );
    let reply = send_through(&proxy);
    assert!(reply.starts_with("451"), "{reply}");
    assert!(reply.contains("STARTTLS"), "{reply}");
    nothing_received(&rx);
}

#[test]
fn required_with_a_certificate_for_another_name_gets_4xx_and_relays_nothing() {
    let pki = pki(&["wrong.example"], "reqname");
    let (up, rx) = upstream(Some(&pki), false);
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Required, &pki, "localhost"),
    );
    let reply = send_through(&proxy);
    assert!(reply.starts_with('4'), "{reply}");
    nothing_received(&rx);
}

#[test]
fn required_with_an_untrusted_ca_gets_4xx() {
    let served = pki(&["localhost"], "reqca-served");
    let other = pki(&["localhost"], "reqca-other");
    let (up, rx) = upstream(Some(&served), false);
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Required, &other, "localhost"),
    );
    assert!(send_through(&proxy).starts_with('4'));
    nothing_received(&rx);
}

#[test]
fn required_with_the_right_ca_and_name_delivers_over_tls() {
    let pki = pki(&["localhost", "127.0.0.1"], "reqok");
    let (up, rx) = upstream(Some(&pki), false);
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Required, &pki, "localhost"),
    );
    assert!(send_through(&proxy).starts_with("250"));
    let m = message(&rx);
    assert!(m.tls.is_some());
    assert!(String::from_utf8_lossy(&m.data).contains("over TLS?"));
    // No name given: the IP address is verified (the leaf carries it as an IP SAN).
    let mut by_ip = tls(UpstreamTlsMode::Required, &pki, "x");
    by_ip.name = None;
    let proxy = Proxy::start(up.local_addr(), by_ip);
    assert!(send_through(&proxy).starts_with("250"));
    assert!(message(&rx).tls.is_some());
}

#[test]
fn a_large_message_streams_through_the_upstream_tls_layer() {
    let pki = pki(&["localhost"], "large");
    let (up, rx) = upstream(Some(&pki), false);
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Required, &pki, "localhost"),
    );
    // 3 MiB: many 64 KiB pieces, each more than rustls' outgoing buffer takes at once.
    let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n";
    let body = format!("Subject: big\r\n\r\n{}", line.repeat(3 << 20 >> 6));
    assert!(send_body(proxy.addr, &body).starts_with("250"));
    let m = message(&rx);
    assert!(m.tls.is_some());
    assert!(m.data.len() >= 3 << 20, "{}", m.data.len());
    assert!(m.data.ends_with(line.trim_end().as_bytes()) || m.data.ends_with(line.as_bytes()));
}

#[test]
fn implicit_tls_to_an_smtps_upstream() {
    let pki = pki(&["localhost"], "implicit");
    let (up, rx) = upstream(Some(&pki), true);
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Implicit, &pki, "localhost"),
    );
    assert!(send_through(&proxy).starts_with("250"));
    assert!(message(&rx).tls.is_some());
    // Against the wrong name: 4xx.
    let proxy = Proxy::start(
        up.local_addr(),
        tls(UpstreamTlsMode::Implicit, &pki, "wrong.example"),
    );
    assert!(send_through(&proxy).starts_with('4'));
}

/// A scripted upstream: after `220` to STARTTLS it sends `250 injected` in the same segment,
/// then runs a blocking rustls server. Returns the commands it read over TLS.
fn scripted_injecting_upstream(pki: &Pki) -> (SocketAddr, thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![pki.leaf.clone()], pki.key.clone_key())
            .unwrap(),
    );
    let thread = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(tcp.try_clone().unwrap());
        let mut w = tcp;
        let mut line = String::new();
        w.write_all(b"220 scripted ready\r\n").unwrap();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("EHLO"), "{line:?}");
        w.write_all(b"250-scripted\r\n250 STARTTLS\r\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "STARTTLS\r\n");
        // One segment: the 220 and an injected reply.
        w.write_all(b"220 go ahead\r\n250 injected\r\n").unwrap();
        assert!(r.buffer().is_empty());
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut s = BufReader::new(rustls::StreamOwned::new(conn, r.into_inner()));
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            if s.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let command = line.trim_end().to_owned();
            let reply: &[u8] = match command.get(..4).unwrap_or("") {
                "EHLO" => b"250 scripted\r\n",
                "DATA" => b"354 go\r\n",
                "QUIT" => b"221 bye\r\n",
                _ => b"250 ok\r\n",
            };
            let is_data = command == "DATA";
            let is_quit = command == "QUIT";
            seen.push(command);
            s.get_mut().write_all(reply).unwrap();
            s.get_mut().flush().unwrap();
            if is_data {
                loop {
                    let mut body = String::new();
                    s.read_line(&mut body).unwrap();
                    if body == ".\r\n" {
                        break;
                    }
                }
                seen.push(".".to_owned());
                s.get_mut().write_all(b"250 queued\r\n").unwrap();
                s.get_mut().flush().unwrap();
            }
            if is_quit {
                break;
            }
        }
        seen
    });
    (addr, thread)
}

#[test]
fn reply_bytes_after_the_starttls_220_are_never_read_as_replies() {
    let pki = pki(&["localhost"], "inject");
    let (addr, script) = scripted_injecting_upstream(&pki);
    let proxy = Proxy::start(addr, tls(UpstreamTlsMode::Required, &pki, "localhost"));
    let reply = send_through(&proxy);
    // Taken as a reply, `250 injected` would have answered during the handshake (a 451) or
    // stood in for the EHLO over TLS.
    assert!(reply.starts_with("250"), "{reply}");
    drop(proxy);
    let seen = script.join().unwrap();
    assert!(seen[0].starts_with("EHLO "), "{seen:?}");
    assert!(seen[1].starts_with("MAIL FROM:<a@example.com>"), "{seen:?}");
    assert!(seen.contains(&".".to_owned()), "{seen:?}");
}

/// The `smtpd` binary as a PureProxy with the given extra options; killed on drop.
struct Binary {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Binary {
    fn pure_proxy(upstream_port: u16, extra: &[&str]) -> Binary {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_smtpd"))
            .args(["-n", "-c", "PureProxy"])
            .args(extra)
            .arg(addr.to_string())
            .arg(format!("localhost:{upstream_port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the proxy did not start");
            thread::sleep(Duration::from_millis(20));
        }
        Binary { child, addr }
    }

    fn send(&self) -> String {
        send_to(self.addr)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_command_line_relays_over_verified_tls() {
    let pki = pki(&["localhost"], "cli");
    let ca = pki.ca_file.to_str().unwrap().to_owned();
    let (up, rx) = upstream(Some(&pki), false);
    let port = up.local_addr().port();
    // The name verified defaults to the remote host as given: localhost.
    let proxy = Binary::pure_proxy(port, &["--upstream-tls", "required", "--upstream-ca", &ca]);
    assert!(proxy.send().starts_with("250"));
    assert!(message(&rx).tls.is_some());
    let proxy = Binary::pure_proxy(
        port,
        &[
            "--upstream-tls=required",
            "--upstream-ca",
            &ca,
            "--upstream-tls-name",
            "wrong.example",
        ],
    );
    assert!(proxy.send().starts_with("451"));
    nothing_received(&rx);
    let proxy = Binary::pure_proxy(port, &["--upstream-tls", "off"]);
    assert!(proxy.send().starts_with("250"));
    assert!(message(&rx).tls.is_none());
}
