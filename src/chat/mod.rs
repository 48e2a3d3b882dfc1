//! The buffered, terminator-framed channel: asynchat's `async_chat`, on the reactor.
//!
//! A [`Chat`] owns a [`Transport`] (a [`Socket`]: TCP, unix-domain or TLS over either; a pipe, a
//! [`FileStream`](crate::reactor::FileStream)), the unframed leftover of its input, the current
//! [`Terminator`] and an output queue. Its owner supplies the protocol as a
//! [`ChatHandler`]: `collect_incoming_data` receives input up to the terminator, as it arrives;
//! `found_terminator` runs when the terminator is seen and may push replies, change the
//! terminator, pause input or ask to close. [`ChatDispatcher`] is the ready-made
//! [`Dispatcher`] that puts the two together (`class MyChannel(asynchat.async_chat)`).
//!
//! # Differences from asynchat, all deliberate
//! - **Pausing** ([`ChatCtl::pause`]) stops framing in the middle of a buffer: pipelined input
//!   already read waits, unframed, until [`ChatCtl::resume`], and the socket is not read
//!   meanwhile. asynchat had no way to stop.
//! - **Backpressure**: reading stops while more than
//!   [`ChatOptions::output_high_water`] bytes of output wait, and resumes below the low mark. asynchat's
//!   `readable()` was always true, so a client that never read its replies grew the server's memory.
//! - **Reads go through one thread-wide 64 KiB scratch buffer**, and framing runs directly on it;
//!   a connection keeps only its unframed leftover (usually empty, or a partial terminator), so an
//!   idle connection holds no 64 KiB buffer.
//! - **A bounded read budget per tick** keeps one fast client from starving the others.
//! - **Peer half-close**: when the peer shuts its side down, complete units already received are
//!   still framed and answered, output is flushed, then the channel closes.
//! - **STARTTLS**: [`ChatCtl::switch_transport_when_flushed`] changes the transport in place
//!   once the reply before it has been sent, and drops the input read before the switch, as
//!   RFC 3207 requires.
//!
//! # Transports with input of their own
//! A layer such as TLS may hold plaintext although its socket would block, and that raises no
//! readiness event. The chat asks [`Transport::has_buffered_input`] after every hook (in
//! [`Chat::settle`]) and reads such input itself whenever it wants input and the reactor no
//! longer offers reads; the reactor's readiness contract is unchanged. Likewise output a
//! transport holds ([`Transport::wants_write`]) keeps the chat writable and its close waiting.

mod outbuf;
mod terminator;
#[cfg(feature = "tls")]
mod tls;
mod transport;

#[cfg(feature = "tls")]
pub use tls::TlsStream;

pub use outbuf::Producer;
pub use terminator::Terminator;
pub(crate) use transport::forward_source;
pub use transport::{Endpoint, Socket, Transport, TransportSwitch};

use std::any::{type_name, Any};
use std::cell::Cell;
use std::fmt;
use std::io;

use mio::event::Source;
use mio::Interest;

use crate::reactor::{Ctx, Dispatcher, TimerId};
use outbuf::OutBuf;
use terminator::Framing;

/// Size of the thread-wide read buffer (asynchat's `ac_in_buffer_size`).
pub const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

fn take_scratch() -> Vec<u8> {
    let mut buf = SCRATCH.with(|s| s.take());
    if buf.len() < SCRATCH_SIZE {
        buf.resize(SCRATCH_SIZE, 0);
    }
    buf
}

fn put_scratch(buf: Vec<u8>) {
    SCRATCH.with(|s| s.set(buf));
}

/// Limits of a [`Chat`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChatOptions {
    /// Most bytes read from the socket in one `on_readable` (default 256 KiB); the rest is read
    /// on a later tick.
    pub read_budget: usize,
    /// Stop reading input while more output than this waits to be sent (default 256 KiB).
    pub output_high_water: usize,
    /// Resume reading once pending output drops below this (default 64 KiB).
    pub output_low_water: usize,
    /// Hard cap on queued output (default 1 MiB; 0: none). Reading stops at the high-water
    /// mark, but input already read may still produce replies; a peer that never reads them
    /// and pushes the queue past this cap is disconnected: its output is dropped and the
    /// channel closes.
    pub output_limit: usize,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            read_budget: 4 * SCRATCH_SIZE,
            output_high_water: 256 * 1024,
            output_low_water: 64 * 1024,
            output_limit: 1024 * 1024,
        }
    }
}

/// The part of a [`Chat`] a handler may use while input is being framed: output, terminator,
/// pause and close. The counterpart of calling `self.push(...)` / `self.set_terminator(...)`
/// inside an asynchat subclass.
pub struct ChatCtl {
    framing: Framing,
    out: OutBuf,
    paused: bool,
    closing: bool,
    throttled: bool,
    /// The output cap was exceeded: output is dropped and the channel closes.
    overflowed: bool,
    /// A transport switch waiting for the output before it to be sent.
    switch: Option<TransportSwitch>,
    options: ChatOptions,
}

impl fmt::Debug for ChatCtl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatCtl")
            .field("terminator", &self.framing.terminator)
            .field("pending_output", &self.out.len())
            .field("paused", &self.paused)
            .field("closing", &self.closing)
            .field("throttled", &self.throttled)
            .field("overflowed", &self.overflowed)
            .field("switch", &self.switch)
            .field("options", &self.options)
            .finish()
    }
}

impl ChatCtl {
    /// Queues bytes for output (`async_chat.push`).
    pub fn push(&mut self, data: &[u8]) {
        if self.overflowed {
            return;
        }
        self.out.push(data);
        self.update_throttle();
    }

    /// Queues an owned buffer for output without copying large ones.
    pub fn push_vec(&mut self, data: Vec<u8>) {
        if self.overflowed {
            return;
        }
        self.out.push_vec(data);
        self.update_throttle();
    }

    /// Queues a lazy producer (`async_chat.push_with_producer`).
    pub fn push_with_producer(&mut self, producer: Box<dyn Producer>) {
        self.out.push_producer(producer);
    }

    /// Sets the terminator for the input that follows (`async_chat.set_terminator`). Called from
    /// `found_terminator`, it applies to the very next byte of the buffer.
    pub fn set_terminator(&mut self, terminator: Terminator) {
        self.framing.set(terminator);
    }

    /// Sets a byte terminator and declares its first `primed` bytes already seen just before the
    /// next input byte. SMTP uses it for DATA: the CRLF that ended the `DATA` command line is the
    /// first half of `CRLF.CRLF`, so a body of nothing (`.` CRLF right away) ends the message.
    /// Ignored for other terminators; at most `len - 1` bytes can be primed.
    pub fn set_terminator_primed(&mut self, terminator: Terminator, primed: usize) {
        self.framing.set_primed(terminator, primed);
    }

    /// The current terminator (`async_chat.get_terminator`); a `Count` shows what is left.
    pub fn terminator(&self) -> &Terminator {
        &self.framing.terminator
    }

    /// Stops framing input, also in the middle of a buffer, and stops reading the socket, until
    /// [`resume`](Self::resume). Used while an answer is deferred.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Resumes framing; input already buffered is framed at once by the owning
    /// [`ChatDispatcher`] (or the next [`Chat::settle`]).
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// Whether input framing is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Closes the channel once all queued output has been sent (`close_when_done`). No more
    /// input is read or framed.
    pub fn close_when_done(&mut self) {
        self.closing = true;
    }

    /// Whether [`close_when_done`](Self::close_when_done) was asked for.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Changes the transport in place once everything queued so far has been sent, the
    /// transport's own output included (STARTTLS: push `220 Ready to start TLS`, then ask for
    /// the switch). Until then no input is framed or read; at the switch, input read but not yet
    /// framed is discarded (RFC 3207: nothing the client pipelined after STARTTLS may be acted
    /// on), then `switch` runs on the transport. Input the new transport already holds is
    /// delivered without waiting for a readiness event. If `switch` fails (or was made for
    /// another transport type), the channel closes. A second request replaces the first; a
    /// [`close_when_done`](Self::close_when_done) cancels it.
    pub fn switch_transport_when_flushed(&mut self, switch: TransportSwitch) {
        self.switch = Some(switch);
    }

    /// Whether a [transport switch](Self::switch_transport_when_flushed) is waiting.
    pub fn is_switching(&self) -> bool {
        self.switch.is_some()
    }

    /// Bytes queued for output and not yet written.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Drops all queued output (part of asynchat's `discard_buffers`).
    pub fn discard_output(&mut self) {
        self.out.clear();
        self.update_throttle();
    }

    /// Whether the channel is being closed because its output passed
    /// [`ChatOptions::output_limit`].
    pub fn is_overflowed(&self) -> bool {
        self.overflowed
    }

    fn update_throttle(&mut self) {
        let len = self.out.len();
        let limit = self.options.output_limit;
        if limit != 0 && len > limit && !self.overflowed {
            log::warn!("{len} bytes of output queued, above the cap of {limit}: closing");
            self.overflowed = true;
            self.out.clear();
            self.closing = true;
            return;
        }
        if len > self.options.output_high_water {
            self.throttled = true;
        } else if len <= self.options.output_low_water {
            self.throttled = false;
        }
    }
}

/// The protocol side of a [`Chat`]: what an `async_chat` subclass overrides.
///
/// Every method also gets the reactor's [`Ctx`], so a handler can set timers, spawn other
/// dispatchers (an outgoing relay) or notify them.
pub trait ChatHandler: 'static {
    /// Input up to (not including) the terminator, in as many pieces as it arrived. Never called
    /// with an empty slice.
    fn collect_incoming_data(&mut self, data: &[u8]);

    /// The terminator was seen (or a `Count` reached zero).
    fn found_terminator(&mut self, chat: &mut ChatCtl, ctx: &mut Ctx<'_>);

    /// Raw input, for a protocol that frames its own input (h11's `receive_data`): return
    /// `Some(n)` when the first `n` bytes of `data` were taken; the rest stays buffered in the
    /// chat and is offered again, together with newer input, after the next read or when a
    /// [`pause`](ChatCtl::pause) is lifted. While the handler takes raw input, the terminator,
    /// [`collect_incoming_data`](Self::collect_incoming_data) and
    /// [`found_terminator`](Self::found_terminator) are not used. The default, `None`, frames
    /// input on the terminator as asynchat does. Called only while the chat is neither paused
    /// nor closing, with a non-empty `data`.
    fn receive(&mut self, _data: &[u8], _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) -> Option<usize> {
        None
    }

    /// The channel was registered: push a greeting, arm timers.
    fn on_start(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {}

    /// A timer set through `ctx` fired.
    fn on_timer(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>, _timer: TimerId) {}

    /// A notification arrived (from another dispatcher or thread).
    fn on_notify(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>, _message: Box<dyn Any>) {}

    /// The peer shut down its sending side and every complete unit it sent has been framed.
    /// Whatever is left in the buffer is an incomplete unit (`pending` bytes of it). The default
    /// flushes queued output and closes, discarding the incomplete unit.
    fn on_peer_closed(&mut self, chat: &mut ChatCtl, _ctx: &mut Ctx<'_>, _pending: usize) {
        chat.close_when_done();
    }

    /// The channel is closing (any cause); the socket is closed right after.
    fn on_close(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {}

    /// An outgoing connection ([`ChatDispatcher::connect`]) is established (asyncore's
    /// `handle_connect`). Output pushed before it waits and is sent now.
    fn on_connect(&mut self, _chat: &mut ChatCtl, _ctx: &mut Ctx<'_>) {}

    /// An outgoing connection failed or was refused; the channel closes right after (asyncore's
    /// `handle_connect_event` raising). The default logs it.
    fn on_connect_failed(&mut self, _ctx: &mut Ctx<'_>, error: &io::Error) {
        log::warn!("connect failed: {error}");
    }
}

/// asynchat's `async_chat` minus the protocol: a transport, its unframed input and its output
/// queue.
pub struct Chat<T> {
    transport: T,
    /// Unframed input: a held-back partial terminator, or what was read while paused.
    input: Vec<u8>,
    ctl: ChatCtl,
    peer_closed: bool,
    peer_closed_reported: bool,
    /// [`Transport::shutdown_write`] was called.
    shut_down: bool,
    dead: bool,
}

impl<T> fmt::Debug for Chat<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chat")
            .field("transport", &type_name::<T>())
            .field("buffered_input", &self.input.len())
            .field("ctl", &self.ctl)
            .field("peer_closed", &self.peer_closed)
            .field("shut_down", &self.shut_down)
            .field("dead", &self.dead)
            .finish()
    }
}

impl<T: Transport> Chat<T> {
    /// A chat over `transport` with a `\r\n` terminator and default options.
    pub fn new(transport: T) -> Chat<T> {
        Chat::with_options(transport, ChatOptions::default())
    }

    /// A chat with explicit limits.
    pub fn with_options(transport: T, options: ChatOptions) -> Chat<T> {
        Chat {
            transport,
            input: Vec::new(),
            ctl: ChatCtl {
                framing: Framing::new(Terminator::bytes("\r\n")),
                out: OutBuf::default(),
                paused: false,
                closing: false,
                throttled: false,
                overflowed: false,
                switch: None,
                options,
            },
            peer_closed: false,
            peer_closed_reported: false,
            shut_down: false,
            dead: false,
        }
    }

    /// The controls also available to handlers (push, terminator, pause, close).
    pub fn ctl(&mut self) -> &mut ChatCtl {
        &mut self.ctl
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (to register it, or to change it in place; a handler asks for
    /// that with [`ChatCtl::switch_transport_when_flushed`]).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Bytes read but not yet framed.
    pub fn buffered_input(&self) -> usize {
        self.input.len()
    }

    /// Drops input read but not yet framed. RFC 3207: after `220 Ready to start TLS` nothing the
    /// client sent before the handshake may be acted on ([`ChatCtl::switch_transport_when_flushed`]
    /// does this itself).
    pub fn discard_input(&mut self) {
        self.input.clear();
    }

    /// asyncore's `readable()` for this chat.
    pub fn wants_read(&self) -> bool {
        !self.dead
            && !self.peer_closed
            && !self.ctl.paused
            && !self.ctl.closing
            && !self.ctl.throttled
            && self.ctl.switch.is_none()
    }

    /// asyncore's `writable()` for this chat: output is queued, or the transport holds output of
    /// its own ([`Transport::wants_write`]).
    pub fn wants_write(&self) -> bool {
        !self.dead && (!self.ctl.out.is_empty() || self.transport.wants_write())
    }

    /// Whether all output is out: the queue and the transport's own.
    fn is_flushed(&self) -> bool {
        self.ctl.out.is_empty() && !self.transport.wants_write()
    }

    /// `handle_read`: reads what the transport has (within the read budget) and frames it.
    pub fn handle_read<H: ChatHandler>(&mut self, handler: &mut H, ctx: &mut Ctx<'_>) {
        self.read_some(handler, ctx);
        self.settle(handler, ctx);
    }

    /// The read loop of [`handle_read`](Self::handle_read).
    fn read_some<H: ChatHandler>(&mut self, handler: &mut H, ctx: &mut Ctx<'_>) {
        let mut scratch = take_scratch();
        let mut budget = self.ctl.options.read_budget;
        while self.wants_read() && budget > 0 {
            let want = budget.min(scratch.len());
            let read = self.transport.read(&mut scratch[..want]);
            // What the read established (a TLS handshake) is known before its input is framed.
            self.deliver_notices(handler, ctx);
            match read {
                Ok(0) => self.peer_closed = true,
                Ok(n) => {
                    budget -= n;
                    self.ingest(&scratch[..n], handler, ctx);
                    if n < want
                        && self.input.is_empty()
                        && !self.ctl.out.is_empty()
                        && self.transport.short_read_drains()
                        && !self.transport.has_buffered_input()
                    {
                        // The socket is empty now, and more data raises a new edge event. When
                        // every unit read was complete and a reply is queued, the peer most
                        // likely waits for it (SMTP without pipelining), so the `recv` that
                        // would only confirm `WouldBlock` is skipped. Otherwise (bulk DATA,
                        // pipelined floods) more data is likely on its way and the extra `recv`
                        // is cheaper than another `epoll_wait`.
                        ctx.read_drained();
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ctx.read_would_block();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(ctx, e);
                    break;
                }
            }
        }
        put_scratch(scratch);
    }

    /// Hands the transport's notices ([`Transport::take_notice`]) to the handler.
    fn deliver_notices<H: ChatHandler>(&mut self, handler: &mut H, ctx: &mut Ctx<'_>) {
        while let Some(notice) = self.transport.take_notice() {
            handler.on_notify(&mut self.ctl, ctx, notice);
        }
    }

    /// `handle_write`: sends queued output, then the transport's own, until done or
    /// `WouldBlock`.
    pub fn handle_write(&mut self, ctx: &mut Ctx<'_>) {
        while !self.dead {
            let Some(front) = self.ctl.out.front() else {
                break;
            };
            match self.transport.write(front) {
                Ok(0) => {
                    self.fail(ctx, io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(n) => self.ctl.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ctx.write_would_block();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail(ctx, e);
                    break;
                }
            }
        }
        if !self.dead && self.ctl.out.is_empty() && self.transport.wants_write() {
            match self.transport.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ctx.write_would_block(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.fail(ctx, e),
            }
        }
        self.ctl.update_throttle();
        self.close_if_done(ctx);
    }

    /// Closes a `close_when_done` channel whose output is all out, after shutting the
    /// transport's sending side down (a TLS layer then has its close-notify to send).
    fn close_if_done(&mut self, ctx: &mut Ctx<'_>) {
        if self.dead || !self.ctl.closing || !self.ctl.out.is_empty() {
            return;
        }
        if !self.shut_down {
            self.shut_down = true;
            if let Err(e) = self.transport.shutdown_write() {
                log::debug!("{:?}: shutdown: {e}", ctx.handle());
            }
        }
        if !self.transport.wants_write() {
            ctx.close();
        }
    }

    /// Carries out a transport switch once all output before it is out.
    fn switch_if_flushed(&mut self, ctx: &mut Ctx<'_>) {
        if self.ctl.switch.is_none() || !self.is_flushed() {
            return;
        }
        let Some(switch) = self.ctl.switch.take() else {
            return;
        };
        if self.ctl.closing {
            return;
        }
        // RFC 3207: nothing received before the switch may be acted on.
        self.input.clear();
        if let Err(e) = switch.apply(&mut self.transport) {
            log::warn!("{:?}: transport switch failed: {e}", ctx.handle());
            self.fail(ctx, e);
        }
    }

    /// Brings the chat to rest after any hook: frames input left waiting by a pause that has
    /// been lifted, reports a peer half-close once everything complete is framed, and closes a
    /// channel whose `close_when_done` output is all sent. [`ChatDispatcher`] calls it after
    /// every hook; call it likewise when you embed a `Chat` in your own dispatcher.
    ///
    /// It also carries out a [transport switch](ChatCtl::switch_transport_when_flushed) whose
    /// output is out, and reads input the transport holds itself
    /// ([`Transport::has_buffered_input`]) when the reactor would not offer a read for it.
    pub fn settle<H: ChatHandler>(&mut self, handler: &mut H, ctx: &mut Ctx<'_>) {
        if self.dead {
            return;
        }
        self.deliver_notices(handler, ctx);
        self.switch_if_flushed(ctx);
        if self.dead {
            return;
        }
        if !self.ctl.paused
            && !self.ctl.closing
            && self.ctl.switch.is_none()
            && !self.input.is_empty()
        {
            let input = std::mem::take(&mut self.input);
            let used = self.frame(&input, handler, ctx);
            // Framing may have re-filled `input` only through this function, so it is empty.
            self.input = input;
            self.input.drain(..used);
        }
        if self.transport.has_buffered_input() && self.wants_read() && !ctx.is_readable() {
            // Input held by the transport raises no readiness event: read it now.
            self.read_some(handler, ctx);
            if self.dead {
                return;
            }
            self.switch_if_flushed(ctx);
        }
        if self.peer_closed
            && !self.peer_closed_reported
            && !self.ctl.paused
            && !self.ctl.closing
            && self.ctl.switch.is_none()
        {
            self.peer_closed_reported = true;
            handler.on_peer_closed(&mut self.ctl, ctx, self.input.len());
        }
        self.close_if_done(ctx);
    }

    /// Frames bytes that did not come from this chat's own socket read: input decrypted by a TLS
    /// layer, or test input. Exactly as if `data` had just been read.
    pub fn feed<H: ChatHandler>(&mut self, data: &[u8], handler: &mut H, ctx: &mut Ctx<'_>) {
        if !data.is_empty() {
            self.ingest(data, handler, ctx);
        }
        self.settle(handler, ctx);
    }

    fn fail(&mut self, ctx: &mut Ctx<'_>, error: io::Error) {
        log::debug!("{:?}: {error}; closing", ctx.handle());
        self.dead = true;
        self.ctl.out.clear();
        ctx.close();
    }

    /// Frames freshly read bytes: straight from the scratch buffer when nothing is left over,
    /// so the common case copies nothing; what cannot be framed yet is kept.
    fn ingest<H: ChatHandler>(&mut self, data: &[u8], handler: &mut H, ctx: &mut Ctx<'_>) {
        if self.input.is_empty() {
            let used = self.frame(data, handler, ctx);
            self.input.extend_from_slice(&data[used..]);
        } else {
            self.input.extend_from_slice(data);
            let input = std::mem::take(&mut self.input);
            let used = self.frame(&input, handler, ctx);
            self.input = input;
            self.input.drain(..used);
        }
    }

    /// asynchat's framing loop over `buf`; returns how many bytes were used.
    fn frame<H: ChatHandler>(&mut self, buf: &[u8], handler: &mut H, ctx: &mut Ctx<'_>) -> usize {
        if buf.is_empty() || self.ctl.paused || self.ctl.closing || self.ctl.switch.is_some() {
            return 0;
        }
        if let Some(used) = handler.receive(buf, &mut self.ctl, ctx) {
            return used.min(buf.len());
        }
        let mut used = 0;
        while used < buf.len() && !self.ctl.paused && !self.ctl.closing && self.ctl.switch.is_none()
        {
            let rest = &buf[used..];
            let step = self.ctl.framing.step(rest);
            if step.data > 0 {
                handler.collect_incoming_data(&rest[..step.data]);
            }
            used += step.consumed;
            if step.found {
                handler.found_terminator(&mut self.ctl, ctx);
            } else {
                break;
            }
        }
        used
    }
}

/// A [`Dispatcher`] made of a [`Chat`] and its [`ChatHandler`]: an `async_chat` subclass.
pub struct ChatDispatcher<T, H> {
    /// The channel.
    pub chat: Chat<T>,
    /// The protocol.
    pub handler: H,
    /// An outgoing connection is in progress ([`Transport::finish_connect`] tells when it is
    /// done).
    connecting: bool,
}

impl<T, H> fmt::Debug for ChatDispatcher<T, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatDispatcher")
            .field("chat", &self.chat)
            .field("handler", &type_name::<H>())
            .field("connecting", &self.connecting)
            .finish()
    }
}

impl<H: ChatHandler> ChatDispatcher<Socket, H> {
    /// Starts a non-blocking connection to `endpoint` (asyncore's `create_socket` +
    /// `connect`), a resolved TCP address or a unix-domain socket path: spawn the result; the
    /// handler's [`on_connect`](ChatHandler::on_connect) runs once it is established, or
    /// [`on_connect_failed`](ChatHandler::on_connect_failed) and a close if it fails. A TCP
    /// address must be resolved already: name lookups block. Established TCP connections get
    /// `TCP_NODELAY`, as accepted ones do.
    ///
    /// # Errors
    /// When no socket can be created, or a unix-domain connection is refused at once.
    pub fn connect(endpoint: impl Into<Endpoint>, handler: H) -> io::Result<Self> {
        Self::connect_with_options(endpoint, handler, ChatOptions::default())
    }

    /// [`connect`](Self::connect) with explicit [`ChatOptions`].
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub fn connect_with_options(
        endpoint: impl Into<Endpoint>,
        handler: H,
        options: ChatOptions,
    ) -> io::Result<Self> {
        let socket = Socket::connect(&endpoint.into())?;
        Ok(ChatDispatcher {
            chat: Chat::with_options(socket, options),
            handler,
            connecting: true,
        })
    }
}

impl<T: Transport, H: ChatHandler> ChatDispatcher<T, H> {
    /// Pairs a transport with a handler, with default [`ChatOptions`].
    pub fn new(transport: T, handler: H) -> Self {
        Self::with_options(transport, handler, ChatOptions::default())
    }

    /// Pairs a transport with a handler, with explicit options.
    pub fn with_options(transport: T, handler: H, options: ChatOptions) -> Self {
        ChatDispatcher {
            chat: Chat::with_options(transport, options),
            handler,
            connecting: false,
        }
    }

    /// Whether an outgoing connection is still being established.
    pub fn is_connecting(&self) -> bool {
        self.connecting
    }

    /// Completes a pending connect; returns whether the channel is connected.
    fn finish_connect(&mut self, ctx: &mut Ctx<'_>) -> bool {
        if !self.connecting {
            return true;
        }
        match self.chat.transport.finish_connect() {
            Ok(true) => {
                self.connecting = false;
                self.handler.on_connect(&mut self.chat.ctl, ctx);
                true
            }
            Ok(false) => {
                ctx.write_would_block();
                false
            }
            Err(e) => {
                self.connecting = false;
                self.handler.on_connect_failed(ctx, &e);
                self.chat.dead = true;
                ctx.close();
                false
            }
        }
    }
}

impl<T: Transport, H: ChatHandler> Dispatcher for ChatDispatcher<T, H> {
    fn source(&mut self) -> Option<&mut dyn Source> {
        Some(&mut self.chat.transport)
    }

    fn interest(&self) -> Interest {
        Interest::READABLE | Interest::WRITABLE
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.handler.on_start(&mut self.chat.ctl, ctx);
        self.chat.settle(&mut self.handler, ctx);
    }

    fn wants_read(&self) -> bool {
        !self.connecting && self.chat.wants_read()
    }

    fn wants_write(&self) -> bool {
        self.connecting || self.chat.wants_write()
    }

    fn on_readable(&mut self, ctx: &mut Ctx<'_>) {
        self.chat.handle_read(&mut self.handler, ctx);
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>) {
        if !self.finish_connect(ctx) {
            return;
        }
        self.chat.handle_write(ctx);
        self.chat.settle(&mut self.handler, ctx);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        self.handler.on_timer(&mut self.chat.ctl, ctx, timer);
        self.chat.settle(&mut self.handler, ctx);
    }

    fn on_notify(&mut self, ctx: &mut Ctx<'_>, message: Box<dyn Any>) {
        self.handler.on_notify(&mut self.chat.ctl, ctx, message);
        self.chat.settle(&mut self.handler, ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        self.handler.on_close(&mut self.chat.ctl, ctx);
    }
}
