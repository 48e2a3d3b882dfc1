//! TLS through the library: `ServerOptions::tls` with a `TlsConfig` made in memory, a rustls
//! client (STARTTLS and implicit TLS, TLS 1.2 and 1.3), the TLS facts the hooks and the message
//! see, a large message through the TLS layer, and `TlsConfig`'s errors.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use smtpd::server::{
    self, AddressRequest, Message, Outcome, ServerCtx, ServerOptions, SmtpServer, TlsConfig,
    TlsConfigError,
};
use smtpd::smtp::TlsInfo;

struct Pki {
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
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
    let leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    Pki {
        ca: ca_cert.der().clone(),
        leaf: leaf_cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

/// What the hooks saw: the TLS facts at MAIL, and the messages.
enum Seen {
    Mail(Option<TlsInfo>),
    Message(Message),
}

struct Record(mpsc::Sender<Seen>);

impl SmtpServer for Record {
    fn on_mail(&mut self, request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.0.send(Seen::Mail(request.tls.cloned()));
        Outcome::Accept
    }
    fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        let _ = self.0.send(Seen::Message(m.clone()));
        Outcome::Accept
    }
}

fn start(pki: &Pki, implicit: bool) -> (server::ServerHandle, mpsc::Receiver<Seen>) {
    let mut options = ServerOptions::default();
    options.session.hostname = "mx.test".into();
    options.tls = Some(TlsConfig::from_der(vec![pki.leaf.clone()], pki.key.clone_key()).unwrap());
    options.implicit_tls = implicit;
    let (tx, rx) = mpsc::channel();
    let handle = server::spawn("127.0.0.1:0".parse().unwrap(), options, move || {
        Rc::new(RefCell::new(Record(tx)))
    })
    .unwrap();
    (handle, rx)
}

fn client_config(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One reply (all its lines) from a line reader.
fn reply(r: &mut impl BufRead) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "EOF after {lines:?}");
        let line = line.trim_end().to_owned();
        let last = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line);
        if last {
            return lines;
        }
    }
}

fn cmd(r: &mut BufReader<impl Read + Write>, line: &str) -> Vec<String> {
    r.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    r.get_mut().flush().unwrap();
    reply(r)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_over(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> BufReader<Tls> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    BufReader::new(rustls::StreamOwned::new(conn, tcp))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

/// MAIL, RCPT and a `size`-byte body over `s`; returns the reply to the data.
fn transaction(s: &mut BufReader<Tls>, size: usize) -> Vec<String> {
    assert_eq!(cmd(s, "MAIL FROM:<a@example.com>"), ["250 OK"]);
    assert_eq!(cmd(s, "RCPT TO:<b@example.com>"), ["250 OK"]);
    assert_eq!(cmd(s, "DATA")[0].get(..3), Some("354"));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n",
        );
    }
    body.extend_from_slice(b".\r\n");
    s.get_mut().write_all(&body).unwrap();
    s.get_mut().flush().unwrap();
    reply(s)
}

fn next_message(rx: &mpsc::Receiver<Seen>) -> (Option<TlsInfo>, Message) {
    let Seen::Mail(at_mail) = rx.recv_timeout(Duration::from_secs(10)).unwrap() else {
        panic!("MAIL not seen first")
    };
    let Seen::Message(m) = rx.recv_timeout(Duration::from_secs(10)).unwrap() else {
        panic!("no message")
    };
    (at_mail, m)
}

#[test]
fn starttls_with_tls_1_2_and_1_3_and_a_large_message() {
    let pki = pki();
    let (handle, rx) = start(&pki, false);
    for (version, name) in [
        (&rustls::version::TLS12, "TLSv1.2"),
        (&rustls::version::TLS13, "TLSv1.3"),
    ] {
        let mut plain = BufReader::new(connect(handle.local_addr()));
        assert_eq!(reply(&mut plain)[0].get(..3), Some("220"));
        let ehlo = cmd(&mut plain, "EHLO client.example");
        assert!(ehlo.contains(&"250-STARTTLS".to_owned()), "{ehlo:?}");
        assert_eq!(
            cmd(&mut plain, "STARTTLS"),
            ["220 2.0.0 Ready to start TLS"]
        );
        assert!(plain.buffer().is_empty());
        let mut s = tls_over(plain.into_inner(), client_config(&pki, version));
        let ehlo = cmd(&mut s, "EHLO client.example");
        assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
        // 1 MiB: many TLS records, more than rustls' 16 KiB plaintext buffer at once.
        assert_eq!(transaction(&mut s, 1 << 20), ["250 OK"]);
        let (at_mail, message) = next_message(&rx);
        let at_mail = at_mail.expect("on_mail sees TLS");
        assert_eq!(at_mail.version, name);
        assert_eq!(at_mail.sni.as_deref(), Some("localhost"));
        assert_eq!(message.tls.as_deref(), Some(&at_mail));
        assert!(message.data.len() >= 1 << 20);
        assert_eq!(cmd(&mut s, "QUIT"), ["221 Bye"]);
    }
    handle.shutdown(Duration::from_secs(1)).unwrap();
}

#[test]
fn implicit_tls_greets_over_tls() {
    let pki = pki();
    let (handle, rx) = start(&pki, true);
    let mut s = tls_over(
        connect(handle.local_addr()),
        client_config(&pki, &rustls::version::TLS13),
    );
    assert_eq!(reply(&mut s)[0].get(..4), Some("220 "));
    let ehlo = cmd(&mut s, "EHLO client.example");
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert_eq!(
        cmd(&mut s, "STARTTLS"),
        ["503 5.5.1 Error: TLS already active"]
    );
    assert_eq!(transaction(&mut s, 100), ["250 OK"]);
    let (at_mail, _) = next_message(&rx);
    assert_eq!(at_mail.unwrap().version, "TLSv1.3");
    handle.shutdown(Duration::from_secs(1)).unwrap();
}

#[test]
fn tls_config_errors_name_the_problem() {
    let pki = pki();
    let other = PrivateKeyDer::Pkcs8(KeyPair::generate().unwrap().serialize_der().into());
    let err = TlsConfig::from_der(vec![pki.leaf.clone()], other).unwrap_err();
    assert!(matches!(err, TlsConfigError::Refused(_)), "{err}");
    let err =
        TlsConfig::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    assert!(TlsConfig::from_der(vec![pki.leaf.clone()], pki.key.clone_key()).is_ok());
}

#[test]
fn clones_of_a_tls_config_share_the_certificate_slot() {
    let (a, b) = (pki(), pki());
    let config = TlsConfig::from_der(vec![a.leaf.clone()], a.key.clone_key()).unwrap();
    let kept = config.clone();
    let other = TlsConfig::from_der(vec![b.leaf.clone()], b.key.clone_key()).unwrap();
    assert!(!Arc::ptr_eq(&config.rustls(), &other.rustls()));
    kept.replace(&other);
    assert!(Arc::ptr_eq(&config.rustls(), &other.rustls()));
    let err = kept
        .reload_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem")
        .unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
    assert!(
        Arc::ptr_eq(&config.rustls(), &other.rustls()),
        "kept after a failed reload"
    );
}
