//! Cross-thread access to a reactor: the [`StopHandle`] and the [`RemoteHandle`].
//!
//! Both share one [`mio::Waker`]: a thread that wants the loop's attention pushes its request
//! into a mutex-protected queue (or sets the stop flag) and wakes the poll. The reactor drains the
//! queue on its own thread, so dispatchers only ever run there.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mio::Waker;

use super::token::Handle;

/// A message sent from another thread, waiting for the reactor to deliver it.
pub(crate) type RemoteMessage = (Handle, Box<dyn Any + Send>);

pub(crate) struct Shared {
    pub(crate) waker: Waker,
    pub(crate) stop: AtomicBool,
    pub(crate) queue: Mutex<Vec<RemoteMessage>>,
}

impl Shared {
    fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::error!("cannot wake the reactor: {e}");
        }
    }

    /// Takes every queued remote message (called on the reactor's thread).
    pub(crate) fn drain(&self, into: &mut Vec<RemoteMessage>) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        into.append(&mut queue);
    }
}

/// Stops [`Reactor::run`](super::Reactor::run) from any thread or signal-handling thread: the
/// counterpart of raising `asyncore.ExitNow`. `Send + Sync + Clone`.
///
/// A stop makes the current (or next) `run()` / `run_count()` return after the tick in which it
/// is seen; the reactor and its dispatchers stay intact and can be run again.
#[derive(Clone)]
pub struct StopHandle {
    pub(crate) shared: Arc<Shared>,
}

impl StopHandle {
    /// Asks the reactor to return from `run()`; wakes it if it is waiting.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopHandle")
    }
}

/// Hands work back to the reactor's thread from any other thread: `Send + Sync + Clone`.
///
/// The typical use is a deferred reply computed on a worker thread: the worker calls
/// [`notify`](Self::notify) with the waiting channel's [`Handle`] and the result, and the reactor
/// delivers it to that dispatcher's [`on_notify`](super::Dispatcher::on_notify) on its own
/// thread. Messages for a dispatcher that has closed meanwhile are dropped.
#[derive(Clone)]
pub struct RemoteHandle {
    pub(crate) shared: Arc<Shared>,
}

impl RemoteHandle {
    /// Queues `message` for the dispatcher `to` and wakes the reactor.
    pub fn notify<M: Any + Send>(&self, to: Handle, message: M) {
        let was_empty = {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.push((to, Box::new(message)));
            queue.len() == 1
        };
        // A non-empty queue has already woken the reactor, which has not drained it yet.
        if was_empty {
            self.shared.wake();
        }
    }

    /// A stop handle for the same reactor.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: self.shared.clone(),
        }
    }
}

impl std::fmt::Debug for RemoteHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteHandle")
    }
}
