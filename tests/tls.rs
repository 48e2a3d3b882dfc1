//! TLS on the listener against real clients: Python's `smtplib` (`starttls()` and `SMTP_SSL`),
//! `openssl s_client` (STARTTLS and implicit TLS, TLS 1.2 and 1.3), swaks; the pipelined
//! injection after STARTTLS (CVE-2011-0411 class), `--require-starttls`, STARTTLS errors, a
//! garbage and a stalled handshake beside a normal transaction, and bad certificates at start.
//! Certificates are made here with rcgen: a test CA and a leaf for `localhost` and 127.0.0.1.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use support::{python_ok, run, start_smtpd, Proc, RawClient};

const HEADER: &str = "---------- MESSAGE FOLLOWS ----------";

/// A directory with `ca.pem`, `cert.pem` and `key.pem` (a leaf for localhost and 127.0.0.1
/// signed by the CA), and `other-key.pem` (a key that belongs to no certificate).
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new() -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "smtpd-tls-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: a client trusting two test CAs must tell them apart.
        let name = format!("smtpd test CA {}", dir.display());
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf_cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.join("other-key.pem"), other.serialize_pem()).unwrap();
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `smtpd -n -c DebuggingServer --tls-cert .. --tls-key .. EXTRA... 127.0.0.1:PORT`.
fn start_tls_server(certs: &Certs, extra: &[&str]) -> (Proc, u16) {
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut args = vec![
        "-n",
        "-c",
        "DebuggingServer",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    start_smtpd(&args)
}

fn wait_for(proc: &Proc, needle: &str) -> bool {
    support::wait_until(Duration::from_secs(5), || {
        proc.stdout().contains(needle) || proc.stderr().contains(needle)
    })
}

const STARTTLS_CLIENT: &str = r#"
import smtplib, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP('localhost', port, timeout=20) as s:
    code, text = s.ehlo('client.example')
    print('before', code, 'STARTTLS' in text.decode().split('\n'))
    print('starttls', s.starttls(context=ctx))
    print('version', s.sock.version())
    code, text = s.ehlo('client.example')
    print('after', code, 'STARTTLS' in text.decode().split('\n'))
    print('refused', s.sendmail('alice@example.com', ['bob@example.com'], b'Subject: tls\r\n\r\nover tls\r\n'))
    print('again', s.docmd('STARTTLS'))
"#;

#[test]
fn smtplib_starttls_then_mail() {
    let certs = Certs::new();
    let (proc, port) = start_tls_server(&certs, &[]);
    let out = python_ok(STARTTLS_CLIENT, &[&port.to_string(), &certs.path("ca.pem")]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "before 250 True", "{out}");
    assert_eq!(
        lines[1], "starttls (220, b'2.0.0 Ready to start TLS')",
        "{out}"
    );
    assert_eq!(lines[2], "version TLSv1.3", "{out}");
    assert_eq!(lines[3], "after 250 False", "{out}");
    assert_eq!(lines[4], "refused {}", "{out}");
    assert_eq!(
        lines[5], "again (503, b'5.5.1 Error: TLS already active')",
        "{out}"
    );
    assert!(wait_for(&proc, "over tls"), "{}", proc.stdout());
    assert!(proc.stdout().contains(HEADER));
    // The per-message log line carries the TLS facts.
    assert!(
        wait_for(&proc, "tls version=TLSv1.3 cipher=TLS13_"),
        "{}",
        proc.stderr()
    );
    assert!(proc.stderr().contains("sni=localhost"), "{}", proc.stderr());
}

const SMTP_SSL_CLIENT: &str = r#"
import smtplib, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP_SSL('localhost', port, context=ctx, timeout=20) as s:
    print('version', s.sock.version())
    code, text = s.ehlo('client.example')
    print('ehlo', code, 'STARTTLS' in text.decode().split('\n'))
    print('starttls', s.docmd('STARTTLS'))
    print('refused', s.sendmail('alice@example.com', ['bob@example.com'], b'Subject: smtps\r\n\r\nimplicit\r\n'))
"#;

#[test]
fn smtplib_smtp_ssl_on_implicit_tls() {
    let certs = Certs::new();
    let (proc, port) = start_tls_server(&certs, &["--implicit-tls"]);
    let out = python_ok(SMTP_SSL_CLIENT, &[&port.to_string(), &certs.path("ca.pem")]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "version TLSv1.3", "{out}");
    assert_eq!(lines[1], "ehlo 250 False", "{out}");
    assert_eq!(
        lines[2], "starttls (503, b'5.5.1 Error: TLS already active')",
        "{out}"
    );
    assert_eq!(lines[3], "refused {}", "{out}");
    assert!(wait_for(&proc, "implicit"), "{}", proc.stdout());
    assert!(wait_for(&proc, "tls version=TLSv1.3"), "{}", proc.stderr());
}

/// Sends `STARTTLS` and more commands in one segment, then handshakes and reports the first
/// replies over TLS.
const INJECTION_CLIENT: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
raw = socket.create_connection(('127.0.0.1', port), timeout=20)
f = raw.makefile('rb')
def reply(f):
    lines = []
    while True:
        line = f.readline().decode().rstrip('\r\n')
        lines.append(line)
        if len(line) < 4 or line[3] != '-':
            return lines
print('greeting', reply(f)[0][:3])
raw.sendall(b'EHLO client.example\r\n')
print('ehlo', reply(f)[-1])
raw.sendall(b'STARTTLS\r\nEHLO evil.example\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n')
print('starttls', reply(f)[0])
ctx = ssl.create_default_context(cafile=ca)
tls = ctx.wrap_socket(raw, server_hostname='localhost')
tf = tls.makefile('rb')
tls.sendall(b'MAIL FROM:<a@example.com>\r\n')
print('first', reply(tf)[0])
tls.sendall(b'NOOP\r\n')
print('second', reply(tf)[0])
tls.sendall(b'QUIT\r\n')
print('quit', reply(tf)[0])
"#;

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let certs = Certs::new();
    let (proc, port) = start_tls_server(&certs, &[]);
    let out = python_ok(
        INJECTION_CLIENT,
        &[&port.to_string(), &certs.path("ca.pem")],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "greeting 220", "{out}");
    assert_eq!(lines[1], "ehlo 250 HELP", "{out}");
    assert_eq!(lines[2], "starttls 220 2.0.0 Ready to start TLS", "{out}");
    // Neither the injected EHLO nor MAIL ran: the session starts afresh, without a greeting.
    assert_eq!(lines[3], "first 503 Error: send HELO first", "{out}");
    assert_eq!(lines[4], "second 250 OK", "{out}");
    assert_eq!(lines[5], "quit 221 Bye", "{out}");
    assert!(
        wait_for(&proc, "bytes pipelined after STARTTLS"),
        "{}",
        proc.stderr()
    );
}

const REQUIRE_CLIENT: &str = r#"
import smtplib, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP('localhost', port, timeout=20) as s:
    print('helo', s.helo('client.example')[0])
with smtplib.SMTP('localhost', port, timeout=20) as s:
    print('ehlo', s.ehlo('client.example')[0])
    print('noop', s.noop()[0])
    print('rset', s.rset()[0])
    print('mail', s.docmd('MAIL FROM:<a@example.com>'))
    print('vrfy', s.docmd('VRFY bob')[0])
    print('help', s.docmd('HELP')[0])
    print('starttls', s.starttls(context=ctx)[0])
    print('refused', s.sendmail('alice@example.com', ['bob@example.com'], b'Subject: r\r\n\r\nrequired\r\n'))
"#;

#[test]
fn require_starttls_refuses_mail_before_tls() {
    let certs = Certs::new();
    let (proc, port) = start_tls_server(&certs, &["--require-starttls"]);
    let out = python_ok(REQUIRE_CLIENT, &[&port.to_string(), &certs.path("ca.pem")]);
    let expected = "helo 250\nehlo 250\nnoop 250\nrset 250\n\
        mail (530, b'5.7.0 Must issue a STARTTLS command first')\n\
        vrfy 530\nhelp 530\nstarttls 220\nrefused {}\n";
    assert_eq!(out, expected);
    assert!(wait_for(&proc, "required"), "{}", proc.stdout());
}

#[test]
fn starttls_errors_and_the_plain_dialogue_without_a_certificate() {
    let certs = Certs::new();
    let (_proc, port) = start_tls_server(&certs, &[]);
    let mut c = RawClient::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    c.reply();
    assert_eq!(
        c.cmd("STARTTLS now"),
        ["501 5.5.4 Syntax error (no parameters allowed)"]
    );
    let ehlo = c.cmd("EHLO client.example");
    assert!(ehlo.iter().any(|l| l == "250-STARTTLS"), "{ehlo:?}");
    assert_eq!(ehlo.last().unwrap(), "250 HELP");

    // Without a certificate STARTTLS is an unknown command, as in CPython.
    let (_plain, port) = start_smtpd(&["-n", "-c", "DebuggingServer"]);
    let mut c = RawClient::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    c.reply();
    let ehlo = c.cmd("EHLO client.example");
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    assert_eq!(
        c.cmd("STARTTLS"),
        ["500 Error: command \"STARTTLS\" not recognized"]
    );
}

/// A normal transaction, as a Python script (argv: port): prints `ok` when it is accepted.
const PLAIN_CLIENT: &str = r#"
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=20) as s:
    print('ok' if s.sendmail('alice@example.com', ['bob@example.com'], b'Subject: b\r\n\r\nbeside\r\n') == {} else 'refused')
"#;

/// Reads until EOF or `limit`; true when the server closed.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if start.elapsed() > limit {
            return false;
        }
    }
}

#[test]
fn garbage_and_stalled_handshakes_are_dropped_beside_a_normal_transaction() {
    let certs = Certs::new();
    let (proc, port) = start_tls_server(&certs, &["--tls-handshake-timeout", "1"]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // A stalled handshake: STARTTLS, then silence.
    let mut stalled = RawClient::connect(addr);
    stalled.reply();
    assert_eq!(stalled.cmd("STARTTLS"), ["220 2.0.0 Ready to start TLS"]);
    // Garbage instead of a ClientHello.
    let mut garbage = RawClient::connect(addr);
    garbage.reply();
    assert_eq!(garbage.cmd("STARTTLS"), ["220 2.0.0 Ready to start TLS"]);
    garbage
        .stream()
        .write_all(b"this is not a TLS ClientHello\r\n\r\n")
        .unwrap();
    // Meanwhile a normal client is served.
    assert_eq!(python_ok(PLAIN_CLIENT, &[&port.to_string()]), "ok\n");
    let mut g = garbage.stream().try_clone().unwrap();
    assert!(
        closed_within(&mut g, Duration::from_secs(3)),
        "garbage kept open"
    );
    let started = Instant::now();
    let mut s = stalled.stream().try_clone().unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "stall kept open"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        wait_for(&proc, "TLS handshake timed out"),
        "{}",
        proc.stderr()
    );
    // And the server still serves.
    assert_eq!(python_ok(PLAIN_CLIENT, &[&port.to_string()]), "ok\n");

    // Implicit TLS: a connection that never starts its handshake is closed by the timeout.
    let (_implicit, port) =
        start_tls_server(&certs, &["--implicit-tls", "--tls-handshake-timeout", "1"]);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)));
}

fn openssl(args: &[&str], input: &str) -> String {
    let mut cmd = Command::new("sh");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    cmd.arg("-c").arg(format!(
        "printf '{input}' | openssl s_client {} -brief -ign_eof 2>&1",
        quoted.join(" ")
    ));
    let out = run(cmd, Duration::from_secs(20));
    out.stdout
}

#[test]
fn openssl_s_client_starttls_and_implicit_with_tls_1_2_and_1_3() {
    let certs = Certs::new();
    let ca = certs.path("ca.pem");
    let dialogue = "EHLO client.example\\r\\nMAIL FROM:<a@example.com>\\r\\nRCPT TO:<b@example.com>\\r\\nDATA\\r\\nSubject: o\\r\\n\\r\\nopenssl\\r\\n.\\r\\nQUIT\\r\\n";
    let (proc, port) = start_tls_server(&certs, &[]);
    let connect = format!("127.0.0.1:{port}");
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let out = openssl(
            &[
                "-starttls",
                "smtp",
                "-connect",
                &connect,
                "-servername",
                "localhost",
                "-CAfile",
                &ca,
                "-verify_return_error",
                flag,
            ],
            dialogue,
        );
        assert!(
            out.contains(&format!("Protocol version: {version}")),
            "{out}"
        );
        assert!(out.contains("Verification: OK"), "{out}");
        assert!(out.contains("354 End data"), "{out}");
        assert!(out.contains("221 Bye"), "{out}");
        assert!(
            !out.contains("250-STARTTLS"),
            "EHLO after TLS lists STARTTLS: {out}"
        );
    }
    assert!(wait_for(&proc, "tls version=TLSv1.2"), "{}", proc.stderr());
    assert!(
        proc.stderr().contains("tls version=TLSv1.3"),
        "{}",
        proc.stderr()
    );

    let (_implicit, port) = start_tls_server(&certs, &["--implicit-tls"]);
    let connect = format!("127.0.0.1:{port}");
    let out = openssl(
        &[
            "-connect",
            &connect,
            "-servername",
            "localhost",
            "-CAfile",
            &ca,
            "-verify_return_error",
        ],
        "EHLO client.example\\r\\nQUIT\\r\\n",
    );
    assert!(out.contains("Verification: OK"), "{out}");
    assert!(out.contains("220 "), "{out}");
    assert!(out.contains("221 Bye"), "{out}");
}

fn has_swaks_tls() -> bool {
    Command::new("swaks").arg("--version").output().is_ok()
        && Command::new("perl")
            .args(["-MNet::SSLeay", "-e", "1"])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn swaks_tls_and_tls_on_connect() {
    if !has_swaks_tls() {
        // .ci/run installs swaks and libnet-ssleay-perl and sets SMTPD_REQUIRE_SWAKS: there
        // the test cannot be skipped.
        assert!(
            std::env::var_os("SMTPD_REQUIRE_SWAKS").is_none(),
            "swaks with Net::SSLeay is required (SMTPD_REQUIRE_SWAKS is set)"
        );
        eprintln!("skipped: swaks with Net::SSLeay is not installed");
        return;
    }
    let certs = Certs::new();
    let ca = certs.path("ca.pem");
    for (extra, flag) in [(&[][..], "--tls"), (&["--implicit-tls"][..], "--tlsc")] {
        let (proc, port) = start_tls_server(&certs, extra);
        let server = format!("127.0.0.1:{port}");
        let mut cmd = Command::new("swaks");
        cmd.args([
            "--server",
            &server,
            flag,
            "--tls-ca-path",
            &ca,
            "--tls-verify",
            "--tls-sni",
            "localhost",
            "--from",
            "a@example.com",
            "--to",
            "b@example.com",
            "--body",
            "via swaks",
        ]);
        let out = run(cmd, Duration::from_secs(30));
        assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("<~  250 OK"), "{}", out.stdout);
        assert!(wait_for(&proc, "via swaks"), "{}", proc.stdout());
    }
}

#[test]
fn bad_certificates_stop_the_start_with_a_clear_error() {
    let certs = Certs::new();
    let cases: [(&str, &str, &str); 3] = [
        ("missing.pem", "key.pem", "cannot read"),
        ("cert.pem", "other-key.pem", "cannot be used together"),
        ("key.pem", "key.pem", "no PEM certificate"),
    ];
    for (cert, key, needle) in cases {
        let (cert, key) = (certs.path(cert), certs.path(key));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smtpd"));
        cmd.args([
            "-n",
            "-c",
            "DebuggingServer",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        cmd.arg(format!("127.0.0.1:{}", support::free_port()));
        let out = run(cmd, Duration::from_secs(10));
        assert!(!out.status.success(), "started with {cert} {key}");
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    let _ = Path::new(&certs.dir);
}

const RELAY_CLIENT: &str = r#"
import smtplib, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP('localhost', port, timeout=20) as s:
    s.starttls(context=ctx)
    print('refused', s.sendmail('alice@example.com', ['bob@example.com'], b'Subject: relayed\r\n\r\nover tls\r\n'))
"#;

#[test]
fn pure_proxy_traces_mail_received_over_tls_as_esmtps() {
    let certs = Certs::new();
    let (upstream, up_port) = start_smtpd(&["-n", "-c", "DebuggingServer"]);
    let port = support::free_port();
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let (local, remote) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{up_port}"));
    let mut relay = Proc::smtpd(&[
        "-n",
        "-c",
        "PureProxy",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        &local,
        &remote,
    ]);
    relay.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    let out = python_ok(RELAY_CLIENT, &[&port.to_string(), &certs.path("ca.pem")]);
    assert_eq!(out, "refused {}\n");
    assert!(wait_for(&upstream, "over tls"), "{}", upstream.stdout());
    assert!(
        upstream.stdout().contains("with ESMTPS"),
        "{}",
        upstream.stdout()
    );
}

/// STARTTLS, then prints `same` when the server's certificate is the one in `cert_file` now.
const PEER_CERT_CLIENT: &str = r#"
import smtplib, ssl, sys
port, ca, cert_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
with smtplib.SMTP('localhost', port, timeout=20) as s:
    s.starttls(context=ctx)
    der = s.sock.getpeercert(binary_form=True)
    print('same' if der == ssl.PEM_cert_to_DER_cert(open(cert_file).read()) else 'other')
"#;

#[test]
fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_pair_is_bad() {
    let first = Certs::new();
    let second = Certs::new();
    // The files the server is started with; the client trusts both CAs.
    let live = Certs::new();
    let both = live.path("both-ca.pem");
    let cas = std::fs::read_to_string(first.path("ca.pem")).unwrap()
        + &std::fs::read_to_string(second.path("ca.pem")).unwrap();
    std::fs::write(&both, cas).unwrap();
    for name in ["cert.pem", "key.pem"] {
        std::fs::copy(first.path(name), live.path(name)).unwrap();
    }
    let (proc, port) = start_tls_server(&live, &[]);
    let check = |expected: &Certs| {
        python_ok(
            PEER_CERT_CLIENT,
            &[&port.to_string(), &both, &expected.path("cert.pem")],
        )
    };
    assert_eq!(check(&first), "same\n");
    // A new pair: new connections get it.
    for name in ["cert.pem", "key.pem"] {
        std::fs::copy(second.path(name), live.path(name)).unwrap();
    }
    proc.signal("HUP");
    assert!(wait_for(&proc, "SIGHUP: reloaded"), "{}", proc.stderr());
    assert_eq!(check(&second), "same\n");
    // A bad pair (the key of another certificate): refused, the second one is kept.
    std::fs::copy(first.path("cert.pem"), live.path("cert.pem")).unwrap();
    proc.signal("HUP");
    assert!(
        wait_for(&proc, "SIGHUP: keeping the TLS certificate in use"),
        "{}",
        proc.stderr()
    );
    assert_eq!(check(&second), "same\n");
    // The server is still up and serving.
    assert_eq!(python_ok(PLAIN_CLIENT, &[&port.to_string()]), "ok\n");
}
