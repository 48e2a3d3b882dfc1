//! [`spawn`]: an SMTP server on a background thread of its own, aiosmtpd's `Controller`.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{Backend, Listener, ServerOptions, Shutdown};
use crate::reactor::{Handle, Reactor, RemoteHandle, StopHandle};

/// How long [`ServerHandle::shutdown`] waits, after the grace, for the last `421` replies to go
/// out before it stops the loop outright.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

/// Starts an SMTP server on a thread of its own and returns once it listens: aiosmtpd's
/// `Controller(handler, hostname, port).start()`, or go-smtp's `go s.ListenAndServe()`.
///
/// The thread builds the reactor and calls `factory` to make the [`Backend`] (the reactor and
/// the servers in it are `!Send`, so only the factory crosses threads), binds `addr` (port 0
/// picks a free one: ask [`ServerHandle::local_addr`]) with `options`, and runs the loop until
/// the server is shut down. For a CPython-shaped [`SmtpServer`](super::SmtpServer) `S`, the
/// factory returns `Rc::new(RefCell::new(S))`.
///
/// ```no_run
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use std::time::Duration;
/// use smtpd::server::{self, Message, Outcome, ServerCtx, ServerOptions, SmtpServer};
///
/// struct Printer;
///
/// impl SmtpServer for Printer {
///     fn process_message(&mut self, m: &Message, _cx: &mut ServerCtx<'_, '_>) -> Outcome {
///         println!("{} -> {:?}: {} bytes", m.mail_from, m.rcpt_tos, m.data.len());
///         Outcome::Accept
///     }
/// }
///
/// let addr = "127.0.0.1:8025".parse().unwrap();
/// let server = server::spawn(addr, ServerOptions::default(), || Rc::new(RefCell::new(Printer)))?;
/// println!("listening on {}", server.local_addr());
/// // ... the program does its own work meanwhile ...
/// server.shutdown(Duration::from_secs(30))?; // transactions in flight may finish
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
/// What [`Listener::bind`] refuses (the address is in use or not local, the options are
/// inconsistent), an error creating the reactor or the thread, or a panic of `factory`: all
/// reported here, before any connection is served.
pub fn spawn<B, F>(addr: SocketAddr, options: ServerOptions, factory: F) -> io::Result<ServerHandle>
where
    B: Backend,
    F: FnOnce() -> B + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<Ready>>();
    // Never sent on: dropped when the thread ends, however it ends, which wakes a waiting
    // `shutdown`.
    let (finished_tx, finished_rx) = mpsc::channel::<()>();
    let thread = thread::Builder::new()
        .name(format!("smtpd-server-{addr}"))
        .spawn(move || {
            let _finished = finished_tx;
            let (mut reactor, listener) = match start(addr, options, factory) {
                Ok(started) => started,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(Ready {
                addr: listener.local_addr(),
                listener: listener.handle(),
                stop: reactor.stop_handle(),
                remote: reactor.remote(),
            }));
            drop(ready_tx);
            let result = serve(&mut reactor, &listener);
            if let Err(e) = &result {
                log::error!("smtpd server on {}: {e}", listener.local_addr());
            }
            reactor.close_all();
            result
        })?;
    match ready_rx.recv() {
        Ok(Ok(ready)) => Ok(ServerHandle {
            addr: ready.addr,
            listener: ready.listener,
            stop: ready.stop,
            remote: ready.remote,
            finished: finished_rx,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other("the server thread died while starting"))
        }
    }
}

/// What the server thread hands back once it listens.
struct Ready {
    addr: SocketAddr,
    listener: Handle,
    stop: StopHandle,
    remote: RemoteHandle,
}

/// Builds the reactor, the backend and the listener, on the server thread.
fn start<B, F>(
    addr: SocketAddr,
    options: ServerOptions,
    factory: F,
) -> io::Result<(Reactor, Listener)>
where
    B: Backend,
    F: FnOnce() -> B,
{
    let mut reactor = Reactor::new()?;
    let backend = catch_unwind(AssertUnwindSafe(factory))
        .map_err(|_| io::Error::other("the server factory panicked"))?;
    let listener = Listener::bind(&mut reactor, addr, backend, options)?;
    Ok((reactor, listener))
}

/// Runs the loop until the listener is shut down and its connections are gone, or a stop
/// (the handle's, after the grace, or a hook's [`Ctx::stop`](crate::reactor::Ctx::stop)).
fn serve(reactor: &mut Reactor, listener: &Listener) -> io::Result<()> {
    loop {
        // `run_until` wants a deadline; an hour is as good as none (the loop sleeps in the
        // poller meanwhile, woken by connections, timers and the handle).
        let deadline = Instant::now() + Duration::from_secs(3600);
        if reactor.run_until(deadline, |_| listener.is_shut_down())? {
            return Ok(());
        }
        if Instant::now() < deadline {
            return Ok(()); // not the deadline: a stop
        }
    }
}

/// The running server of [`spawn`]: its address, and how to stop it.
///
/// **Dropping the handle shuts the server down** as [`shutdown`](Self::shutdown) with a grace
/// of zero does (idle clients get `421`, a transaction in flight gets `421` instead of its
/// answer and may be retried by its client, nothing is answered `250` and then lost), and
/// waits for the thread: a server never outlives the handle by accident. To serve for the
/// rest of the program, keep the handle, or call [`join`](Self::join) and stop the server
/// through a [`ShutdownTrigger`] from elsewhere (a signal-handling thread).
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    listener: Handle,
    stop: StopHandle,
    remote: RemoteHandle,
    /// Disconnected when the thread has ended.
    finished: mpsc::Receiver<()>,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// The address the server listens on (with the port picked, if `addr` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to the server's reactor, to hand it work from other threads (complete a
    /// [`Ticket`](super::Ticket) there, notify a dispatcher a hook spawned).
    pub fn remote(&self) -> &RemoteHandle {
        &self.remote
    }

    /// A `Send + Clone` trigger for a graceful shutdown from another thread, for a program
    /// that waits in [`join`](Self::join).
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger {
            listener: self.listener,
            remote: self.remote.clone(),
        }
    }

    /// Shuts down gracefully and waits for the thread: the listener stops accepting, idle
    /// clients get `421`, transactions in flight have `grace` to finish (their clients get
    /// the real answer, then `421`). If connections are still open [`SHUTDOWN_MARGIN`] after
    /// the grace (a client that does not read its last reply), the loop is stopped and they
    /// are closed.
    ///
    /// # Errors
    /// The error that ended the loop, if it failed (an error of the OS poller), or a panic of
    /// the server thread.
    pub fn shutdown(mut self, grace: Duration) -> io::Result<()> {
        self.shutdown_and_join(grace)
    }

    /// Waits until the server ends: after a [`ShutdownTrigger`] fired (and the last
    /// connection is gone), a hook called [`Ctx::stop`](crate::reactor::Ctx::stop), or the
    /// loop failed. Does not ask it to stop.
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    pub fn join(mut self) -> io::Result<()> {
        self.join_thread()
    }

    fn shutdown_and_join(&mut self, grace: Duration) -> io::Result<()> {
        if self.thread.is_none() {
            return Ok(());
        }
        self.remote.notify(self.listener, Shutdown { grace });
        let wait = grace.saturating_add(SHUTDOWN_MARGIN);
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.finished.recv_timeout(wait) {
            log::warn!(
                "smtpd server on {}: connections still open {:?} after the grace; closing them",
                self.addr,
                SHUTDOWN_MARGIN
            );
            self.stop.stop();
        }
        self.join_thread()
    }

    fn join_thread(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match thread.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the server thread panicked")),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown_and_join(Duration::ZERO) {
            log::error!("smtpd server on {}: {e}", self.addr);
        }
    }
}

/// Asks a [`spawn`]ed server to shut down gracefully, from any thread: what
/// [`ServerHandle::shutdown`] does, without waiting. `Send + Sync + Clone`.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger {
    listener: Handle,
    remote: RemoteHandle,
}

impl ShutdownTrigger {
    /// Starts the graceful shutdown (see [`Shutdown`]); the server's [`ServerHandle::join`]
    /// returns once its last connection is gone. A second call does nothing more.
    pub fn shutdown(&self, grace: Duration) {
        self.remote.notify(self.listener, Shutdown { grace });
    }
}
