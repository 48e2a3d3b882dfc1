//! [`Peer`]: what is known about the client of a connection.

use std::net::SocketAddr;

/// The client of one connection, as the server knows it.
///
/// The socket address the connection came from, and after STARTTLS (or on an implicit-TLS
/// listener) the TLS facts ([`TlsInfo`]: protocol version, cipher suite, SNI). It is the one
/// place where later facts about the connection go, so that hooks taking a `&Peer` keep their
/// signature as they arrive:
/// - behind a load balancer speaking the PROXY protocol, the addresses the proxy reports
///   (the client's and the one it connected to), with [`addr`](Self::addr) staying the
///   socket's own peer.
///
/// It is `#[non_exhaustive]`: build one with [`Peer::new`] (or `From<SocketAddr>`), read
/// its public fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Peer {
    /// The socket address the connection came from (Python's `peer`).
    pub addr: SocketAddr,
    /// The TLS facts once the connection is encrypted (after STARTTLS, or from the start on
    /// an implicit-TLS listener); `None` in plaintext. Boxed: a plaintext connection carries
    /// only a pointer's worth of it.
    pub tls: Option<Box<TlsInfo>>,
}

impl Peer {
    /// A client at `addr`, with nothing else known about it yet.
    pub fn new(addr: SocketAddr) -> Peer {
        Peer { addr, tls: None }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// What a finished TLS handshake established, as text fit for logs and trace headers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The protocol version: `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The cipher suite, by its IANA name (`TLS13_AES_256_GCM_SHA384`).
    pub cipher: String,
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
}

impl TlsInfo {
    /// The facts of a handshake: `version`, `cipher` and the client's SNI.
    pub fn new(version: impl Into<String>, cipher: impl Into<String>, sni: Option<String>) -> Self {
        TlsInfo {
            version: version.into(),
            cipher: cipher.into(),
            sni,
        }
    }
}

impl std::fmt::Display for TlsInfo {
    /// `version=TLSv1.3 cipher=TLS13_AES_256_GCM_SHA384 sni=localhost` (the log form).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "version={} cipher={}", self.version, self.cipher)?;
        if let Some(sni) = &self.sni {
            write!(f, " sni={sni}")?;
        }
        Ok(())
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer::new(addr)
    }
}
