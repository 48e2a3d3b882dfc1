//! [`Listener`]: the accepting half of `smtpd.SMTPServer`, and graceful shutdown.

use std::any::Any;
use std::cell::Cell;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mio::event::Source;
use mio::net::{TcpListener, TcpStream};
use mio::Interest;

use super::channel::SmtpChannel;
use super::{Backend, ServerOptions};
use crate::chat::ChatDispatcher;
use crate::reactor::{Acceptor, AcceptorOptions, Ctx, Dispatcher, Handle, Reactor, TimerId};
use crate::smtp::Config;

/// State shared by a listener and its channels.
pub(crate) struct ListenerShared {
    pub(crate) options: ServerOptions,
    pub(crate) config: Arc<Config>,
    pub(crate) channels: RefCell<HashSet<Handle>>,
    /// Open connections per client address.
    pub(crate) per_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Bytes of message data held by all channels (see `ServerOptions::data_memory_limit`).
    pub(crate) data_memory: Cell<usize>,
    /// The verbs the server handles in `on_command` (upper-case).
    pub(crate) server_verbs: Vec<String>,
    /// Opens each channel's session.
    pub(crate) backend: RefCell<Box<dyn Backend>>,
}

impl ListenerShared {
    /// Whether `ip` is exempt from the per-address connection cap.
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.options
            .trusted_networks
            .iter()
            .any(|n| n.contains(&ip))
    }

    /// A channel for a client at `ip` closed.
    pub(crate) fn connection_closed(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// The refusal for a new connection from `ip`, if a connection cap is reached.
    fn refusal(&self, ip: IpAddr) -> Option<String> {
        let host = &self.options.session.hostname;
        let max = self.options.max_connections;
        if max > 0 && self.channels.borrow().len() >= max {
            log::warn!("{ip}: refused, {max} connections already open");
            return Some(format!("421 4.7.0 {host} Error: too many connections\r\n"));
        }
        let per_ip = self.options.max_connections_per_ip;
        if per_ip > 0
            && self.per_ip.borrow().get(&ip).copied().unwrap_or(0) >= per_ip
            && !self.is_trusted(ip)
        {
            log::warn!("{ip}: refused, {per_ip} connections from it already open");
            return Some(format!(
                "421 4.7.0 {host} Error: too many connections from {ip}\r\n"
            ));
        }
        None
    }
}

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

/// Sent by the listener to each of its channels on [`Shutdown`].
pub(crate) struct ChannelShutdown {
    pub(crate) grace: Duration,
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
        // The server's on_mail/on_rcpt hooks decide every MAIL and RCPT (the defaults accept,
        // as CPython does).
        let mut config = Config {
            check_mail: true,
            check_rcpt: true,
            ..options.session.clone()
        };
        let server_verbs: Vec<String>;
        {
            server_verbs = server.commands().iter().map(|v| v.to_uppercase()).collect();
            config.custom_verbs = server_verbs.clone();
            // HELO and EHLO go to the server's on_helo unless it handles them as commands.
            for verb in ["HELO", "EHLO"] {
                if !config.custom_verbs.iter().any(|v| v == verb) {
                    config.custom_verbs.push(verb.to_string());
                }
            }
            let default = crate::smtp::default_ehlo_keywords(&config);
            let mut keywords = default.clone();
            server.ehlo_keywords(&mut keywords);
            if keywords != default {
                config.ehlo_keywords = Some(keywords);
            }
        }
        let shared = Rc::new(ListenerShared {
            config: Arc::new(config),
            options,
            channels: RefCell::new(HashSet::new()),
            per_ip: RefCell::new(HashMap::new()),
            data_memory: Cell::new(0),
            server_verbs,
            backend: RefCell::new(server),
        });
        let accept_shared = shared.clone();
        let on_accept: AcceptFn = Box::new(move |mut stream, peer, ctx| {
            let shared = &accept_shared;
            let ip = peer.ip().to_canonical();
            if let Some(refusal) = shared.refusal(ip) {
                // A fresh socket has room for one line; the stream closes when dropped.
                let _ = stream.write(refusal.as_bytes());
                return;
            }
            *shared.per_ip.borrow_mut().entry(ip).or_insert(0) += 1;
            let _ = stream.set_nodelay(true);
            let channel = SmtpChannel::new(shared.config.clone(), shared.clone(), peer);
            let handle = ctx.spawn(ChatDispatcher::with_options(
                stream,
                channel,
                shared.options.chat.clone(),
            ));
            shared.channels.borrow_mut().insert(handle);
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
        let handle = reactor.add(ListenerDispatcher { acceptor, shared })?;
        log::info!("listening on {local_addr}");
        Ok(Listener { handle, local_addr })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listener's dispatcher handle: send it a [`Shutdown`].
    pub fn handle(&self) -> Handle {
        self.handle
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
