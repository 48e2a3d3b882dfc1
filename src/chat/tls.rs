//! [`TlsStream`]: a TLS layer (rustls' buffered [`ServerConnection`], or [`ClientConnection`]
//! for the relay client) over a [`Socket`], honouring the [`Transport`] contract. It becomes
//! [`Socket::Tls`] in place, after `220 Ready to start TLS` was flushed (STARTTLS) or at
//! accept (implicit TLS), with [`Socket::start_tls`]; the client side with
//! [`Socket::start_tls_client`] after the upstream's `220` to STARTTLS (or at connect).
//!
//! - Ciphertext rustls has not sent yet is the layer's own output
//!   ([`Transport::wants_write`]); [`Write::flush`] sends it.
//! - Decrypted plaintext rustls holds is the layer's own input
//!   ([`Transport::has_buffered_input`]); it is handed out before the socket is read again,
//!   and `WouldBlock` means nothing is left anywhere.
//! - A short read proves nothing about the socket ([`Transport::short_read_drains`] is
//!   `false`).
//! - [`Transport::shutdown_write`] queues the close-notify alert.
//! - When the handshake is over, [`Transport::take_notice`] hands out a
//!   [`TlsInfo`](crate::smtp::TlsInfo) once (the chat delivers it to its handler's `on_notify`
//!   before the first plaintext).

use std::any::Any;
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::chat::forward_source;
use mio::event::Source;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use super::{Socket, Transport};
use crate::smtp::TlsInfo;

/// A TLS connection (server or client side) over a socket.
pub struct TlsStream {
    inner: Socket,
    conn: Connection,
    /// Plaintext rustls holds, not yet read out.
    plaintext: usize,
    /// The socket reached its end, or the peer sent close-notify.
    eof: bool,
    /// The handshake finished, and whether that was reported.
    established: bool,
    reported: bool,
    /// Client side: the name verified (reported as the SNI).
    name: Option<String>,
}

impl TlsStream {
    /// A server-side TLS layer over `inner` (its handshake starts with the client's first
    /// bytes).
    ///
    /// # Errors
    /// When rustls cannot create the connection from `config`.
    pub fn new(inner: Socket, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(TlsStream::wrap(inner, conn.into()))
    }

    /// A client-side TLS layer over `inner`: its ClientHello is queued at once, and the
    /// upstream's certificate is verified for `name` against `config`'s roots.
    ///
    /// # Errors
    /// When rustls cannot create the connection from `config`.
    pub fn client(
        inner: Socket,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsStream> {
        let shown = name.to_str().into_owned();
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        let mut stream = TlsStream::wrap(inner, conn.into());
        stream.name = Some(shown);
        Ok(stream)
    }

    fn wrap(inner: Socket, conn: Connection) -> TlsStream {
        TlsStream {
            inner,
            conn,
            plaintext: 0,
            eof: false,
            established: false,
            reported: false,
            name: None,
        }
    }

    /// Whether this is the client side (the relay's connection to an upstream).
    pub fn is_client(&self) -> bool {
        matches!(self.conn, Connection::Client(_))
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The rustls connection (negotiated version, cipher suite, SNI, ALPN), server or client.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The handshake's facts, once it is over.
    pub fn info(&self) -> Option<TlsInfo> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_owned(),
        };
        let cipher = self
            .conn
            .negotiated_cipher_suite()
            .map_or_else(|| "unknown".to_owned(), |s| format!("{:?}", s.suite()));
        let sni = match &self.conn {
            Connection::Server(c) => c.server_name().map(str::to_owned),
            // The client side reports the name it sent and verified.
            Connection::Client(_) => self.name.clone(),
        };
        Some(TlsInfo::new(version, cipher, sni))
    }

    /// Sends what ciphertext the socket takes; `WouldBlock` when it blocks first.
    fn send_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.inner) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("inner", &self.inner)
            .field("handshaking", &self.conn.is_handshaking())
            .field("plaintext", &self.plaintext)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plaintext > 0 {
                let n = self.conn.reader().read(buf)?;
                self.plaintext = self.plaintext.saturating_sub(n);
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            match self.conn.read_tls(&mut self.inner) {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Err(e), // WouldBlock: nothing left anywhere
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Let the alert out if the socket takes it; the chat closes on the error.
                    let _ = self.send_tls();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            self.plaintext = state.plaintext_bytes_to_read();
            if state.peer_has_closed() {
                self.eof = true;
            }
            if !self.established && !self.conn.is_handshaking() {
                self.established = true;
            }
            // Handshake replies go out now if the socket takes them; otherwise `wants_write`
            // keeps the chat writable.
            match self.send_tls() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Older ciphertext first: rustls' buffer stays bounded, and a `WouldBlock` here is
        // the socket's own.
        self.send_tls()?;
        let n = self.conn.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.send_tls() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_tls()
    }
}

impl Source for TlsStream {
    forward_source!(|t| t.inner);
}

impl Transport for TlsStream {
    fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    fn has_buffered_input(&self) -> bool {
        self.plaintext > 0
    }

    fn short_read_drains(&self) -> bool {
        false
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        match self.send_tls() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(()),
        }
    }

    fn take_notice(&mut self) -> Option<Box<dyn Any>> {
        if self.established && !self.reported {
            self.reported = true;
            return self.info().map(|info| Box::new(info) as Box<dyn Any>);
        }
        None
    }
}

impl Socket {
    /// Replaces this socket in place with a server-side TLS layer over it
    /// ([`Socket::Tls`]); run it from a
    /// [`TransportSwitch`](super::TransportSwitch) after `220 Ready to start TLS` was flushed,
    /// or before anything was sent (implicit TLS).
    ///
    /// # Errors
    /// When rustls cannot create the connection; the socket is then gone.
    pub fn start_tls(&mut self, config: Arc<ServerConfig>) -> io::Result<()> {
        let old = std::mem::replace(self, Socket::Layered(Box::new(super::transport::Gone)));
        *self = Socket::Tls(Box::new(TlsStream::new(old, config)?));
        Ok(())
    }
}

impl Socket {
    /// Replaces this socket in place with a client-side TLS layer over it
    /// ([`Socket::Tls`]), verifying the peer for `name`: run it from a
    /// [`TransportSwitch`](super::TransportSwitch) after the upstream's `220` to STARTTLS was
    /// read (the chat then discards any reply bytes read after it), or at connect (implicit
    /// TLS).
    ///
    /// # Errors
    /// When rustls cannot create the connection; the socket is then gone.
    pub fn start_tls_client(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let old = std::mem::replace(self, Socket::Layered(Box::new(super::transport::Gone)));
        *self = Socket::Tls(Box::new(TlsStream::client(old, config, name)?));
        Ok(())
    }
}
