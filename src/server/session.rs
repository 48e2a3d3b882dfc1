//! Per-connection sessions (go-smtp's Backend/Session): the [`Backend`] a [`Listener`] serves
//! opens one [`SmtpSession`] per connection, and every hook of that connection runs on it.
//!
//! [`Listener`]: super::Listener

use std::cell::RefCell;
use std::rc::Rc;

use super::{
    AddressRequest, CommandRequest, HeloRequest, Message, Outcome, Peer, ServerCtx, SmtpServer,
};

/// The hooks of one client connection, on a value that lives as long as the connection: what
/// the connection needs to remember (relay legs, counters, the sender's reputation) is a field
/// of the session. Opened by the listener's [`Backend`] when the connection starts, dropped
/// after [`on_disconnect`](Self::on_disconnect).
///
/// Every hook but [`process_message`](Self::process_message) has CPython's default, as in
/// [`SmtpServer`]; a hook that returns [`Outcome`] may defer ([`ServerCtx::defer`]). A panic
/// in a hook is caught: the client gets `451` (`421` at connect) and the loop goes on.
///
/// ```no_run
/// use std::net::SocketAddr;
/// use smtpd::reactor::Reactor;
/// use smtpd::server::{
///     Backend, Listener, Message, Outcome, Peer, Reply, ServerCtx, ServerOptions, SmtpSession,
/// };
///
/// /// Opens a counting session per connection.
/// struct Counting;
///
/// impl Backend for Counting {
///     fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession> {
///         Box::new(CountingSession { peer: peer.addr, messages: 0 })
///     }
/// }
///
/// /// One connection: counts its messages, refuses the eleventh.
/// struct CountingSession {
///     peer: SocketAddr,
///     messages: usize,
/// }
///
/// impl SmtpSession for CountingSession {
///     fn process_message(&mut self, _msg: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
///         self.messages += 1;
///         if self.messages > 10 {
///             return Outcome::Reply(Reply::new(452, "4.5.3 Ten messages per connection"));
///         }
///         Outcome::Accept
///     }
///
///     fn on_disconnect(&mut self, _cx: &mut ServerCtx<'_, '_>) {
///         println!("{}: {} message(s)", self.peer, self.messages);
///     }
/// }
///
/// let mut reactor = Reactor::new()?;
/// let addr = "127.0.0.1:8025".parse().unwrap();
/// Listener::bind(&mut reactor, addr, Counting, ServerOptions::default())?;
/// reactor.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait SmtpSession: 'static {
    /// The client connected (the session was just opened). [`Outcome::Accept`] (the default)
    /// greets with the `220` line; a `2xx` reply greets with that reply instead; any other
    /// reply (`554 No service for you`) is sent instead of the greeting and the connection
    /// closes. It may defer (a reputation lookup): the client then waits for the greeting.
    /// `peer` is what is known about the client (its address; on an implicit-TLS listener its
    /// TLS facts, [`Peer::tls`]).
    fn on_connect(&mut self, _peer: &Peer, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    /// A `HELO` or `EHLO`, before the built-in checks: as [`SmtpServer::on_helo`].
    fn on_helo(&mut self, _request: &HeloRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    /// A syntactically valid `MAIL FROM`: as [`SmtpServer::on_mail`].
    fn on_mail(&mut self, _request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    /// A syntactically valid `RCPT TO`: as [`SmtpServer::on_rcpt`].
    fn on_rcpt(&mut self, _request: &AddressRequest<'_>, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
        Outcome::Accept
    }

    /// A command whose verb [`Backend::commands`] listed: as [`SmtpServer::on_command`].
    fn on_command(
        &mut self,
        _request: &CommandRequest<'_>,
        _cx: &mut ServerCtx<'_, '_>,
    ) -> Outcome {
        Outcome::Accept
    }

    /// A message was received: as [`SmtpServer::process_message`].
    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome;

    /// The transaction ended without a message reaching
    /// [`process_message`](Self::process_message): as [`SmtpServer::on_reset`].
    fn on_reset(&mut self, _cx: &mut ServerCtx<'_, '_>) {}

    /// The connection closed; the session is dropped after this returns.
    fn on_disconnect(&mut self, _cx: &mut ServerCtx<'_, '_>) {}
}

/// What a [`Listener`](super::Listener) serves: opens a [`SmtpSession`] for each connection,
/// and says what holds for all of them (go-smtp's `Backend`).
///
/// `Rc<RefCell<S>>` for any [`SmtpServer`] `S` (also `dyn SmtpServer`) is a backend whose
/// sessions forward every hook to the shared server; `Box<B>` of a backend is one too.
pub trait Backend: 'static {
    /// A session for a new connection from `peer` (its address, [`Peer::addr`]; on an
    /// implicit-TLS listener, after the handshake, its TLS facts, [`Peer::tls`]; after
    /// STARTTLS the hooks' requests and the [`Message`] carry them). Called before
    /// [`SmtpSession::on_connect`]; a panic here refuses the connection with `421`.
    fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession>;

    /// The verbs (upper-case) the sessions handle themselves in
    /// [`SmtpSession::on_command`]: as [`SmtpServer::commands`]. Asked once, when the
    /// [`Listener`](super::Listener) is created.
    fn commands(&self) -> Vec<String> {
        Vec::new()
    }

    /// Edits the EHLO keywords announced to every client: as [`SmtpServer::ehlo_keywords`].
    /// Asked once, when the [`Listener`](super::Listener) is created.
    fn ehlo_keywords(&self, _keywords: &mut Vec<String>) {}
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn open_session(&mut self, peer: &Peer) -> Box<dyn SmtpSession> {
        (**self).open_session(peer)
    }

    fn commands(&self) -> Vec<String> {
        (**self).commands()
    }

    fn ehlo_keywords(&self, keywords: &mut Vec<String>) {
        (**self).ehlo_keywords(keywords);
    }
}

/// The blanket adapter: a CPython-shaped server shared by every connection.
impl<S: SmtpServer + ?Sized> Backend for Rc<RefCell<S>> {
    fn open_session(&mut self, _peer: &Peer) -> Box<dyn SmtpSession> {
        Box::new(Shared(self.clone()))
    }

    fn commands(&self) -> Vec<String> {
        self.borrow().commands()
    }

    fn ehlo_keywords(&self, keywords: &mut Vec<String>) {
        self.borrow().ehlo_keywords(keywords);
    }
}

/// A session that forwards each hook to the shared [`SmtpServer`] (the borrow never overlaps:
/// reactor hooks never nest).
struct Shared<S: ?Sized>(Rc<RefCell<S>>);

impl<S: ?Sized> std::fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl<S: SmtpServer + ?Sized> SmtpSession for Shared<S> {
    fn on_connect(&mut self, peer: &Peer, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        match self.0.borrow_mut().on_connect(peer.addr, cx) {
            None => Outcome::Accept,
            Some(reply) => Outcome::Reply(reply),
        }
    }

    fn on_helo(&mut self, request: &HeloRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.0.borrow_mut().on_helo(request, cx)
    }

    fn on_mail(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.0.borrow_mut().on_mail(request, cx)
    }

    fn on_rcpt(&mut self, request: &AddressRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.0.borrow_mut().on_rcpt(request, cx)
    }

    fn on_command(&mut self, request: &CommandRequest<'_>, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.0.borrow_mut().on_command(request, cx)
    }

    fn process_message(&mut self, message: &Message, cx: &mut ServerCtx<'_, '_>) -> Outcome {
        self.0.borrow_mut().process_message(message, cx)
    }

    fn on_reset(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.0.borrow_mut().on_reset(cx);
    }

    fn on_disconnect(&mut self, cx: &mut ServerCtx<'_, '_>) {
        self.0.borrow_mut().on_disconnect(cx);
    }
}

/// Calls the hook of `hooks` that decides `request`, with the request built from the session's
/// state: the one place the channel and `testing::SessionDriver` both use, so a test without
/// a socket sees exactly what a connection would.
pub(crate) fn ask(
    hooks: &mut dyn SmtpSession,
    session: &crate::smtp::Session,
    request: &crate::smtp::Request,
    cx: &mut ServerCtx<'_, '_>,
) -> Outcome {
    use crate::smtp::Request;
    let peer = session.peer();
    let helo = session.helo();
    let envelope = session.envelope();
    let tls = session.peer_info().tls.as_deref();
    match request {
        Request::Connect => hooks.on_connect(session.peer_info(), cx),
        Request::Helo(check) => {
            let request = HeloRequest {
                peer,
                name: &check.name,
                extended: check.extended,
                tls,
            };
            hooks.on_helo(&request, cx)
        }
        Request::Mail(check) | Request::Rcpt(check) => {
            let address = AddressRequest {
                peer,
                helo,
                mail_from: envelope.map_or(check.address.as_str(), |e| e.mail_from.as_str()),
                address: &check.address,
                options: &check.options,
                mail_options: envelope.map_or(&check.options, |e| &e.mail_options),
                rcpt_tos: envelope.map_or(&[], |e| &e.rcpt_tos),
                params: &check.params,
                mail_params: envelope.map_or(&check.params, |e| &e.mail_params),
                recipients: envelope.map_or(&[], |e| &e.recipients),
                tls,
            };
            if matches!(request, Request::Mail(_)) {
                hooks.on_mail(&address, cx)
            } else {
                hooks.on_rcpt(&address, cx)
            }
        }
        Request::Command(check) => {
            let request = CommandRequest {
                peer,
                helo,
                verb: &check.verb,
                arg: &check.arg,
                tls,
            };
            hooks.on_command(&request, cx)
        }
        Request::Message(message) => hooks.process_message(message, cx),
    }
}
