//! The [`Dispatcher`] trait: asyncore's `dispatcher`, as a trait object in the reactor's slab.

use std::any::Any;
use std::io;

use mio::event::Source;
use mio::Interest;

use super::context::Ctx;
use super::timer::TimerId;

/// One channel object in the reactor: a socket (or another event source) plus what to do when it
/// is ready. The counterpart of `asyncore.dispatcher`.
///
/// | asyncore | here |
/// |---|---|
/// | `readable()` / `writable()` | [`wants_read`](Self::wants_read) / [`wants_write`](Self::wants_write) |
/// | `handle_read()` / `handle_write()` | [`on_readable`](Self::on_readable) / [`on_writable`](Self::on_writable) |
/// | `handle_close()` | [`on_close`](Self::on_close) (called once, whatever closed it) |
/// | `handle_error()` | [`on_error`](Self::on_error) |
///
/// # Readiness contract
/// The reactor registers the source once, edge-triggered, and keeps two cached readiness bits per
/// dispatcher. It calls `on_readable` while the read bit is set **and** `wants_read()` is true,
/// and `on_writable` likewise; the bits are cleared only when the dispatcher reports `WouldBlock`
/// with [`Ctx::read_would_block`] / [`Ctx::write_would_block`]. A dispatcher that returns from
/// `on_readable` without draining the socket (because it paused, or used up its budget) is simply
/// called again on a later tick — the data is never lost to the edge trigger. A dispatcher that
/// never reports `WouldBlock` although it made no progress would be called on every tick, so
/// report it whenever an I/O call returns `WouldBlock`. [`Chat`](crate::chat::Chat) does this for
/// you.
///
/// The bits describe the OS source only. A dispatcher whose source is wrapped in a layer that
/// holds input of its own (decrypted TLS records; see [`Transport`](crate::chat::Transport))
/// gets no event for that input: it must read it itself from whichever hook it is running when
/// it wants input and [`Ctx::is_readable`] is false ([`Chat::settle`](crate::chat::Chat::settle)
/// does), and report `WouldBlock` only when neither the layer nor the OS has anything left.
/// Output a layer holds is the dispatcher's to report through `wants_write()`.
///
/// After every hook the reactor re-evaluates `wants_read()` / `wants_write()` against the cached
/// bits, so a dispatcher that becomes willing to read or write in any hook (a deferred reply
/// completed by [`on_notify`](Self::on_notify) or [`on_timer`](Self::on_timer)) is served on the
/// next tick without waiting for a new event.
///
/// All hooks receive a [`Ctx`]; everything a hook asks of the world (spawn, close, notify, stop)
/// is queued and applied after the hook returns, so hooks never nest.
pub trait Dispatcher: Any {
    /// The event source to register (a socket, a pipe, ...), or `None` for a dispatcher that only
    /// lives on timers and notifications. Called when the dispatcher is added and when it is
    /// removed; it must return the same source both times.
    fn source(&mut self) -> Option<&mut dyn Source>;

    /// The interest to register with; by default both directions (edge-triggered registration
    /// costs nothing while idle). A listener or the read end of a pipe may ask for less.
    fn interest(&self) -> Interest {
        Interest::READABLE | Interest::WRITABLE
    }

    /// Called once, after the dispatcher was registered and before any other hook: the place for
    /// a greeting (asyncore did such work in the constructor).
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {}

    /// asyncore's `readable()`: whether the dispatcher wants `on_readable` when data is there.
    fn wants_read(&self) -> bool {
        true
    }

    /// asyncore's `writable()`: whether the dispatcher has something to write.
    fn wants_write(&self) -> bool {
        false
    }

    /// The source is readable (or hung up, or in error: the read reports which).
    fn on_readable(&mut self, _ctx: &mut Ctx<'_>) {}

    /// The source is writable (or in error).
    fn on_writable(&mut self, _ctx: &mut Ctx<'_>) {}

    /// A timer set with [`Ctx::set_timer`] fired.
    fn on_timer(&mut self, _ctx: &mut Ctx<'_>, _timer: TimerId) {}

    /// A message from another dispatcher ([`Ctx::notify`]), the host
    /// ([`Reactor::notify`](super::Reactor::notify)) or another thread
    /// ([`RemoteHandle::notify`](super::RemoteHandle::notify)).
    fn on_notify(&mut self, _ctx: &mut Ctx<'_>, _message: Box<dyn Any>) {}

    /// The dispatcher is being removed (asyncore's `handle_close`, minus the close itself, which
    /// the reactor does right after: the source is deregistered and the dispatcher dropped).
    /// Called exactly once, whoever asked for the close.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>) {}

    /// An I/O error the dispatcher chose to report with [`Ctx::error`], or a failed registration.
    /// The default logs it and closes the dispatcher (asyncore's `handle_error`, which closes only
    /// the failing channel).
    fn on_error(&mut self, ctx: &mut Ctx<'_>, error: io::Error) {
        log::warn!("{:?}: closing after error: {error}", ctx.handle());
        ctx.close();
    }
}
