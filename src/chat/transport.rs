//! [`Transport`]: what a [`Chat`](super::Chat) reads from and writes to, and [`Socket`], the
//! transport of network channels (TCP, unix-domain, or TLS over either: `Socket::Tls`, feature `tls`).

use std::any::{type_name, Any};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

/// Implements [`Source`]'s three methods by forwarding them to what `$target` gives for
/// `$this` (a wrapped transport, a raw descriptor, two halves).
macro_rules! forward_source {
    (|$this:ident| $target:expr) => {
        fn register(
            &mut self,
            registry: &mio::Registry,
            token: mio::Token,
            interest: mio::Interest,
        ) -> std::io::Result<()> {
            let $this = self;
            $target.register(registry, token, interest)
        }

        fn reregister(
            &mut self,
            registry: &mio::Registry,
            token: mio::Token,
            interest: mio::Interest,
        ) -> std::io::Result<()> {
            let $this = self;
            $target.reregister(registry, token, interest)
        }

        fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
            let $this = self;
            $target.deregister(registry)
        }
    };
}
pub(crate) use forward_source;

/// A byte transport a [`Chat`](super::Chat) can own: plaintext in and out, registered with mio
/// under the chat's token. Plain sockets, pipes and [`FileStream`](crate::reactor::FileStream)s
/// are transports as they are; a layer such as TLS is a transport over another one.
///
/// # Contract
/// - **Reading** ([`Read::read`]) returns plaintext. `Ok(0)` is the end of input (the peer shut
///   its side down). `WouldBlock` means that nothing is left anywhere: neither in the OS nor
///   in the transport's own buffers ([`has_buffered_input`](Self::has_buffered_input)). A layer
///   must therefore hand out what it holds before it reports `WouldBlock`.
/// - **Writing** ([`Write::write`]) takes plaintext. A layer may accept bytes and keep what
///   the OS did not take (ciphertext) as output of its own, reported by
///   [`wants_write`](Self::wants_write) and sent by [`Write::flush`], which returns
///   `WouldBlock` while the OS blocks. It should return `WouldBlock` from `write` rather than
///   buffer without bound.
/// - **Readiness.** The reactor registers the transport once, edge-triggered, and offers
///   `on_readable` only while it believes the OS source is readable (see the
///   [readiness contract](crate::reactor::Dispatcher#readiness-contract)). Input a layer holds
///   raises no event, so the chat asks [`has_buffered_input`](Self::has_buffered_input) and
///   reads such input itself, without waiting for the reactor, whenever it wants input and the
///   reactor has stopped offering reads (after `WouldBlock`, a short read, or a transport
///   switch). A layer must never report `WouldBlock` while it holds input, and must answer
///   [`short_read_drains`](Self::short_read_drains) with `false` unless a short read of its
///   plaintext really proves the OS source empty.
/// - **Registration** ([`Source`]) must stay valid across a
///   [switch in place](super::ChatCtl::switch_transport_when_flushed): a layer keeps the OS
///   descriptor of the transport it wraps and forwards registration to it.
///
/// The trait is object-safe: `Box<dyn Transport>` is a transport too.
pub trait Transport: Read + Write + Source + 'static {
    /// Whether the transport holds output of its own that the OS has not taken yet (ciphertext
    /// a TLS layer still has to send, a close-notify). [`Write::flush`] sends it. The
    /// [`Chat`](super::Chat) keeps the channel writable, and does not close it, while this
    /// holds. Default: `false` (a socket keeps nothing).
    fn wants_write(&self) -> bool {
        false
    }

    /// Whether the transport holds input that can be read although the OS source would block
    /// (plaintext a TLS layer has decrypted but not yet handed out). Default: `false`.
    fn has_buffered_input(&self) -> bool {
        false
    }

    /// Whether a read that returned fewer bytes than asked for proves the OS source drained, so
    /// that the read confirming `WouldBlock` may be skipped: data arriving later raises a new
    /// edge event. True for mio's TCP and unix-domain sockets; the default, `false`, always
    /// makes the chat read until `WouldBlock`.
    fn short_read_drains(&self) -> bool {
        false
    }

    /// Shuts the sending side down once all output is out (`shutdown(SHUT_WR)`; a TLS layer
    /// queues its close-notify here, reported by [`wants_write`](Self::wants_write)). Called
    /// once, by [`close_when_done`](super::ChatCtl::close_when_done), before the channel closes.
    /// Default: nothing (closing the descriptor is enough).
    ///
    /// # Errors
    /// As the OS reports them; the chat ignores them (it is closing anyway).
    fn shutdown_write(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// For an outgoing connection, after a writable (or error) event: `Ok(true)` once it is
    /// established, `Ok(false)` while it is still in progress, the error if it failed. mio's
    /// procedure for sockets: `take_error`, then `peer_addr` (`NotConnected` means "not yet").
    /// Default: `Ok(true)` (a pipe is connected from the start).
    ///
    /// # Errors
    /// The reason the connection failed (refused, unreachable, timed out).
    fn finish_connect(&mut self) -> io::Result<bool> {
        Ok(true)
    }

    /// A notice for the chat's handler, taken once: the chat asks after every read (before
    /// framing what was read) and after every hook, and hands what it gets to
    /// [`ChatHandler::on_notify`](super::ChatHandler::on_notify). The TLS layer reports its
    /// finished handshake this way (a [`TlsInfo`](crate::smtp::TlsInfo)). Default: none.
    fn take_notice(&mut self) -> Option<Box<dyn Any>> {
        None
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn wants_write(&self) -> bool {
        (**self).wants_write()
    }
    fn has_buffered_input(&self) -> bool {
        (**self).has_buffered_input()
    }
    fn short_read_drains(&self) -> bool {
        (**self).short_read_drains()
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        (**self).shutdown_write()
    }
    fn finish_connect(&mut self) -> io::Result<bool> {
        (**self).finish_connect()
    }
    fn take_notice(&mut self) -> Option<Box<dyn Any>> {
        (**self).take_notice()
    }
}

/// mio's procedure for completing a non-blocking connect.
fn connected(error: io::Result<Option<io::Error>>, peer: io::Result<()>) -> io::Result<bool> {
    if let Some(e) = error? {
        return Err(e);
    }
    match peer {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// mio's sockets: a short read proves them drained, `shutdown(SHUT_WR)`, mio's connect procedure.
macro_rules! socket_transport {
    ($($socket:ty),*) => {$(
        impl Transport for $socket {
            fn short_read_drains(&self) -> bool {
                true
            }
            fn shutdown_write(&mut self) -> io::Result<()> {
                self.shutdown(Shutdown::Write)
            }
            fn finish_connect(&mut self) -> io::Result<bool> {
                connected(self.take_error(), self.peer_addr().map(drop))
            }
        }
    )*};
}

socket_transport!(TcpStream, UnixStream);

/// Where an outgoing channel connects to ([`ChatDispatcher::connect`](super::ChatDispatcher::connect)):
/// a resolved TCP address or a unix-domain socket path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// A TCP address (already resolved: name lookups block and never run in the loop).
    Tcp(SocketAddr),
    /// A unix-domain stream socket.
    Unix(PathBuf),
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::Tcp(addr)
    }
}

impl From<PathBuf> for Endpoint {
    fn from(path: PathBuf) -> Endpoint {
        Endpoint::Unix(path)
    }
}

impl From<&PathBuf> for Endpoint {
    fn from(path: &PathBuf) -> Endpoint {
        Endpoint::Unix(path.clone())
    }
}

impl From<&Path> for Endpoint {
    fn from(path: &Path) -> Endpoint {
        Endpoint::Unix(path.to_path_buf())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => addr.fmt(f),
            Endpoint::Unix(path) => path.display().fmt(f),
        }
    }
}

/// The transport of a network channel: a TCP or unix-domain socket, or a layer over one that
/// replaced it in place ([`Socket::layer`], run from a
/// [`switch_transport_when_flushed`](super::ChatCtl::switch_transport_when_flushed)).
///
/// TLS (rustls, feature `tls`) is one more variant, entered the same way after `220 Ready to
/// start TLS` has been flushed ([`Socket::start_tls`]).
#[non_exhaustive]
pub enum Socket {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix-domain stream connection.
    Unix(UnixStream),
    /// A server-side TLS layer over a socket (boxed: rustls' state stays out of plaintext
    /// connections).
    #[cfg(feature = "tls")]
    Tls(Box<super::tls::TlsStream>),
    /// Any layer over a socket (it owns the socket it wraps and forwards registration to it).
    Layered(Box<dyn Transport>),
}

impl Socket {
    /// Starts a non-blocking connection (asyncore's `create_socket` + `connect`); it completes
    /// when [`Transport::finish_connect`] says so.
    ///
    /// # Errors
    /// When no socket can be created, or (unix) the connection is refused at once.
    pub fn connect(endpoint: &Endpoint) -> io::Result<Socket> {
        match endpoint {
            Endpoint::Tcp(addr) => TcpStream::connect(*addr).map(Socket::Tcp),
            Endpoint::Unix(path) => UnixStream::connect(path).map(Socket::Unix),
        }
    }

    /// The TCP socket, when this is plain TCP.
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            Socket::Tcp(s) => Some(s),
            _ => None,
        }
    }

    /// Replaces this transport in place with a layer over it: `wrap` receives the transport as
    /// it was and returns the layer, which must keep it (and so its registration). Meant to run
    /// from a [`TransportSwitch`](super::TransportSwitch), once the chat's output is flushed.
    ///
    /// # Errors
    /// Those `wrap` returns; the socket is then gone and the channel should close.
    pub fn layer<L: Transport>(
        &mut self,
        wrap: impl FnOnce(Socket) -> io::Result<L>,
    ) -> io::Result<()> {
        // `Gone` is zero-sized: boxing it allocates nothing.
        let old = std::mem::replace(self, Socket::Layered(Box::new(Gone)));
        *self = Socket::Layered(Box::new(wrap(old)?));
        Ok(())
    }

    fn inner(&mut self) -> &mut dyn Transport {
        match self {
            Socket::Tcp(s) => s,
            Socket::Unix(s) => s,
            #[cfg(feature = "tls")]
            Socket::Tls(t) => &mut **t,
            Socket::Layered(t) => &mut **t,
        }
    }

    fn inner_ref(&self) -> &dyn Transport {
        match self {
            Socket::Tcp(s) => s,
            Socket::Unix(s) => s,
            #[cfg(feature = "tls")]
            Socket::Tls(t) => &**t,
            Socket::Layered(t) => &**t,
        }
    }

    /// The TLS layer, once the socket runs TLS.
    #[cfg(feature = "tls")]
    pub fn as_tls(&self) -> Option<&super::tls::TlsStream> {
        match self {
            Socket::Tls(t) => Some(t),
            _ => None,
        }
    }
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Socket {
        Socket::Tcp(s)
    }
}

impl From<UnixStream> for Socket {
    fn from(s: UnixStream) -> Socket {
        Socket::Unix(s)
    }
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Socket::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Socket::Unix(s) => f.debug_tuple("Unix").field(s).finish(),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => f.debug_tuple("Tls").field(t).finish(),
            Socket::Layered(_) => f.write_str("Layered(..)"),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.read(buf),
            Socket::Layered(t) => t.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Socket::Tls(t) => t.write(buf),
            Socket::Layered(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner().flush()
    }
}

impl Source for Socket {
    forward_source!(|s| s.inner());
}

impl Transport for Socket {
    fn wants_write(&self) -> bool {
        match self {
            Socket::Tcp(_) | Socket::Unix(_) => false,
            other => other.inner_ref().wants_write(),
        }
    }

    fn has_buffered_input(&self) -> bool {
        match self {
            Socket::Tcp(_) | Socket::Unix(_) => false,
            other => other.inner_ref().has_buffered_input(),
        }
    }

    fn short_read_drains(&self) -> bool {
        match self {
            Socket::Tcp(_) | Socket::Unix(_) => true,
            other => other.inner_ref().short_read_drains(),
        }
    }

    fn take_notice(&mut self) -> Option<Box<dyn Any>> {
        match self {
            Socket::Tcp(_) | Socket::Unix(_) => None,
            other => other.inner().take_notice(),
        }
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.inner().shutdown_write()
    }

    /// As the socket's; an established TCP connection also gets `TCP_NODELAY` (line
    /// protocols want each reply sent at once, as the server sets for accepted connections).
    fn finish_connect(&mut self) -> io::Result<bool> {
        let done = self.inner().finish_connect()?;
        if let (true, Socket::Tcp(s)) = (done, &*self) {
            let _ = s.set_nodelay(true);
        }
        Ok(done)
    }
}

/// The stand-in while [`Socket::layer`] runs (and after it failed): no descriptor, every
/// operation fails.
pub(super) struct Gone;

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the transport was lost in a switch",
    )
}

impl Read for Gone {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(gone())
    }
}

impl Write for Gone {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(gone())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(gone())
    }
}

impl Source for Gone {
    fn register(&mut self, _: &Registry, _: Token, _: Interest) -> io::Result<()> {
        Err(gone())
    }
    fn reregister(&mut self, _: &Registry, _: Token, _: Interest) -> io::Result<()> {
        Err(gone())
    }
    fn deregister(&mut self, _: &Registry) -> io::Result<()> {
        // The descriptor closed with the lost transport, which took it out of the poller.
        Ok(())
    }
}

impl Transport for Gone {
    fn finish_connect(&mut self) -> io::Result<bool> {
        Err(gone())
    }
}

type SwitchFn<T> = Box<dyn FnOnce(&mut T) -> io::Result<()>>;

/// A change of transport in place, asked for with
/// [`ChatCtl::switch_transport_when_flushed`](super::ChatCtl::switch_transport_when_flushed):
/// a function run on the chat's transport once the output queued before it has been sent
/// (STARTTLS: after `220 Ready to start TLS`).
pub struct TransportSwitch {
    /// A `SwitchFn<T>` for the `T` it was made for.
    apply: Box<dyn Any>,
    made_for: &'static str,
}

impl TransportSwitch {
    /// A switch for chats over a `T` (the transport type of the
    /// [`ChatDispatcher`](super::ChatDispatcher), [`Socket`] for network channels). `switch`
    /// gets the transport and replaces or wraps it in place (see [`Socket::layer`]).
    pub fn new<T: Transport>(switch: impl FnOnce(&mut T) -> io::Result<()> + 'static) -> Self {
        let apply: SwitchFn<T> = Box::new(switch);
        TransportSwitch {
            apply: Box::new(apply),
            made_for: type_name::<T>(),
        }
    }

    /// Runs the switch on `transport`.
    ///
    /// # Errors
    /// The switch's own error, or `InvalidInput` (local misuse) when it was made for another
    /// transport type.
    pub(crate) fn apply<T: Transport>(self, transport: &mut T) -> io::Result<()> {
        match self.apply.downcast::<SwitchFn<T>>() {
            Ok(switch) => switch(transport),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a transport switch made for {} asked of a chat over {}",
                    self.made_for,
                    type_name::<T>()
                ),
            )),
        }
    }
}

impl fmt::Debug for TransportSwitch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportSwitch")
            .field("made_for", &self.made_for)
            .finish_non_exhaustive()
    }
}
