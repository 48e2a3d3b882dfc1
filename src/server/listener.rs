//! [`Listener`]: the accepting half of `smtpd.SMTPServer`, and graceful shutdown.

use std::any::Any;
use std::cell::Cell;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use mio::event::Source;
use mio::net::{TcpListener, TcpStream};
use mio::Interest;

use super::channel::SmtpChannel;
use super::shared::{ChannelShutdown, ConnectionGuard, ListenerShared};
use super::{Backend, ServerOptions};
use crate::chat::{ChatDispatcher, Socket};
use crate::reactor::{Acceptor, AcceptorOptions, Ctx, Dispatcher, Handle, Reactor, TimerId};
use crate::smtp::Config;

/// Ask a [`Listener`] to shut down gracefully: [`Listener::shutdown`] does it, or send it
/// yourself with [`Reactor::notify`], [`Ctx::notify`] or
/// [`RemoteHandle::notify`](crate::reactor::RemoteHandle::notify) to the listener's
/// [handle](Listener::handle).
///
/// The listener stops accepting and closes; idle connections get `421` at once; a connection
/// in the middle of a transaction may finish it (its message is answered) and then gets `421`,
/// or gets `421` when `grace` runs out. [`Listener::is_shut_down`] tells when all of that is
/// over; [`Reactor::run`] returns then too if the reactor has nothing else to run.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Shutdown {
    /// How long transactions in flight may take to finish.
    pub grace: Duration,
}

impl Shutdown {
    /// A graceful shutdown: transactions in flight get `grace` to finish.
    pub fn new(grace: Duration) -> Shutdown {
        Shutdown { grace }
    }
}

type AcceptFn = Box<dyn FnMut(TcpStream, SocketAddr, &mut Ctx<'_>)>;

/// A listening SMTP server: accepts connections and runs an SMTP channel for each, with a
/// session its [`Backend`] opens (for an `Rc<RefCell<S>>` of an
/// [`SmtpServer`](super::SmtpServer), all handing their messages to that one server). Several
/// listeners (with the same or different servers) can share one reactor, as asyncore servers
/// shared one socket map.
///
/// The value is a *handle* to the listening dispatcher, which lives in the reactor: dropping
/// the `Listener` stops nothing (the server goes on serving). To stop it, call
/// [`shutdown`](Self::shutdown) (graceful: see [`Shutdown`]) or close its
/// [handle](Self::handle); [`is_shut_down`](Self::is_shut_down) then says when its last
/// connection is gone.
pub struct Listener {
    handle: Handle,
    local_addr: SocketAddr,
    shared: Rc<ListenerShared>,
    /// Set when the listening dispatcher is gone (shut down, closed, or dropped).
    closed: Rc<Cell<bool>>,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port) with a listen backlog of
    /// [`ServerOptions::backlog`] and starts serving `server` on `reactor`: an
    /// `Rc<RefCell<S>>` of an [`SmtpServer`](super::SmtpServer) (also `dyn SmtpServer`), or any
    /// other [`Backend`].
    ///
    /// # Errors
    /// When the address cannot be bound, or `options.session` is inconsistent
    /// (`decode_data` with `enable_smtputf8`, as CPython refuses too).
    pub fn bind(
        reactor: &mut Reactor,
        addr: SocketAddr,
        server: impl Backend,
        options: ServerOptions,
    ) -> io::Result<Listener> {
        let listener = crate::reactor::bind_tcp(addr, options.backlog)?;
        Listener::adopt(reactor, listener, server, options)
    }

    /// Serves on an already listening socket (inherited from systemd or inetd, or bound with
    /// special options). Convert a `std::net::TcpListener` with `TcpListener::from_std` after
    /// `set_nonblocking(true)`.
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub fn adopt(
        reactor: &mut Reactor,
        listener: TcpListener,
        server: impl Backend,
        options: ServerOptions,
    ) -> io::Result<Listener> {
        Listener::adopt_backend(reactor, listener, Box::new(server), options)
    }

    fn adopt_backend(
        reactor: &mut Reactor,
        listener: TcpListener,
        server: Box<dyn Backend>,
        options: ServerOptions,
    ) -> io::Result<Listener> {
        options
            .session
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let local_addr = listener.local_addr()?;
        #[cfg(feature = "tls")]
        if options.implicit_tls && options.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "implicit TLS needs a certificate (ServerOptions::tls)",
            ));
        }
        let mut config = session_config(&options.session, &*server);
        #[cfg(feature = "tls")]
        {
            config.starttls = options.tls.is_some() && !options.implicit_tls;
        }
        #[cfg(not(feature = "tls"))]
        {
            config.starttls = false;
        }
        // Requiring TLS means something only where STARTTLS is offered.
        config.require_tls = config.require_tls && config.starttls;
        let shared = Rc::new(ListenerShared::new(options, config, server));
        let accept_shared = shared.clone();
        let on_accept: AcceptFn = Box::new(move |mut stream, peer, ctx| {
            let shared = &accept_shared;
            let ip = peer.ip().to_canonical();
            if let Some(refusal) = shared.refusal(ip) {
                // A fresh socket has room for one line; the stream closes when dropped.
                let _ = stream.write(refusal.as_bytes());
                return;
            }
            let guard = ConnectionGuard::new(shared.clone(), ip);
            let _ = stream.set_nodelay(true);
            let channel = SmtpChannel::new(shared.clone(), guard, peer);
            // Over the enum transport, which STARTTLS can switch in place.
            ctx.spawn(ChatDispatcher::with_options(
                Socket::from(stream),
                channel,
                shared.options.chat.clone(),
            ));
        });
        let acceptor = Acceptor::new(
            listener,
            AcceptorOptions {
                overload_reply: Some(
                    format!(
                        "421 {} Error: out of resources, try later\r\n",
                        shared.options.session.hostname
                    )
                    .into_bytes(),
                ),
                ..AcceptorOptions::default()
            },
            on_accept,
        );
        let closed = Rc::new(Cell::new(false));
        let handle = reactor.add(ListenerDispatcher {
            acceptor,
            shared: shared.clone(),
            closed: closed.clone(),
        })?;
        log::info!("listening on {local_addr}");
        Ok(Listener {
            handle,
            local_addr,
            shared,
            closed,
        })
    }

    /// Shuts the listener down gracefully (see [`Shutdown`]): from the next tick of `reactor`
    /// on, it accepts nothing more, idle connections get `421`, and transactions in flight
    /// have `grace` to finish. Returns at once; [`is_shut_down`](Self::is_shut_down) says
    /// when the last connection is gone, so a loop that runs other dispatchers too can wait
    /// for it:
    ///
    /// ```no_run
    /// # use std::time::{Duration, Instant};
    /// # use smtpd::reactor::Reactor;
    /// # fn wait(reactor: &mut Reactor, listener: &smtpd::server::Listener) -> std::io::Result<()> {
    /// let grace = Duration::from_secs(30);
    /// listener.shutdown(reactor, grace);
    /// // Give it the grace and a little more for the last replies to go out.
    /// let deadline = Instant::now() + grace + Duration::from_secs(5);
    /// let done = reactor.run_until(deadline, |_| listener.is_shut_down())?;
    /// assert!(done, "connections still open after the grace");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// From a dispatcher's hook, send the [`Shutdown`] with [`Ctx::notify`] to
    /// [`handle`](Self::handle) instead; from another thread, with
    /// [`RemoteHandle::notify`](crate::reactor::RemoteHandle::notify). Calling it again, or
    /// after the listener closed, does nothing.
    pub fn shutdown(&self, reactor: &mut Reactor, grace: Duration) {
        if !self.closed.get() {
            reactor.notify(self.handle, Shutdown { grace });
        }
    }

    /// Whether the listener has stopped accepting (after [`shutdown`](Self::shutdown), a
    /// [`Shutdown`] sent to it, or its dispatcher closed otherwise) **and** every connection it
    /// accepted is gone. It changes only inside a tick of the reactor, so checking it after
    /// each [`Reactor::poll_once`] or in [`Reactor::run_until`]'s predicate never misses it.
    pub fn is_shut_down(&self) -> bool {
        self.closed.get() && self.shared.connections.get() == 0
    }

    /// Whether the listener still accepts connections (its dispatcher is alive).
    pub fn is_listening(&self) -> bool {
        !self.closed.get()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's dispatcher handle: send it a [`Shutdown`].
    pub fn handle(&self) -> Handle {
        self.handle
    }

    /// Connections open now (counted from accept until the channel is gone, however it
    /// ended).
    pub fn connection_count(&self) -> usize {
        self.shared.connections.get()
    }

    /// Connections open now from `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        let ip = ip.to_canonical();
        self.shared.per_ip.borrow().get(&ip).copied().unwrap_or(0)
    }

    /// Bytes of message data the listener's connections hold now (see
    /// [`ServerOptions::data_memory_limit`]).
    pub fn data_memory(&self) -> usize {
        self.shared.data_memory.get()
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

/// The [`Config`] of a listener's sessions: `session` with every decision asked of the
/// backend's hooks (the defaults accept, as CPython does), its custom verbs and EHLO keywords.
pub(crate) fn session_config(session: &Config, backend: &dyn Backend) -> Config {
    let mut config = Config {
        check_connect: true,
        check_helo: true,
        check_mail: true,
        check_rcpt: true,
        ..session.clone()
    };
    // HELO and EHLO listed here go to on_command instead of on_helo.
    config.custom_verbs = backend
        .commands()
        .iter()
        .map(|v| v.to_uppercase())
        .collect();
    let default = crate::smtp::default_ehlo_keywords(&config);
    let mut keywords = default.clone();
    backend.ehlo_keywords(&mut keywords);
    if keywords != default {
        config.ehlo_keywords = Some(keywords);
    }
    config
}

struct ListenerDispatcher {
    acceptor: Acceptor<AcceptFn>,
    shared: Rc<ListenerShared>,
    closed: Rc<Cell<bool>>,
}

impl Drop for ListenerDispatcher {
    /// The reactor drops a dispatcher as soon as it is closed (also after a panic in a hook).
    fn drop(&mut self) {
        self.closed.set(true);
    }
}

impl Dispatcher for ListenerDispatcher {
    fn source(&mut self) -> Option<&mut dyn Source> {
        self.acceptor.source()
    }
    fn interest(&self) -> Interest {
        self.acceptor.interest()
    }
    fn wants_read(&self) -> bool {
        self.acceptor.wants_read()
    }
    fn on_readable(&mut self, ctx: &mut Ctx<'_>) {
        self.acceptor.on_readable(ctx);
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        self.acceptor.on_timer(ctx, timer);
    }
    fn on_notify(&mut self, ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        if let Ok(shutdown) = message.downcast::<Shutdown>() {
            let channels: Vec<Handle> = self.shared.channels.borrow().iter().copied().collect();
            log::info!(
                "shutting down: {} connection(s) get up to {:?} to finish",
                channels.len(),
                shutdown.grace
            );
            for channel in channels {
                ctx.notify(
                    channel,
                    ChannelShutdown {
                        grace: shutdown.grace,
                    },
                );
            }
            ctx.close();
        }
    }
}
