//! [`Relay`]: runs a [`Client`] over a non-blocking TCP or unix-domain connection inside the
//! reactor: a [`ChatDispatcher`] whose handler, [`RelayHandler`], is the client session.

use std::any::Any;
use std::fmt;
use std::io;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use super::session::{Client, ClientConfig, Event, MailParams, StartTls};
use crate::chat::{ChatCtl, ChatDispatcher, ChatHandler, ChatOptions, Endpoint, Socket};
use crate::reactor::{Ctx, TimerId};

/// Timeouts and buffer limits of a [`Relay`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayOptions {
    /// From `connect()` to an established connection. Default 30 s.
    pub connect_timeout: Duration,
    /// For the greeting and each command's reply. Default 60 s (RFC 5321 allows up to 5 min;
    /// a relay answering a waiting client must give up sooner than that client does).
    pub command_timeout: Duration,
    /// For the reply after the message body. Default 120 s.
    pub data_timeout: Duration,
    /// Buffer limits of the connection (read budget, output marks and cap). Default
    /// [`ChatOptions::default`].
    pub chat: ChatOptions,
    /// TLS towards the upstream (TCP only; a unix-domain upstream is always plaintext).
    /// Default: opportunistic STARTTLS, verified against the system roots.
    pub tls: UpstreamTls,
}

/// When a [`Relay`] encrypts its connection to the upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamTlsMode {
    /// Plaintext, even when the upstream offers STARTTLS.
    Off,
    /// STARTTLS when the upstream's EHLO offers it (the default): opportunistic security as
    /// RFC 7435 means it, and as Postfix's `smtp_tls_security_level = may` does it — the
    /// connection is encrypted, but the certificate is **not** verified (a self-signed or
    /// mismatched certificate is the common case between MTAs, and refusing it would turn
    /// every such upstream into a permanent `451`); what the certificate would have failed is
    /// logged at debug. A failed handshake fails the session with a `4xx` and the relay does
    /// not retry in plaintext (that retry is what a man in the middle would provoke). Not
    /// offered, or refused with a reply: plaintext. For a verified upstream, use
    /// [`Required`](Self::Required).
    #[default]
    Opportunistic,
    /// STARTTLS, with the certificate verified for the name; an upstream that does not offer
    /// it, refuses it, or fails the handshake or verification fails the session with a `4xx`
    /// before anything is relayed. Never falls back to plaintext.
    Required,
    /// TLS from connect (SMTPS, port 465), verified as `Required`.
    Implicit,
}

impl std::str::FromStr for UpstreamTlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(UpstreamTlsMode::Off),
            "opportunistic" => Ok(UpstreamTlsMode::Opportunistic),
            "required" => Ok(UpstreamTlsMode::Required),
            "implicit" => Ok(UpstreamTlsMode::Implicit),
            other => Err(format!(
                "Invalid upstream TLS mode: {other} (off, opportunistic, required or implicit)"
            )),
        }
    }
}

/// TLS settings of a [`Relay`]'s upstream connection.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct UpstreamTls {
    /// When to use TLS.
    pub mode: UpstreamTlsMode,
    /// The roots the upstream's certificate is verified against ([`upstream_ca_config`],
    /// for one CA file); `None`: the system's roots ([`system_roots_config`]), loaded once
    /// when first needed (inside the loop: call `system_roots_config` at start-up and put
    /// its result here to keep that file reading out of it).
    #[cfg(feature = "tls")]
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// The name the certificate must carry (and the SNI sent); `None`: the upstream's IP
    /// address.
    pub name: Option<String>,
}

impl UpstreamTls {
    /// Settings with the given mode, system roots, and the IP address as the name.
    pub fn new(mode: UpstreamTlsMode) -> UpstreamTls {
        UpstreamTls {
            mode,
            ..UpstreamTls::default()
        }
    }
}

#[cfg(feature = "tls")]
fn client_config(roots: rustls::RootCertStore) -> io::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opportunistic TLS (RFC 7435): the handshake's signatures are checked as always, so the
/// session is encrypted with whoever holds the certificate's key, but the certificate itself
/// (chain, name, dates) is not verified.
#[cfg(feature = "tls")]
#[derive(Debug)]
struct Unverified {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

#[cfg(feature = "tls")]
impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        log::debug!(
            "upstream certificate for {server_name:?} not verified: opportunistic TLS encrypts \
             without authenticating (use --upstream-tls required to verify)"
        );
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client configuration of opportunistic TLS: encrypted, certificate not verified (built
/// once and shared).
#[cfg(feature = "tls")]
fn unverified_config() -> io::Result<Arc<rustls::ClientConfig>> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified { provider }))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(io::Error::other)
}

/// A client configuration that trusts only the CA certificates in the PEM file at `path`
/// (`--upstream-ca`).
///
/// # Errors
/// When the file cannot be read, holds no certificate, or a certificate is unusable.
#[cfg(feature = "tls")]
pub fn upstream_ca_config(path: &std::path::Path) -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let what = |e: &dyn fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| what(&e))? {
        roots
            .add(cert.map_err(|e| what(&e))?)
            .map_err(|e| what(&e))?;
    }
    if roots.is_empty() {
        return Err(what(&"no CA certificate in the file"));
    }
    client_config(roots)
}

/// The client configuration that trusts the system's certificate store (read once, through
/// rustls-native-certs, and shared).
///
/// # Errors
/// When no usable root certificate could be loaded (say which way to go: `--upstream-ca`).
#[cfg(feature = "tls")]
pub fn system_roots_config() -> io::Result<Arc<rustls::ClientConfig>> {
    static SYSTEM: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    let loaded = SYSTEM.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            return Err(format!(
                "no trusted root certificate could be loaded from the system store{}; \
                 give the upstream's CA with --upstream-ca FILE",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            ));
        }
        log::debug!("loaded {added} system root certificates for the upstream");
        client_config(roots).map_err(|e| e.to_string())
    });
    loaded.clone().map_err(io::Error::other)
}
impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(120),
            chat: ChatOptions::default(),
            tls: UpstreamTls::default(),
        }
    }
}

/// Commands another dispatcher can send a running relay with [`Ctx::notify`].
#[derive(Debug)]
#[non_exhaustive]
pub enum RelayCommand {
    /// `MAIL FROM`.
    Mail(String, MailParams),
    /// `RCPT TO`.
    Rcpt(String),
    /// `DATA` and the message.
    Data(Vec<u8>),
    /// `RSET`.
    Rset,
    /// `QUIT`, then close.
    Quit,
}

/// Receives the relay's events, with the client to issue further commands.
pub type EventHandler = Box<dyn FnMut(Event, &mut Client, &mut Ctx<'_>)>;

/// An outgoing SMTP/LMTP session on the reactor: a [`ChatDispatcher`] over a [`Socket`] that
/// connects without blocking, runs a [`Client`], enforces connect, command and data timeouts,
/// and hands every [`Event`] to a callback. The callback gets the client, so it can issue the
/// next command; other dispatchers can send [`RelayCommand`]s with [`Ctx::notify`]. The
/// callback always sees exactly one terminal event (`Closed` or `Failed`), whatever ends the
/// connection. TLS to the upstream follows [`RelayOptions::tls`]; the relay handles
/// [`Event::StartTls`] itself, so the callback never sees it. Made by
/// [`Relay::open`](ChatDispatcher::open).
pub type Relay = ChatDispatcher<Socket, RelayHandler>;

/// The protocol side of a [`Relay`]: the [`Client`] session, its timers and the event callback.
pub struct RelayHandler {
    client: Client,
    line: Vec<u8>,
    line_too_long: bool,
    on_event: EventHandler,
    options: RelayOptions,
    /// The reply timer.
    timer: Option<TimerId>,
    connect_timer: Option<TimerId>,
    /// Why the connection failed, for the terminal event.
    failure: Option<String>,
    /// The connection was never established (`failure` says why).
    connect_failed: bool,
    /// The terminal event (Failed or Closed) was delivered.
    done: bool,
    /// The peer, for log lines.
    upstream: String,
    /// The upstream's TLS mode (`Off` for a unix-domain upstream) and the name verified.
    tls_mode: UpstreamTlsMode,
    tls_name: String,
    /// A handshake was started and has not finished.
    tls_pending: bool,
}

impl fmt::Debug for RelayHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayHandler")
            .field("upstream", &self.upstream)
            .field("options", &self.options)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ChatDispatcher<Socket, RelayHandler> {
    /// Starts connecting to `upstream`, a resolved TCP address (name lookups block and never
    /// run in the loop) or a unix-domain socket path (Mailman's LMTP runner, say). The
    /// client's [`ClientConfig::starttls`] is set from `options.tls.mode` (a unix-domain
    /// upstream is always plaintext). Queue
    /// commands on [`client`](Self::client) before spawning, or from the callback once
    /// `Event::Ready` arrives.
    ///
    /// # Errors
    /// When no socket can be created (descriptor limits), or a unix-domain connection is
    /// refused at once (no such socket, nobody listening, backlog full).
    pub fn open(
        upstream: impl Into<Endpoint>,
        config: ClientConfig,
        options: RelayOptions,
        on_event: EventHandler,
    ) -> io::Result<Relay> {
        let upstream = upstream.into();
        let chat = options.chat.clone();
        let (tls_mode, tls_name) = match &upstream {
            Endpoint::Tcp(addr) => (
                options.tls.mode,
                options
                    .tls
                    .name
                    .clone()
                    .unwrap_or_else(|| addr.ip().to_string()),
            ),
            Endpoint::Unix(_) => (UpstreamTlsMode::Off, String::new()),
        };
        #[cfg(not(feature = "tls"))]
        let tls_mode = match tls_mode {
            UpstreamTlsMode::Required | UpstreamTlsMode::Implicit => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "TLS to the upstream needs the `tls` feature",
                ))
            }
            _ => UpstreamTlsMode::Off,
        };
        let mut config = config;
        config.starttls = match tls_mode {
            UpstreamTlsMode::Off | UpstreamTlsMode::Implicit => StartTls::Never,
            UpstreamTlsMode::Opportunistic => StartTls::IfOffered,
            UpstreamTlsMode::Required => StartTls::Required,
        };
        let handler = RelayHandler {
            tls_mode,
            tls_name,
            tls_pending: false,
            client: Client::new(config),
            line: Vec::new(),
            line_too_long: false,
            on_event,
            options,
            timer: None,
            connect_timer: None,
            failure: None,
            connect_failed: false,
            done: false,
            upstream: upstream.to_string(),
        };
        ChatDispatcher::connect_with_options(upstream, handler, chat)
    }

    /// The client, to queue commands before the relay is spawned.
    pub fn client(&mut self) -> &mut Client {
        &mut self.handler.client
    }
}

/// Output larger than this (a message body) is queued as a producer of pieces this big.
const BODY_PIECE: usize = 64 * 1024;

/// A large output buffer handed out in [`BODY_PIECE`]s.
struct Pieces {
    data: Vec<u8>,
    pos: usize,
}

impl crate::chat::Producer for Pieces {
    fn more(&mut self) -> Option<Vec<u8>> {
        if self.pos >= self.data.len() {
            return None;
        }
        let end = (self.pos + BODY_PIECE).min(self.data.len());
        let piece = self.data[self.pos..end].to_vec();
        self.pos = end;
        if self.pos == self.data.len() {
            self.data = Vec::new();
        }
        Some(piece)
    }
}

/// Longest reply line accepted from an upstream (RFC 5321 4.5.3.1.5 says 512).
const MAX_REPLY_LINE: usize = 4096;

impl RelayHandler {
    /// Sends what the client wants sent, hands events out, keeps the timer right.
    fn pump(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        loop {
            let mut out = Vec::new();
            if self.client.poll_transmit(&mut out) {
                if log::log_enabled!(log::Level::Debug) {
                    // The dialogue, not the body: a body is one large piece.
                    if out.len() <= BODY_PIECE {
                        log::debug!(
                            "relay {} sends: {}",
                            self.upstream,
                            String::from_utf8_lossy(&out).trim_end()
                        );
                    } else {
                        log::debug!("relay {} sends {} bytes of data", self.upstream, out.len());
                    }
                }
                if out.len() > BODY_PIECE {
                    // A message body: handed to the socket a piece at a time as it drains, so
                    // a body of any accepted size fits under the output cap (which bounds what
                    // waits in the queue, not what a producer still holds).
                    chat.push_with_producer(Box::new(Pieces { data: out, pos: 0 }));
                } else {
                    chat.push_vec(out);
                }
            }
            let Some(event) = self.client.poll_event() else {
                break;
            };
            if event == Event::StartTls {
                self.begin_tls(chat);
                continue;
            }
            let terminal = matches!(event, Event::Failed(_) | Event::Closed);
            if !self.done {
                (self.on_event)(event, &mut self.client, ctx);
            }
            if terminal {
                self.done = true;
                chat.close_when_done();
            }
        }
        self.arm_timer(ctx);
    }

    fn arm_timer(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
        if self.client.is_waiting() && !self.done {
            let after = if self.client.awaits_data_reply() {
                self.options.data_timeout
            } else {
                self.options.command_timeout
            };
            self.timer = Some(ctx.set_timer(after));
        }
    }

    /// Switches the connection to TLS once the output is out (the chat drops every byte read
    /// but not yet framed: nothing the upstream sent after its `220` is taken as a reply).
    #[cfg(feature = "tls")]
    fn begin_tls(&mut self, chat: &mut ChatCtl) {
        use rustls::pki_types::ServerName;
        let config = match (self.tls_mode, self.options.tls.config.clone()) {
            (UpstreamTlsMode::Opportunistic, _) => unverified_config(),
            (_, Some(config)) => Ok(config),
            (_, None) => system_roots_config(),
        };
        let name = ServerName::try_from(self.tls_name.clone()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad upstream TLS name {:?}: {e}", self.tls_name),
            )
        });
        match config.and_then(|c| name.map(|n| (c, n))) {
            Ok((config, name)) => {
                log::debug!(
                    "relay {}: starting TLS, verifying the name {}",
                    self.upstream,
                    self.tls_name
                );
                self.tls_pending = true;
                chat.switch_transport_when_flushed(crate::chat::TransportSwitch::new(
                    move |socket: &mut Socket| socket.start_tls_client(config, name),
                ));
            }
            Err(e) => {
                log::warn!("relay to {}: cannot start TLS: {e}", self.upstream);
                self.failure = Some(format!("cannot start TLS: {e}"));
                self.client.handle_closed(&format!("cannot start TLS: {e}"));
                chat.close_when_done();
            }
        }
    }

    #[cfg(not(feature = "tls"))]
    fn begin_tls(&mut self, chat: &mut ChatCtl) {
        log::warn!(
            "relay to {}: TLS for {} is not built in",
            self.upstream,
            self.tls_name
        );
        self.client.handle_closed("TLS is not built in");
        chat.close_when_done();
    }

    fn fail(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, why: &str) {
        self.client.handle_closed(why);
        self.pump(chat, ctx);
        chat.close_when_done();
    }
}

impl ChatHandler for RelayHandler {
    fn collect_incoming_data(&mut self, data: &[u8]) {
        if self.line.len() + data.len() > MAX_REPLY_LINE {
            self.line_too_long = true;
        } else {
            self.line.extend_from_slice(data);
        }
    }

    fn found_terminator(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        if std::mem::take(&mut self.line_too_long) {
            self.line.clear();
            return self.fail(chat, ctx, "reply line too long");
        }
        let line = std::mem::take(&mut self.line);
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "relay {} reply: {}",
                self.upstream,
                String::from_utf8_lossy(&line)
            );
        }
        self.client.handle_line(&line);
        self.line = line;
        self.line.clear();
        self.pump(chat, ctx);
    }

    fn on_peer_closed(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, _pending: usize) {
        self.fail(chat, ctx, "closed by the upstream");
    }

    fn on_start(&mut self, _chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        self.connect_timer = Some(ctx.set_timer(self.options.connect_timeout));
    }

    fn on_connect(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        if let Some(t) = self.connect_timer.take() {
            ctx.cancel_timer(t);
        }
        log::debug!("relay to {} connected", self.upstream);
        if self.tls_mode == UpstreamTlsMode::Implicit {
            self.begin_tls(chat);
            if self.client.is_finished() {
                self.pump(chat, ctx);
                return;
            }
        }
        self.arm_timer(ctx);
    }

    fn on_connect_failed(&mut self, _ctx: &mut Ctx<'_>, error: &io::Error) {
        log::warn!("relay to {}: connect failed: {error}", self.upstream);
        // Reported by `on_close`, which runs next and has the channel at hand.
        self.failure = Some(error.to_string());
        self.connect_failed = true;
    }

    fn on_timer(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, timer: TimerId) {
        if self.connect_timer == Some(timer) {
            self.connect_timer = None;
            log::warn!("relay to {}: connect timed out", self.upstream);
            self.client.handle_connect_failed("timed out");
            self.pump(chat, ctx);
            chat.close_when_done();
            ctx.close();
        } else if self.timer == Some(timer) {
            self.timer = None;
            log::warn!("relay to {}: reply timed out", self.upstream);
            self.client.handle_timeout();
            self.pump(chat, ctx);
            ctx.close();
        }
    }

    fn on_notify(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        let message = match message.downcast::<crate::smtp::TlsInfo>() {
            Ok(info) => {
                log::debug!(
                    "relay {}: TLS established: {} {} name={}",
                    self.upstream,
                    info.version,
                    info.cipher,
                    info.sni.as_deref().unwrap_or("-")
                );
                self.tls_pending = false;
                self.client.handle_tls_established();
                return self.pump(chat, ctx);
            }
            Err(message) => message,
        };
        let Ok(command) = message.downcast::<RelayCommand>() else {
            return;
        };
        let client = &mut self.client;
        match *command {
            RelayCommand::Mail(from, params) => client.mail(from, params),
            RelayCommand::Rcpt(to) => client.rcpt(to),
            RelayCommand::Data(data) => client.data(data),
            RelayCommand::Rset => client.rset(),
            RelayCommand::Quit => client.quit(),
        }
        self.pump(chat, ctx);
    }

    fn on_close(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        for t in [self.timer.take(), self.connect_timer.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_timer(t);
        }
        if !self.done {
            if self.tls_pending {
                log::warn!(
                    "relay to {}: TLS handshake or certificate verification for {} failed",
                    self.upstream,
                    self.tls_name
                );
                if self.failure.is_none() {
                    self.failure =
                        Some("TLS handshake or certificate verification failed".to_owned());
                }
            }
            let why = self.failure.take();
            let why = why.as_deref().unwrap_or("connection error");
            if self.connect_failed {
                self.client.handle_connect_failed(why);
            } else {
                self.client.handle_closed(why);
            }
            self.pump(chat, ctx);
        }
    }
}
