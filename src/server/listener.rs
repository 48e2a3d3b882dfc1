//! [`Listener`]: the accepting half of `smtpd.SMTPServer`, and graceful shutdown.

use std::any::Any;
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
use crate::chat::ChatDispatcher;
use crate::reactor::{Acceptor, AcceptorOptions, Ctx, Dispatcher, Handle, Reactor, TimerId};
use crate::smtp::Config;

/// Ask a [`Listener`] to shut down gracefully: send it with [`Reactor::notify`] or
/// [`RemoteHandle::notify`](crate::reactor::RemoteHandle::notify) to the listener's handle.
///
/// The listener stops accepting and closes; idle connections get `421` at once; a connection
/// in the middle of a transaction may finish it (its message is answered) and then gets `421`,
/// or gets `421` when `grace` runs out. [`Reactor::run`] returns once everything is closed.
#[derive(Clone, Copy, Debug)]
pub struct Shutdown {
    /// How long transactions in flight may take to finish.
    pub grace: Duration,
}

type AcceptFn = Box<dyn FnMut(TcpStream, SocketAddr, &mut Ctx<'_>)>;

/// A listening SMTP server: accepts connections and runs an SMTP channel for each, with a
/// session its [`Backend`] opens (for an `Rc<RefCell<S>>` of an
/// [`SmtpServer`](super::SmtpServer), all handing their messages to that one server). Several
/// listeners (with the same or different servers) can share one reactor, as asyncore servers
/// shared one socket map.
pub struct Listener {
    handle: Handle,
    local_addr: SocketAddr,
    shared: Rc<ListenerShared>,
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
        // The server's hooks decide every connection, greeting, MAIL and RCPT (the defaults
        // accept, as CPython does).
        let mut config = Config {
            check_connect: true,
            check_helo: true,
            check_mail: true,
            check_rcpt: true,
            ..options.session.clone()
        };
        {
            // HELO and EHLO listed here go to on_command instead of on_helo.
            config.custom_verbs = server.commands().iter().map(|v| v.to_uppercase()).collect();
            let default = crate::smtp::default_ehlo_keywords(&config);
            let mut keywords = default.clone();
            server.ehlo_keywords(&mut keywords);
            if keywords != default {
                config.ehlo_keywords = Some(keywords);
            }
        }
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
            ctx.spawn(ChatDispatcher::with_options(
                stream,
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
        let handle = reactor.add(ListenerDispatcher {
            acceptor,
            shared: shared.clone(),
        })?;
        log::info!("listening on {local_addr}");
        Ok(Listener {
            handle,
            local_addr,
            shared,
        })
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

struct ListenerDispatcher {
    acceptor: Acceptor<AcceptFn>,
    shared: Rc<ListenerShared>,
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
