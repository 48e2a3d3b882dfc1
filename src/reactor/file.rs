//! Descriptors that are not sockets: asyncore's `file_wrapper` / `file_dispatcher`, a two-pipe
//! [`Duplex`] stream, and the descriptors systemd passes in ([`listen_fds`]).
//!
//! Any of these is a [`chat::Transport`](crate::chat::Transport), so a
//! [`ChatDispatcher`](crate::chat::ChatDispatcher) frames lines over a pipe, a pty or a child
//! process's stdio exactly as it does over TCP.
//!
//! # Portability
//! Unix only, like asyncore's `file_dispatcher`. epoll refuses regular files (`EPERM`): a
//! [`FileStream`] over a plain file fails to register, and [`Reactor::add`](super::Reactor::add)
//! returns the error.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use mio::event::Source;
use mio::unix::pipe::{Receiver, Sender};
use mio::unix::SourceFd;

use crate::chat::forward_source;
use mio::{Interest, Registry, Token};

/// Sets `O_NONBLOCK` on any descriptor, without `unsafe` (mio's pipe type does the `fcntl`).
fn set_nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    let pipe = Receiver::from(fd);
    pipe.set_nonblocking(true)?;
    Ok(OwnedFd::from(pipe))
}

/// One descriptor of any kind — a pipe end, a pty, a character device, one end of a
/// `socketpair` — as a non-blocking stream the reactor can poll: asyncore's `file_wrapper`, and
/// with a [`Dispatcher`](super::Dispatcher) (or a [`ChatDispatcher`](crate::chat::ChatDispatcher))
/// around it, `file_dispatcher`.
///
/// Reads and writes go straight to the descriptor (`os.read` / `os.write`); the reactor learns
/// about readiness through the descriptor itself, so the same descriptor must not also be
/// registered elsewhere in the same reactor.
///
/// ```
/// use std::io::Write;
/// use std::os::unix::net::UnixStream;
/// use smtpd::reactor::FileStream;
///
/// let (ours, mut theirs) = UnixStream::pair()?;
/// let stream = FileStream::new(ours)?; // takes the descriptor, sets O_NONBLOCK
/// theirs.write_all(b"hello\r\n")?;
/// # drop(stream);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct FileStream {
    file: File,
}

impl FileStream {
    /// Takes ownership of `fd` and puts it in non-blocking mode (`file_dispatcher(fd)` without
    /// the `dup`).
    ///
    /// # Errors
    /// When `fcntl` fails.
    pub fn new(fd: impl Into<OwnedFd>) -> io::Result<FileStream> {
        let fd = set_nonblocking(fd.into())?;
        Ok(FileStream {
            file: File::from(fd),
        })
    }

    /// Duplicates `fd` (asyncore's `file_wrapper` calls `os.dup`) and wraps the copy; the
    /// caller keeps the original. Both share the file status flags, so the original becomes
    /// non-blocking too.
    ///
    /// # Errors
    /// When `dup` or `fcntl` fails (descriptor limits).
    pub fn dup(fd: impl AsFd) -> io::Result<FileStream> {
        FileStream::new(fd.as_fd().try_clone_to_owned()?)
    }

    /// Gives the descriptor back (still non-blocking).
    pub fn into_owned_fd(self) -> OwnedFd {
        OwnedFd::from(self.file)
    }
}

impl Read for FileStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for FileStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for FileStream {
    forward_source!(|s| SourceFd(&s.file.as_raw_fd()));
}

/// The defaults: no buffers of its own, a read always confirmed by `WouldBlock`, no shutdown
/// (the descriptor closes when dropped).
impl crate::chat::Transport for FileStream {}

impl AsRawFd for FileStream {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for FileStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A byte stream made of two one-way halves: input is read from `reader`, output written to
/// `writer`, and both are registered under the dispatcher's one token. With mio's pipes it puts
/// a [`Chat`](crate::chat::Chat) on a pipe pair or on a child process's stdout/stdin:
///
/// ```no_run
/// use std::process::{Command, Stdio};
/// use mio::unix::pipe::{Receiver, Sender};
/// use smtpd::reactor::Duplex;
///
/// let mut child = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
/// let stream = Duplex::new(
///     Receiver::from(child.stdout.take().unwrap()),
///     Sender::from(child.stdin.take().unwrap()),
/// );
/// stream.reader.set_nonblocking(true)?;
/// stream.writer.set_nonblocking(true)?;
/// // reactor.add(ChatDispatcher::new(stream, handler))?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct Duplex<R, W> {
    /// Where input comes from.
    pub reader: R,
    /// Where output goes.
    pub writer: W,
}

impl<R, W> Duplex<R, W> {
    /// Pairs a reading and a writing half.
    pub fn new(reader: R, writer: W) -> Duplex<R, W> {
        Duplex { reader, writer }
    }
}

impl Duplex<Receiver, Sender> {
    /// Two connected duplex ends made of two non-blocking pipes: what one end writes the other
    /// reads. A pipe-based `socketpair`, for tests and for talking to a helper process or thread.
    ///
    /// # Errors
    /// When `pipe2` fails (descriptor limits).
    pub fn pipe_pair() -> io::Result<(Duplex<Receiver, Sender>, Duplex<Receiver, Sender>)> {
        let (a_tx, b_rx) = mio::unix::pipe::new()?;
        let (b_tx, a_rx) = mio::unix::pipe::new()?;
        Ok((Duplex::new(a_rx, a_tx), Duplex::new(b_rx, b_tx)))
    }
}

impl<R: Read, W> Read for Duplex<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl<R, W: Write> Write for Duplex<R, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl<R: Source, W: Source> Source for Duplex<R, W> {
    forward_source!(|d| Halves::new(Some(&mut d.reader), Some(&mut d.writer)));
}

/// A [`Duplex`] is a transport with the defaults (see
/// [`Transport`](crate::chat::Transport)); its writer's `flush` is not called, since it holds
/// nothing that [`wants_write`](crate::chat::Transport::wants_write) would report.
impl<R, W> crate::chat::Transport for Duplex<R, W>
where
    R: Read + Source + 'static,
    W: Write + Source + 'static,
{
}

/// Two one-way sources under one token, either of them possibly absent (a child's stdin once
/// closed): the reader is registered for reading, the writer for writing, as the interest asks.
pub(crate) struct Halves<'a> {
    reader: Option<&'a mut dyn Source>,
    writer: Option<&'a mut dyn Source>,
}

impl<'a> Halves<'a> {
    pub(crate) fn new(
        reader: Option<&'a mut dyn Source>,
        writer: Option<&'a mut dyn Source>,
    ) -> Halves<'a> {
        Halves { reader, writer }
    }

    pub(crate) fn register(
        self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        let mut reader = self.reader.filter(|_| interest.is_readable());
        if let Some(r) = reader.as_deref_mut() {
            r.register(registry, token, Interest::READABLE)?;
        }
        if let Some(w) = self.writer.filter(|_| interest.is_writable()) {
            if let Err(e) = w.register(registry, token, Interest::WRITABLE) {
                if let Some(r) = reader {
                    let _ = r.deregister(registry);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    pub(crate) fn reregister(
        self,
        registry: &Registry,
        token: Token,
        interest: Interest,
    ) -> io::Result<()> {
        if let Some(r) = self.reader.filter(|_| interest.is_readable()) {
            r.reregister(registry, token, Interest::READABLE)?;
        }
        if let Some(w) = self.writer.filter(|_| interest.is_writable()) {
            w.reregister(registry, token, Interest::WRITABLE)?;
        }
        Ok(())
    }

    pub(crate) fn deregister(self, registry: &Registry) -> io::Result<()> {
        // Either half may not have been registered (interest without it): ignore that one.
        let r = self.reader.map_or(Ok(()), |r| r.deregister(registry));
        let w = self.writer.map_or(Ok(()), |w| w.deregister(registry));
        r.or(w)
    }
}

/// The listening descriptors systemd (or any launcher speaking its protocol) passed to this
/// process: `sd_listen_fds(0)`. Returns the descriptor numbers `3 .. 3 + LISTEN_FDS` when
/// `LISTEN_PID` names this process, otherwise none.
///
/// Turning a descriptor number into an owned socket is `unsafe` in Rust (only the caller can
/// promise that nobody else owns it), and this crate forbids `unsafe`, so that one line is
/// yours — after which the socket is served like any other:
///
/// ```no_run
/// use std::os::fd::FromRawFd;
/// # use std::{cell::RefCell, rc::Rc};
/// # use smtpd::{reactor::Reactor, server::*, servers::Sink};
/// # let mut reactor = Reactor::new()?;
/// for fd in smtpd::reactor::listen_fds() {
///     // SAFETY: systemd handed us this descriptor, and we take it exactly once.
///     let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
///     std_listener.set_nonblocking(true)?;
///     let listener = mio::net::TcpListener::from_std(std_listener);
///     Listener::adopt(&mut reactor, listener, Rc::new(RefCell::new(Sink::default())),
///                     ServerOptions::default())?;
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// The environment is left as it is (`unset_environment = 0`).
pub fn listen_fds() -> Vec<RawFd> {
    parse_listen_fds(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    )
}

/// First descriptor passed by systemd (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

fn parse_listen_fds(listen_pid: Option<&str>, listen_fds: Option<&str>, pid: u32) -> Vec<RawFd> {
    let for_us = listen_pid
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == pid);
    let count = listen_fds
        .and_then(|n| n.trim().parse::<RawFd>().ok())
        .filter(|&n| n > 0 && n <= RawFd::MAX - LISTEN_FDS_START);
    match (for_us, count) {
        (true, Some(n)) => (LISTEN_FDS_START..LISTEN_FDS_START + n).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listen_fds;

    #[test]
    fn listen_fds_only_for_this_process() {
        assert_eq!(parse_listen_fds(Some("42"), Some("2"), 42), vec![3, 4]);
        assert_eq!(
            parse_listen_fds(Some("41"), Some("2"), 42),
            Vec::<i32>::new()
        );
        assert_eq!(parse_listen_fds(None, Some("2"), 42), Vec::<i32>::new());
        assert_eq!(parse_listen_fds(Some("42"), None, 42), Vec::<i32>::new());
    }

    #[test]
    fn listen_fds_rejects_nonsense_counts() {
        for n in ["0", "-1", "x", "", "2147483647"] {
            assert!(parse_listen_fds(Some("7"), Some(n), 7).is_empty(), "{n}");
        }
        assert_eq!(parse_listen_fds(Some(" 7 "), Some(" 1\n"), 7), vec![3]);
    }
}
