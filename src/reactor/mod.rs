//! The reactor: asyncore's `loop()` and socket map, on `mio`.
//!
//! A [`Reactor`] owns a [`mio::Poll`], a [`Slab`] of [`Dispatcher`]s addressed by
//! generation-checked [`Handle`]s, a timer heap and one [`mio::Waker`]. One call to
//! [`Reactor::poll_once`] is one turn of the loop:
//!
//! 1. wait for readiness, at most the caller's timeout, clamped to the next timer and to zero when
//!    work is already known to be pending ([`Reactor::next_timeout`]);
//! 2. record readiness in per-dispatcher cached bits and queue those dispatchers;
//! 3. fire due timers, deliver notifications (local, and from other threads via the waker);
//! 4. serve the run-queue: `on_readable` if the read bit is set and `wants_read()`, then
//!    `on_writable` likewise. A dispatcher still runnable afterwards is queued for the next tick.
//!
//! After every hook the commands it queued on its [`Ctx`] (spawn, close, error) are applied, so
//! hooks never nest.
//!
//! # Ownership
//! The reactor is deliberately `!Send`: like asyncore it runs on one thread, and dispatchers need
//! not be `Send`. To run it on a background thread, build it *on* that thread from a `Send`
//! closure and send back the [`StopHandle`] / [`RemoteHandle`] (both `Send + Sync`). A value
//! shared by many dispatchers (one SMTP server object for all its channels) lives in an
//! `Rc<RefCell<..>>`; the borrow is always sound because hooks never nest and dispatchers are
//! never called re-entrantly.
//!
//! # Panics in dispatchers
//! Every hook runs under `catch_unwind`. A dispatcher that panics is logged and dropped at once
//! (its source closes with it); the loop and every other dispatcher go on.

mod context;
mod dispatcher;
mod file;
mod listener;
mod remote;
mod timer;
mod token;

pub use context::Ctx;
pub use dispatcher::Dispatcher;
pub(crate) use file::Halves;
pub use file::{listen_fds, Duplex, FileStream};
pub use listener::{bind_tcp, Acceptor, AcceptorOptions, LISTEN_BACKLOG};
pub use remote::{RemoteHandle, StopHandle};
pub use timer::TimerId;
pub use token::Handle;

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Waker};
use slab::Slab;

use remote::{RemoteMessage, Shared};
use timer::Timers;
use token::WAKER_TOKEN;

/// Default size of the events buffer: how many readiness events one tick takes from the OS.
pub const DEFAULT_EVENTS_CAPACITY: usize = 1024;

/// The per-iteration wait of [`Reactor::run_count`], as asyncore's `loop(timeout=30.0)`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Slot {
    generation: u32,
    /// `None` only while one of its hooks runs.
    dispatcher: Option<Box<dyn Dispatcher>>,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// The OS reported the peer's end of stream (or an error): sticky, see [`Ctx::read_drained`].
    pub(crate) read_closed: bool,
    queued: bool,
    closing: bool,
}

pub(crate) enum Command {
    Start(Handle),
    Close(Handle),
    Error(Handle, io::Error),
}

/// Everything but the `Poll` itself, so that a hook's [`Ctx`] can borrow it while the reactor
/// still holds the events buffer.
pub(crate) struct Core {
    pub(crate) slots: Slab<Slot>,
    next_generation: u32,
    pub(crate) timers: Timers,
    pub(crate) commands: VecDeque<Command>,
    pub(crate) notifications: VecDeque<(Handle, Box<dyn Any>)>,
    run_queue: VecDeque<Handle>,
    pub(crate) stop: bool,
    pub(crate) now: Instant,
    registry: Registry,
    pub(crate) shared: Arc<Shared>,
}

impl Core {
    pub(crate) fn slot(&self, h: Handle) -> Option<&Slot> {
        self.slots
            .get(h.slot())
            .filter(|s| s.generation == h.generation)
    }

    pub(crate) fn slot_mut(&mut self, h: Handle) -> Option<&mut Slot> {
        self.slots
            .get_mut(h.slot())
            .filter(|s| s.generation == h.generation)
    }

    pub(crate) fn insert(&mut self, dispatcher: Box<dyn Dispatcher>) -> Handle {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let index = self.slots.insert(Slot {
            generation,
            dispatcher: Some(dispatcher),
            readable: false,
            writable: false,
            read_closed: false,
            queued: false,
            closing: false,
        });
        Handle::new(index, generation)
    }

    /// Runs one hook of one dispatcher. Returns `None` if the handle is stale, the dispatcher is
    /// closing (unless `closing_ok`), or the hook panicked (the dispatcher is then dropped).
    fn invoke<R>(
        &mut self,
        h: Handle,
        closing_ok: bool,
        f: impl FnOnce(&mut dyn Dispatcher, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let slot = self.slot_mut(h)?;
        if slot.closing && !closing_ok {
            return None;
        }
        let mut dispatcher = slot.dispatcher.take()?;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut ctx = Ctx {
                core: &mut *self,
                handle: h,
            };
            f(&mut *dispatcher, &mut ctx)
        }));
        match result {
            Ok(r) => {
                if let Some(slot) = self.slot_mut(h) {
                    slot.dispatcher = Some(dispatcher);
                }
                Some(r)
            }
            Err(_) => {
                log::error!("{h:?}: a dispatcher hook panicked; the dispatcher is dropped");
                self.deregister(&mut *dispatcher);
                self.slots.remove(h.slot());
                None
            }
        }
    }

    fn deregister(&self, dispatcher: &mut dyn Dispatcher) {
        if let Some(source) = dispatcher.source() {
            if let Err(e) = self.registry.deregister(source) {
                log::debug!("deregister: {e}");
            }
        }
    }

    /// Queues `h` for the next run-queue pass if it has cached readiness it wants to use.
    fn schedule(&mut self, h: Handle) {
        let Some(slot) = self.slot_mut(h) else { return };
        if slot.queued || slot.closing {
            return;
        }
        let Some(d) = slot.dispatcher.as_ref() else {
            return;
        };
        if (slot.readable && d.wants_read()) || (slot.writable && d.wants_write()) {
            slot.queued = true;
            self.run_queue.push_back(h);
        }
    }

    /// Runs one hook, then schedules the dispatcher and applies the commands queued meanwhile.
    fn call(&mut self, h: Handle, f: impl FnOnce(&mut dyn Dispatcher, &mut Ctx<'_>)) {
        self.invoke(h, false, f);
        self.schedule(h);
        self.apply_commands();
    }

    fn apply_commands(&mut self) {
        while let Some(command) = self.commands.pop_front() {
            match command {
                Command::Start(h) => self.start(h),
                Command::Close(h) => self.close(h),
                Command::Error(h, e) => {
                    self.invoke(h, false, |d, ctx| d.on_error(ctx, e));
                    self.schedule(h);
                }
            }
        }
    }

    fn register(&mut self, h: Handle) -> io::Result<()> {
        let slot = self.slots.get_mut(h.slot());
        let Some(slot) = slot.filter(|s| s.generation == h.generation) else {
            return Ok(());
        };
        let Some(dispatcher) = slot.dispatcher.as_mut() else {
            return Ok(());
        };
        let interest = dispatcher.interest();
        match dispatcher.source() {
            Some(source) => self.registry.register(source, h.token(), interest),
            None => Ok(()),
        }
    }

    fn start(&mut self, h: Handle) {
        if let Err(e) = self.register(h) {
            self.invoke(h, false, |d, ctx| d.on_error(ctx, e));
        } else {
            self.invoke(h, false, |d, ctx| d.on_start(ctx));
        }
        self.schedule(h);
    }

    fn close(&mut self, h: Handle) {
        match self.slot_mut(h) {
            Some(slot) if !slot.closing => slot.closing = true,
            _ => return,
        }
        self.invoke(h, true, |d, ctx| d.on_close(ctx));
        if self.slot(h).is_none() {
            return; // on_close panicked and the slot is gone already
        }
        let mut slot = self.slots.remove(h.slot());
        if let Some(dispatcher) = slot.dispatcher.as_mut() {
            self.deregister(&mut **dispatcher);
        }
    }

    fn has_pending_work(&self) -> bool {
        !self.run_queue.is_empty() || !self.notifications.is_empty() || !self.commands.is_empty()
    }
}

/// asyncore's loop and socket map in one value. See the [module docs](self).
pub struct Reactor {
    poll: Poll,
    events: Events,
    events_capacity: usize,
    events_full: bool,
    core: Core,
    due: Vec<(Handle, TimerId)>,
    remote_inbox: Vec<RemoteMessage>,
}

impl Reactor {
    /// A reactor with the default events capacity.
    ///
    /// # Errors
    /// When the OS refuses a new epoll instance or eventfd (descriptor limits).
    pub fn new() -> io::Result<Reactor> {
        Reactor::with_capacity(DEFAULT_EVENTS_CAPACITY)
    }

    /// A reactor that takes at most `events` readiness events per tick (more are taken on the
    /// next tick, which then does not wait).
    ///
    /// # Errors
    /// As [`Reactor::new`].
    pub fn with_capacity(events: usize) -> io::Result<Reactor> {
        let events = events.max(1);
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        let registry = poll.registry().try_clone()?;
        Ok(Reactor {
            poll,
            events: Events::with_capacity(events),
            events_capacity: events,
            events_full: false,
            core: Core {
                slots: Slab::new(),
                next_generation: 0,
                timers: Timers::default(),
                commands: VecDeque::new(),
                notifications: VecDeque::new(),
                run_queue: VecDeque::new(),
                stop: false,
                now: Instant::now(),
                registry,
                shared: Arc::new(Shared {
                    waker,
                    stop: Default::default(),
                    queue: Mutex::new(Vec::new()),
                }),
            },
            due: Vec::new(),
            remote_inbox: Vec::new(),
        })
    }

    /// Adds a dispatcher: registers its source and runs its [`on_start`](Dispatcher::on_start).
    ///
    /// # Errors
    /// When the source cannot be registered; the dispatcher is dropped then.
    pub fn add<D: Dispatcher>(&mut self, dispatcher: D) -> io::Result<Handle> {
        self.add_boxed(Box::new(dispatcher))
    }

    /// [`add`](Self::add) for an already boxed dispatcher.
    ///
    /// # Errors
    /// As [`add`](Self::add).
    pub fn add_boxed(&mut self, dispatcher: Box<dyn Dispatcher>) -> io::Result<Handle> {
        self.core.now = Instant::now();
        let h = self.core.insert(dispatcher);
        if let Err(e) = self.core.register(h) {
            self.core.slots.remove(h.slot());
            return Err(e);
        }
        self.core.call(h, |d, ctx| d.on_start(ctx));
        Ok(h)
    }

    /// Runs a closure on one dispatcher, with a [`Ctx`], from the host program (between ticks).
    /// Returns `None` if the handle is stale or the dispatcher is not a `D`.
    pub fn with_dispatcher<D: Dispatcher, R>(
        &mut self,
        h: Handle,
        f: impl FnOnce(&mut D, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        self.core.now = Instant::now();
        let result = self.core.invoke(h, false, |d, ctx| {
            let any: &mut dyn Any = d;
            any.downcast_mut::<D>().map(|d| f(d, ctx))
        });
        self.core.schedule(h);
        self.core.apply_commands();
        result.flatten()
    }

    /// Queues a notification for dispatcher `h`, delivered on the next tick.
    pub fn notify<M: Any>(&mut self, h: Handle, message: M) {
        self.core.notifications.push_back((h, Box::new(message)));
    }

    /// Closes dispatcher `h` now (its `on_close` runs). A stale handle is ignored.
    pub fn close(&mut self, h: Handle) {
        self.core.commands.push_back(Command::Close(h));
        self.core.apply_commands();
    }

    /// Whether `h` still names a live dispatcher.
    pub fn contains(&self, h: Handle) -> bool {
        self.core.slot(h).is_some()
    }

    /// Number of dispatchers (asyncore's `len(socket_map)`).
    pub fn len(&self) -> usize {
        self.core.slots.len()
    }

    /// Whether no dispatcher is left (`run()` returns then).
    pub fn is_empty(&self) -> bool {
        self.core.slots.is_empty()
    }

    /// A `Send + Sync` handle that makes `run()` return, usable from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: self.core.shared.clone(),
        }
    }

    /// A `Send + Sync` handle through which other threads notify dispatchers.
    pub fn remote(&self) -> RemoteHandle {
        RemoteHandle {
            shared: self.core.shared.clone(),
        }
    }

    /// Whether a `poll_once(Some(Duration::ZERO))` would make progress without any new OS event:
    /// dispatchers with cached readiness they want to use, notifications or commands waiting,
    /// a full events buffer last tick, or a timer due. Such work does **not** make the reactor's
    /// file descriptor readable, so a host that nests the reactor in its own poller must check
    /// this (or [`next_timeout`](Self::next_timeout)) before it waits.
    pub fn has_pending_work(&self) -> bool {
        self.core.has_pending_work()
            || self.events_full
            || self
                .core
                .timers
                .peek_deadline()
                .is_some_and(|d| d <= Instant::now())
    }

    /// How long the host may wait before the next [`poll_once`](Self::poll_once): `Some(ZERO)`
    /// when [`has_pending_work`](Self::has_pending_work), the time to the next timer, or `None`
    /// (wait for I/O as long as you like). It may err early, never late.
    pub fn next_timeout(&self) -> Option<Duration> {
        if self.core.has_pending_work() || self.events_full {
            return Some(Duration::ZERO);
        }
        self.core
            .timers
            .peek_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// One turn of the loop: waits at most `timeout` (`None`: until something happens), clamped
    /// to [`next_timeout`](Self::next_timeout), then runs every hook that is due. Returns the
    /// number of hooks run (0 for a tick in which nothing happened, including one interrupted
    /// by a signal: `EINTR` is an empty tick, not an error).
    ///
    /// # Errors
    /// Only errors of the OS poller itself; errors of one dispatcher go to its `on_error`.
    pub fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.core.timers.prune();
        let wait = match (timeout, self.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.events.clear();
            }
            Err(e) => return Err(e),
        }
        let core = &mut self.core;
        core.now = Instant::now();
        let mut hooks = 0;
        let mut count = 0;
        let mut woken = false;
        for event in self.events.iter() {
            count += 1;
            let Some(h) = Handle::from_token(event.token()) else {
                woken = true;
                continue;
            };
            let Some(slot) = core.slot_mut(h) else {
                continue; // stale: the dispatcher closed, maybe its slot was reused
            };
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                slot.readable = true;
            }
            if event.is_read_closed() || event.is_error() {
                slot.read_closed = true;
            }
            if event.is_writable() || event.is_write_closed() || event.is_error() {
                slot.writable = true;
            }
            core.schedule(h);
        }
        self.events_full = count >= self.events_capacity;

        if woken {
            core.shared.drain(&mut self.remote_inbox);
            for (h, message) in self.remote_inbox.drain(..) {
                core.notifications.push_back((h, message as Box<dyn Any>));
            }
        }

        core.timers.take_due(core.now, &mut self.due);
        for (h, id) in self.due.drain(..) {
            hooks += 1;
            core.call(h, |d, ctx| d.on_timer(ctx, id));
        }

        // Only what is queued now: notifications sent during this pass wait for the next tick.
        let pending = core.notifications.len();
        for _ in 0..pending {
            let Some((h, message)) = core.notifications.pop_front() else {
                break;
            };
            hooks += 1;
            core.call(h, |d, ctx| d.on_notify(ctx, message));
        }

        let runnable = core.run_queue.len();
        for _ in 0..runnable {
            let Some(h) = core.run_queue.pop_front() else {
                break;
            };
            let Some(slot) = core.slot_mut(h) else {
                continue;
            };
            slot.queued = false;
            let read = slot.readable;
            if read && slot.dispatcher.as_ref().is_some_and(|d| d.wants_read()) {
                hooks += 1;
                core.invoke(h, false, |d, ctx| d.on_readable(ctx));
                core.apply_commands();
            }
            let Some(slot) = core.slot_mut(h) else {
                continue;
            };
            if slot.writable && slot.dispatcher.as_ref().is_some_and(|d| d.wants_write()) {
                hooks += 1;
                core.invoke(h, false, |d, ctx| d.on_writable(ctx));
                core.apply_commands();
            }
            core.schedule(h);
        }
        if self.core.shared.stop.swap(false, Ordering::SeqCst) {
            self.core.stop = true;
        }
        Ok(hooks)
    }

    /// asyncore's `loop()`: runs ticks until no dispatcher is left or a stop is asked for
    /// ([`StopHandle::stop`], [`Ctx::stop`]).
    ///
    /// # Errors
    /// As [`poll_once`](Self::poll_once).
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            if self.is_empty() || self.take_stop() {
                return Ok(());
            }
            self.poll_once(None)?;
        }
    }

    /// asyncore's `loop(count=n)`: at most `n` ticks of at most [`DEFAULT_TIMEOUT`] each; returns
    /// earlier if no dispatcher is left or a stop is asked for.
    ///
    /// # Errors
    /// As [`poll_once`](Self::poll_once).
    pub fn run_count(&mut self, n: usize) -> io::Result<()> {
        for _ in 0..n {
            if self.is_empty() || self.take_stop() {
                return Ok(());
            }
            self.poll_once(Some(DEFAULT_TIMEOUT))?;
        }
        Ok(())
    }

    /// Runs ticks until `done(self)` holds, `deadline` passes or a stop is asked for; returns
    /// whether `done` held. A bounded loop for tests and host programs.
    ///
    /// # Errors
    /// As [`poll_once`](Self::poll_once).
    pub fn run_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&mut Reactor) -> bool,
    ) -> io::Result<bool> {
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline || self.take_stop() {
                return Ok(false);
            }
            self.poll_once(Some(deadline - now))?;
        }
    }

    fn take_stop(&mut self) -> bool {
        let remote = self.core.shared.stop.swap(false, Ordering::SeqCst);
        std::mem::take(&mut self.core.stop) || remote
    }

    /// asyncore's `close_all()`: closes every dispatcher (each `on_close` runs) and forgets
    /// queued notifications.
    pub fn close_all(&mut self) {
        let handles: Vec<Handle> = self
            .core
            .slots
            .iter()
            .map(|(i, s)| Handle::new(i, s.generation))
            .collect();
        for h in handles {
            self.core.commands.push_back(Command::Close(h));
        }
        self.core.apply_commands();
        self.core.notifications.clear();
        self.core.run_queue.clear();
    }
}

impl AsRawFd for Reactor {
    /// The epoll descriptor: readable whenever any registered source has an event. Nest the
    /// reactor in another poller by waiting on it — but see [`Reactor::has_pending_work`].
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}

impl AsFd for Reactor {
    /// The epoll descriptor, borrowed (the same one as [`as_raw_fd`](AsRawFd::as_raw_fd)):
    /// register it with a foreign poller (`nix::sys::epoll`, `polling`, a GUI toolkit's main
    /// loop) and call [`Reactor::poll_once`] with a zero timeout when it is readable — but see
    /// [`Reactor::has_pending_work`]. The reactor keeps owning it.
    ///
    /// ```
    /// use std::os::fd::{AsFd, AsRawFd};
    /// let reactor = smtpd::reactor::Reactor::new()?;
    /// assert_eq!(reactor.as_fd().as_raw_fd(), reactor.as_raw_fd());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    fn as_fd(&self) -> BorrowedFd<'_> {
        // mio's `Registry` shares the `Poll`'s selector descriptor.
        self.poll.registry().as_fd()
    }
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("dispatchers", &self.core.slots.len())
            .field("run_queue", &self.core.run_queue.len())
            .finish()
    }
}
