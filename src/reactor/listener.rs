//! [`Acceptor`]: a listening socket as a dispatcher (asyncore's `handle_accept` /
//! `handle_accepted`), with descriptor exhaustion handled so the loop neither spins nor stalls.

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use mio::event::Source;
use mio::net::{TcpListener, TcpStream};
use mio::Interest;

use super::{Ctx, Dispatcher, TimerId};

/// The listen backlog [`bind_tcp`] asks for. `mio::net::TcpListener::bind` (like `std`) asks for
/// 128, which a burst of connections overflows: the kernel then drops SYNs and clients wait a
/// second for the retransmission. The kernel caps it at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Binds a non-blocking, close-on-exec TCP listener with `SO_REUSEADDR` (as
/// `mio::net::TcpListener::bind` does) and a listen backlog of `backlog`.
///
/// # Errors
/// When the socket cannot be created or bound, or `backlog` is out of range.
pub fn bind_tcp(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::bind(fd.as_raw_fd(), &socket::SockaddrStorage::from(addr))?;
    socket::listen(&fd, Backlog::new(backlog)?)?;
    Ok(TcpListener::from_std(std::net::TcpListener::from(fd)))
}

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const ENOMEM: i32 = 12;

/// Tuning of an [`Acceptor`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AcceptorOptions {
    /// How long to stop accepting after the process or system ran out of descriptors
    /// (`EMFILE`/`ENFILE`) or memory. Default 100 ms.
    pub retry_after: Duration,
    /// At most this many connections are accepted per tick, so a connection storm cannot starve
    /// established clients; the rest are accepted on the next tick. Default 128.
    pub accepts_per_tick: usize,
    /// Bytes written (best effort) to a connection that had to be refused because descriptors ran
    /// out, before it is closed; e.g. `b"421 Too many connections\r\n"`. Default: none.
    pub overload_reply: Option<Vec<u8>>,
}

impl Default for AcceptorOptions {
    fn default() -> Self {
        AcceptorOptions {
            retry_after: Duration::from_millis(100),
            accepts_per_tick: 128,
            overload_reply: None,
        }
    }
}

/// A listening TCP socket that hands each accepted connection to a closure, which typically
/// [`spawn`](Ctx::spawn)s a dispatcher for it.
///
/// It accepts until `WouldBlock` (bounded per tick by [`AcceptorOptions::accepts_per_tick`]).
/// When `accept` fails with `EMFILE`, `ENFILE` or `ENOMEM`, the pending connection would stay in
/// the backlog and make the listener readable forever — a busy loop. Instead the acceptor keeps
/// one reserve descriptor (`/dev/null`): it releases it, accepts the waiting connection, writes
/// the [overload reply](AcceptorOptions::overload_reply), closes it, takes the reserve again,
/// and pauses accepting for [`retry_after`](AcceptorOptions::retry_after).
pub struct Acceptor<F> {
    listener: TcpListener,
    on_accept: F,
    options: AcceptorOptions,
    reserve: Option<File>,
    backoff: Option<TimerId>,
}

impl<F> std::fmt::Debug for Acceptor<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("listener", &self.listener)
            .field("options", &self.options)
            .field("reserve", &self.reserve.is_some())
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl<F> Acceptor<F>
where
    F: FnMut(TcpStream, SocketAddr, &mut Ctx<'_>) + 'static,
{
    /// Wraps a bound, listening socket (also one adopted from systemd or inetd via
    /// `TcpListener::from_std`). `on_accept` runs for every accepted connection.
    pub fn new(listener: TcpListener, options: AcceptorOptions, on_accept: F) -> Acceptor<F> {
        Acceptor {
            listener,
            on_accept,
            options,
            reserve: File::open("/dev/null").ok(),
            backoff: None,
        }
    }

    /// The address the socket is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn exhausted(&mut self, ctx: &mut Ctx<'_>, error: &io::Error) {
        log::warn!(
            "accept on {:?}: {error}; refusing a connection and pausing for {:?}",
            self.listener.local_addr().ok(),
            self.options.retry_after
        );
        // Free one descriptor so the connection at the head of the backlog can be taken and
        // refused rather than left to make the listener readable forever.
        self.reserve = None;
        if let Ok((mut stream, _)) = self.listener.accept() {
            if let Some(reply) = &self.options.overload_reply {
                let _ = stream.write(reply);
            }
        }
        self.reserve = File::open("/dev/null").ok();
        self.backoff = Some(ctx.set_timer(self.options.retry_after));
    }
}

impl<F> Dispatcher for Acceptor<F>
where
    F: FnMut(TcpStream, SocketAddr, &mut Ctx<'_>) + 'static,
{
    fn source(&mut self) -> Option<&mut dyn Source> {
        Some(&mut self.listener)
    }

    fn interest(&self) -> Interest {
        Interest::READABLE
    }

    fn wants_read(&self) -> bool {
        self.backoff.is_none()
    }

    fn on_readable(&mut self, ctx: &mut Ctx<'_>) {
        for _ in 0..self.options.accepts_per_tick {
            match self.listener.accept() {
                Ok((stream, peer)) => (self.on_accept)(stream, peer, ctx),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ctx.read_would_block();
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOMEM)) => {
                    self.exhausted(ctx, &e);
                    return;
                }
                Err(e) => {
                    log::warn!("accept: {e}; pausing");
                    self.backoff = Some(ctx.set_timer(self.options.retry_after));
                    return;
                }
            }
        }
        // Budget used up: the read bit stays set and the reactor comes back next tick.
    }

    fn on_timer(&mut self, _ctx: &mut Ctx<'_>, timer: TimerId) {
        if self.backoff == Some(timer) {
            self.backoff = None;
            if self.reserve.is_none() {
                self.reserve = File::open("/dev/null").ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_tcp_listens_and_accepts() {
        let listener = bind_tcp("127.0.0.1:0".parse().unwrap(), LISTEN_BACKLOG).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        // Non-blocking: the connection is there at once on loopback, and a second accept
        // would block rather than hang.
        let mut accepted = None;
        for _ in 0..100 {
            match listener.accept() {
                Ok(c) => {
                    accepted = Some(c);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(accepted.is_some());
        let err = listener.accept().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
