//! [`Relay`]: runs a [`Client`] over a non-blocking TCP connection inside the reactor.

use std::any::Any;
use std::io;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

use super::session::{Client, ClientConfig, Event, MailParams};
use crate::chat::{Chat, ChatCtl, ChatHandler, ChatOptions, Terminator};
use crate::reactor::{Ctx, Dispatcher, TimerId};

/// Timeouts of a [`Relay`].
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
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(120),
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

struct Handler {
    client: Client,
    line: Vec<u8>,
    line_too_long: bool,
    on_event: EventHandler,
    options: RelayOptions,
    timer: Option<TimerId>,
    /// The terminal event (Failed or Closed) was delivered.
    done: bool,
}

/// Longest reply line accepted from an upstream (RFC 5321 4.5.3.1.5 says 512).
const MAX_REPLY_LINE: usize = 4096;

impl Handler {
    /// Sends what the client wants sent, hands events out, keeps the timer right.
    fn pump(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        loop {
            let mut out = Vec::new();
            if self.client.poll_transmit(&mut out) {
                chat.push_vec(out);
            }
            let Some(event) = self.client.poll_event() else {
                break;
            };
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

    fn fail(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, why: &str) {
        self.client.handle_closed(why);
        self.pump(chat, ctx);
        chat.close_when_done();
    }
}

impl ChatHandler for Handler {
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
        self.client.handle_line(&line);
        self.line = line;
        self.line.clear();
        self.pump(chat, ctx);
    }

    fn on_peer_closed(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>, _pending: usize) {
        self.fail(chat, ctx, "closed by the upstream");
    }

    fn on_close(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_timer(t);
        }
        if !self.done {
            self.client.handle_closed("connection error");
            self.pump(chat, ctx);
        }
    }
}

/// The connection of a [`Relay`]: TCP, or a unix-domain socket (an LMTP server such as
/// Mailman's may listen on one).
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Conn::Tcp(s) => s.take_error(),
            Conn::Unix(s) => s.take_error(),
        }
    }

    /// Whether the connection is established (`Ok(false)`: still in progress).
    fn is_connected(&self) -> io::Result<bool> {
        let result = match self {
            Conn::Tcp(s) => s.peer_addr().map(|_| ()),
            Conn::Unix(s) => s.peer_addr().map(|_| ()),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn set_nodelay(&self) {
        if let Conn::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

impl Source for Conn {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.register(registry, token, interest),
            Conn::Unix(s) => s.register(registry, token, interest),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.reregister(registry, token, interest),
            Conn::Unix(s) => s.reregister(registry, token, interest),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.deregister(registry),
            Conn::Unix(s) => s.deregister(registry),
        }
    }
}

/// An outgoing SMTP/LMTP session on the reactor: connects without blocking (the procedure
/// mio documents for `TcpStream::connect`), runs a [`Client`], enforces connect, command and
/// data timeouts, and hands every [`Event`] to a callback. The callback gets the client, so it
/// can issue the next command; other dispatchers can send [`RelayCommand`]s with
/// [`Ctx::notify`]. The callback always sees exactly one terminal event (`Closed` or `Failed`),
/// whatever ends the connection.
pub struct Relay {
    chat: Chat<Conn>,
    handler: Handler,
    connected: bool,
    connect_timer: Option<TimerId>,
    /// The peer, for log lines.
    upstream: String,
}

impl Relay {
    /// Starts connecting to `upstream` (a resolved address: name lookups block and never run
    /// in the loop). Queue commands on [`client`](Self::client) before spawning, or from the
    /// callback once `Event::Ready` arrives.
    ///
    /// # Errors
    /// When no socket can be created (descriptor limits).
    pub fn connect(
        upstream: SocketAddr,
        config: ClientConfig,
        options: RelayOptions,
        on_event: EventHandler,
    ) -> io::Result<Relay> {
        let stream = TcpStream::connect(upstream)?;
        Ok(Relay::with_conn(
            Conn::Tcp(stream),
            upstream.to_string(),
            config,
            options,
            on_event,
        ))
    }

    /// Like [`connect`](Self::connect), to a unix-domain socket (Mailman's LMTP runner, say,
    /// configured with a socket path).
    ///
    /// # Errors
    /// When no socket can be created, or the connection is refused at once (no such socket,
    /// nobody listening, backlog full).
    pub fn connect_unix(
        path: &Path,
        config: ClientConfig,
        options: RelayOptions,
        on_event: EventHandler,
    ) -> io::Result<Relay> {
        let stream = UnixStream::connect(path)?;
        Ok(Relay::with_conn(
            Conn::Unix(stream),
            path.display().to_string(),
            config,
            options,
            on_event,
        ))
    }

    fn with_conn(
        conn: Conn,
        upstream: String,
        config: ClientConfig,
        options: RelayOptions,
        on_event: EventHandler,
    ) -> Relay {
        Relay {
            chat: Chat::with_options(conn, ChatOptions::default()),
            handler: Handler {
                client: Client::new(config),
                line: Vec::new(),
                line_too_long: false,
                on_event,
                options,
                timer: None,
                done: false,
            },
            connected: false,
            connect_timer: None,
            upstream,
        }
    }

    /// The client, to queue commands before the relay is spawned.
    pub fn client(&mut self) -> &mut Client {
        &mut self.handler.client
    }

    /// Completes a pending non-blocking connect; returns false while it is still in progress.
    fn check_connect(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let stream = self.chat.stream_mut();
        let result = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => stream.is_connected(),
        };
        match result {
            Ok(true) => {
                self.connected = true;
                self.chat.stream().set_nodelay();
                if let Some(t) = self.connect_timer.take() {
                    ctx.cancel_timer(t);
                }
                log::debug!("relay to {} connected", self.upstream);
                self.handler.arm_timer(ctx);
                true
            }
            Ok(false) => {
                ctx.write_would_block();
                false
            }
            Err(e) => {
                log::warn!("relay to {}: connect failed: {e}", self.upstream);
                let why = format!("cannot connect: {e}");
                self.handler.fail(self.chat.ctl(), ctx, &why);
                ctx.close();
                false
            }
        }
    }
}

impl Dispatcher for Relay {
    fn source(&mut self) -> Option<&mut dyn Source> {
        Some(self.chat.stream_mut())
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.chat.ctl().set_terminator(Terminator::bytes("\r\n"));
        self.connect_timer = Some(ctx.set_timer(self.handler.options.connect_timeout));
    }

    fn wants_read(&self) -> bool {
        self.connected && self.chat.wants_read()
    }

    fn wants_write(&self) -> bool {
        !self.connected || self.chat.wants_write()
    }

    fn on_readable(&mut self, ctx: &mut Ctx<'_>) {
        self.chat.handle_read(&mut self.handler, ctx);
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>) {
        if !self.connected && !self.check_connect(ctx) {
            return;
        }
        self.chat.handle_write(ctx);
        self.chat.settle(&mut self.handler, ctx);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        if self.connect_timer == Some(timer) {
            self.connect_timer = None;
            log::warn!("relay to {}: connect timed out", self.upstream);
            self.handler.fail(self.chat.ctl(), ctx, "connect timed out");
            ctx.close();
        } else if self.handler.timer == Some(timer) {
            self.handler.timer = None;
            log::warn!("relay to {}: reply timed out", self.upstream);
            self.handler.client.handle_timeout();
            self.handler.pump(self.chat.ctl(), ctx);
            ctx.close();
        }
    }

    fn on_notify(&mut self, ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        let Ok(command) = message.downcast::<RelayCommand>() else {
            return;
        };
        let client = &mut self.handler.client;
        match *command {
            RelayCommand::Mail(from, params) => client.mail(from, params),
            RelayCommand::Rcpt(to) => client.rcpt(to),
            RelayCommand::Data(data) => client.data(data),
            RelayCommand::Rset => client.rset(),
            RelayCommand::Quit => client.quit(),
        }
        self.handler.pump(self.chat.ctl(), ctx);
        self.chat.settle(&mut self.handler, ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(t) = self.connect_timer.take() {
            ctx.cancel_timer(t);
        }
        self.handler.on_close(self.chat.ctl(), ctx);
    }
}
