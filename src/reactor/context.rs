//! [`Ctx`]: what a hook may ask of the reactor.

use std::any::Any;
use std::io;
use std::time::{Duration, Instant};

use super::remote::{RemoteHandle, StopHandle};
use super::timer::TimerId;
use super::token::Handle;
use super::{Command, Core, Dispatcher};

/// The handle every [`Dispatcher`] hook receives: the only way a dispatcher affects anything
/// outside itself.
///
/// Requests that would run another hook — [`spawn`](Self::spawn), [`close`](Self::close),
/// [`notify`](Self::notify), [`error`](Self::error) — are **queued** and carried out after the
/// current hook returns, in order. Hooks therefore never nest: while one runs, no other
/// dispatcher's code can run, so state shared between dispatchers through `Rc<RefCell<..>>` is
/// never borrowed twice. Timers are plain bookkeeping and take effect at once.
pub struct Ctx<'a> {
    pub(crate) core: &'a mut Core,
    pub(crate) handle: Handle,
}

impl Ctx<'_> {
    /// The handle of the dispatcher whose hook is running.
    pub fn handle(&self) -> Handle {
        self.handle
    }

    /// The time at which the current tick started (cheaper than `Instant::now()`, and the same
    /// for every hook in the tick).
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// Adds a dispatcher to the reactor. Its source is registered and its
    /// [`on_start`](Dispatcher::on_start) runs after the current hook returns; the handle is valid
    /// at once (for a notification, say).
    pub fn spawn<D: Dispatcher>(&mut self, dispatcher: D) -> Handle {
        self.spawn_boxed(Box::new(dispatcher))
    }

    /// [`spawn`](Self::spawn) for an already boxed dispatcher.
    pub fn spawn_boxed(&mut self, dispatcher: Box<dyn Dispatcher>) -> Handle {
        let handle = self.core.insert(dispatcher);
        self.core.commands.push_back(Command::Start(handle));
        handle
    }

    /// Closes the running dispatcher once this hook returns: its [`on_close`](Dispatcher::on_close)
    /// runs, its source is deregistered and it is dropped. Closing twice is harmless.
    pub fn close(&mut self) {
        let handle = self.handle;
        self.close_other(handle);
    }

    /// Closes another dispatcher (or this one) after the current hook returns. A stale handle
    /// is ignored.
    pub fn close_other(&mut self, handle: Handle) {
        self.core.commands.push_back(Command::Close(handle));
    }

    /// Reports an I/O error on the running dispatcher: its [`on_error`](Dispatcher::on_error)
    /// runs after this hook returns (by default it logs and closes).
    pub fn error(&mut self, error: io::Error) {
        let handle = self.handle;
        self.core.commands.push_back(Command::Error(handle, error));
    }

    /// Sends `message` to the dispatcher `to` (possibly this one); it is delivered to its
    /// [`on_notify`](Dispatcher::on_notify) on the next tick. Dropped if `to` has closed by then.
    pub fn notify<M: Any>(&mut self, to: Handle, message: M) {
        self.core.notifications.push_back((to, Box::new(message)));
    }

    /// Makes [`Reactor::run`](super::Reactor::run) return after this tick (asyncore's `ExitNow`).
    pub fn stop(&mut self) {
        self.core.stop = true;
    }

    /// Arms a one-shot timer for the running dispatcher, due `after` from the start of this tick.
    pub fn set_timer(&mut self, after: Duration) -> TimerId {
        let at = self.core.now + after;
        self.set_timer_at(at)
    }

    /// Arms a one-shot timer due at `deadline`.
    pub fn set_timer_at(&mut self, deadline: Instant) -> TimerId {
        self.core.timers.insert(self.handle, deadline)
    }

    /// Moves a pending timer to `after` from now. Pushing a deadline back is a field write, not a
    /// heap operation, so it is fine to do on every command. Returns false if the timer already
    /// fired or was cancelled.
    pub fn reset_timer(&mut self, timer: TimerId, after: Duration) -> bool {
        let at = self.core.now + after;
        self.core.timers.reset(timer, at)
    }

    /// Cancels a pending timer. Returns false if it already fired or was cancelled.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.core.timers.cancel(timer)
    }

    /// When a pending timer is due, or `None` if it fired or was cancelled.
    pub fn timer_deadline(&self, timer: TimerId) -> Option<Instant> {
        self.core.timers.deadline(timer)
    }

    /// Tells the reactor that a read on the running dispatcher's source returned `WouldBlock`:
    /// it stops offering `on_readable` until the next readiness event.
    pub fn read_would_block(&mut self) {
        if let Some(slot) = self.core.slot_mut(self.handle) {
            slot.readable = false;
        }
    }

    /// Tells the reactor that a read returned less than asked for, so the socket is drained
    /// and, with edge-triggered readiness, new data will raise a new event: it stops offering
    /// `on_readable` as [`read_would_block`](Self::read_would_block) does, saving the read that
    /// would only return `WouldBlock` — unless the OS already reported end of stream, which
    /// raises no further event and is still to be read.
    pub fn read_drained(&mut self) {
        if let Some(slot) = self.core.slot_mut(self.handle) {
            slot.readable = slot.read_closed;
        }
    }

    /// Tells the reactor that a write returned `WouldBlock`: it stops offering `on_writable`
    /// until the next readiness event.
    pub fn write_would_block(&mut self) {
        if let Some(slot) = self.core.slot_mut(self.handle) {
            slot.writable = false;
        }
    }

    /// Whether the reactor believes the running dispatcher's source is readable.
    pub fn is_readable(&self) -> bool {
        self.core.slot(self.handle).is_some_and(|s| s.readable)
    }

    /// Whether the reactor believes the running dispatcher's source is writable.
    pub fn is_writable(&self) -> bool {
        self.core.slot(self.handle).is_some_and(|s| s.writable)
    }

    /// A `Send` handle through which other threads can notify dispatchers of this reactor.
    pub fn remote(&self) -> RemoteHandle {
        RemoteHandle {
            shared: self.core.shared.clone(),
        }
    }

    /// A `Send` handle that stops this reactor's `run()`.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: self.core.shared.clone(),
        }
    }

    /// Number of dispatchers in the reactor (asyncore's `len(socket_map)`).
    pub fn dispatcher_count(&self) -> usize {
        self.core.slots.len()
    }
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("handle", &self.handle).finish()
    }
}
