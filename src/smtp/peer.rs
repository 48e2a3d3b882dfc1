//! [`Peer`]: what is known about the client of a connection.

use std::net::SocketAddr;

/// The client of one connection, as the server knows it.
///
/// Today this is the socket address the connection came from. It is the one place where
/// later facts about the connection go, so that hooks taking a `&Peer` keep their signature
/// as they arrive:
/// - after STARTTLS (or on an implicit-TLS port), the TLS facts: protocol version, cipher
///   suite, the server name the client asked for (SNI) and the client certificate, if any;
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
}

impl Peer {
    /// A client at `addr`, with nothing else known about it yet.
    pub fn new(addr: SocketAddr) -> Peer {
        Peer { addr }
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Peer {
        Peer::new(addr)
    }
}
