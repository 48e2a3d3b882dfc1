//! Mailman 2: whether a list exists (its `config.pck` under `$prefix/lists`), and the hand-over
//! to its `mail/mailman` wrapper as a child process whose stdin and stdout are reactor sources.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use mio::event::Source;

use super::classify::is_safe_list_name;
use crate::chat::forward_source;
use crate::reactor::{Ctx, Dispatcher, FileStream, Halves, TimerId};
use crate::server::Reply;
use crate::smtp::EnhancedCode;

/// A Mailman 2 installation: `$prefix/lists/NAME/config.pck`, `$prefix/mail/mailman`.
/// Build it with [`Mailman2::at`] (and change the paths if the layout differs).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Mailman2 {
    /// The directory holding one directory per list (`$prefix/lists`).
    pub lists_dir: PathBuf,
    /// The mail wrapper (`$prefix/mail/mailman`).
    pub wrapper: PathBuf,
}

impl Mailman2 {
    /// The layout of an installation under `prefix` (`/var/lib/mailman` on Debian-era systems).
    pub fn at(prefix: impl AsRef<Path>) -> Mailman2 {
        let prefix = prefix.as_ref();
        Mailman2 {
            lists_dir: prefix.join("lists"),
            wrapper: prefix.join("mail").join("mailman"),
        }
    }

    /// Mailman 2.1's `Utils.list_exists`: the name is checked first (nothing but
    /// `[-+_.=a-z0-9]`, no leading dot), then `config.pck`, `config.pck.last`, `config.db` or
    /// `config.db.last` must exist in its directory.
    pub fn list_exists(&self, name: &str) -> bool {
        if !is_safe_list_name(name) {
            return false;
        }
        let dir = self.lists_dir.join(name);
        [
            "config.pck",
            "config.pck.last",
            "config.db",
            "config.db.last",
        ]
        .iter()
        .any(|f| dir.join(f).exists())
    }

    /// Problems worth a warning at start-up.
    pub fn check(&self) -> Result<(), String> {
        if !self.lists_dir.is_dir() {
            return Err(format!(
                "Mailman 2 lists directory {} does not exist",
                self.lists_dir.display()
            ));
        }
        if !self.wrapper.is_file() {
            return Err(format!(
                "Mailman 2 mail wrapper {} does not exist",
                self.wrapper.display()
            ));
        }
        Ok(())
    }
}

/// The SMTP reply for the wrapper's exit status (`src/common.h` of Mailman 2.1).
pub(crate) fn reply_for_status(status: Option<ExitStatus>, list: &str, output: &str) -> Reply {
    let detail = output.lines().last().unwrap_or("").trim();
    match status.map(|s| s.code()) {
        Some(Some(0)) => Reply::ok(),
        // The script found no such list (it vanished since RCPT).
        Some(Some(1)) => Reply::enhanced(
            550,
            EnhancedCode::new(5, 1, 1),
            format!("Requested action not taken: no list {list}"),
        ),
        Some(Some(code @ (2 | 8))) => {
            log::error!(
                "Mailman 2's wrapper refused our group (exit {code}: {detail}); run smtpd with \
                 the group Mailman was configured with (--with-mail-gid)"
            );
            Reply::enhanced(
                451,
                EnhancedCode::new(4, 3, 0),
                "Requested action aborted: local error in processing (Mailman group mismatch)",
            )
        }
        Some(Some(code)) => {
            log::error!("Mailman 2's wrapper for {list} exited with {code}: {detail}");
            Reply::enhanced(
                451,
                EnhancedCode::new(4, 3, 0),
                format!("Requested action aborted: Mailman exited with status {code}"),
            )
        }
        Some(None) => {
            log::error!("Mailman 2's wrapper for {list} was killed by a signal");
            Reply::enhanced(
                451,
                EnhancedCode::new(4, 3, 0),
                "Requested action aborted: Mailman was killed",
            )
        }
        None => Reply::enhanced(
            451,
            EnhancedCode::new(4, 3, 0),
            "Requested action aborted: Mailman timed out",
        ),
    }
}

/// Called once with the wrapper's verdict.
pub(crate) type Done = Box<dyn FnOnce(Reply, &mut Ctx<'_>)>;

/// The child's stdin (until the message is written) and its stdout+stderr (one pipe), under one
/// token: a [`Duplex`](crate::reactor::Duplex) whose writing half can be closed early.
#[derive(Debug)]
struct ChildIo {
    stdin: Option<FileStream>,
    output: FileStream,
}

impl ChildIo {
    fn halves(&mut self) -> Halves<'_> {
        let stdin = self.stdin.as_mut().map(|s| s as &mut dyn Source);
        Halves::new(Some(&mut self.output), stdin)
    }
}

impl Source for ChildIo {
    forward_source!(|io| io.halves());
}

/// Most output of the wrapper kept for the log.
const MAX_OUTPUT: usize = 16 * 1024;
/// How often to look for the child's exit once its output has closed.
const REAP_INTERVAL: Duration = Duration::from_millis(10);

/// One run of `wrapper COMMAND LIST` with the message on stdin, on the reactor: writes the
/// message as the pipe takes it, reads what the child says, reaps it, kills it at the deadline.
pub(crate) struct WrapperRun {
    child: Child,
    io: ChildIo,
    input: Vec<u8>,
    written: usize,
    output: Vec<u8>,
    output_closed: bool,
    list: String,
    timeout: Duration,
    deadline: Option<TimerId>,
    reap: Option<TimerId>,
    done: Option<Done>,
}

impl WrapperRun {
    /// Starts `wrapper command list` (fork and exec happen here; the rest runs in the loop).
    ///
    /// # Errors
    /// When the pipes cannot be made or the wrapper cannot be started.
    pub fn spawn(
        wrapper: &Path,
        command: &str,
        list: &str,
        message: Vec<u8>,
        timeout: Duration,
        done: Done,
    ) -> io::Result<WrapperRun> {
        // One pipe for stdout and stderr: blocking at the child's end, non-blocking at ours.
        let (child_out, our_out) = mio::unix::pipe::new()?;
        child_out.set_nonblocking(false)?;
        let child_out = OwnedFd::from(child_out);
        let child_err = child_out.try_clone()?;
        let mut child = {
            let mut cmd = Command::new(wrapper);
            cmd.arg(command)
                .arg(list)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .stdin(Stdio::piped())
                .stdout(Stdio::from(child_out))
                .stderr(Stdio::from(child_err));
            cmd.spawn()?
            // `cmd` drops here, closing our copies of the child's ends.
        };
        let stdin = match child.stdin.take() {
            Some(s) => FileStream::new(OwnedFd::from(s))?,
            None => return Err(io::Error::other("no stdin pipe")),
        };
        Ok(WrapperRun {
            child,
            io: ChildIo {
                stdin: Some(stdin),
                output: FileStream::new(OwnedFd::from(our_out))?,
            },
            input: message,
            written: 0,
            output: Vec::new(),
            output_closed: false,
            list: list.to_string(),
            timeout,
            deadline: None,
            reap: None,
            done: Some(done),
        })
    }

    fn finish(&mut self, status: Option<ExitStatus>, ctx: &mut Ctx<'_>) {
        for t in [self.deadline.take(), self.reap.take()]
            .into_iter()
            .flatten()
        {
            ctx.cancel_timer(t);
        }
        let output = String::from_utf8_lossy(&self.output).into_owned();
        if !output.trim().is_empty() {
            log::debug!("Mailman 2 wrapper for {}: {}", self.list, output.trim());
        }
        let reply = reply_for_status(status, &self.list, &output);
        if let Some(done) = self.done.take() {
            done(reply, ctx);
        }
        ctx.close();
    }

    fn try_reap(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(t) = self.reap.take() {
            ctx.cancel_timer(t);
        }
        match self.child.try_wait() {
            Ok(Some(status)) => self.finish(Some(status), ctx),
            Ok(None) => self.reap = Some(ctx.set_timer(REAP_INTERVAL)),
            Err(e) => {
                log::error!("waiting for Mailman 2's wrapper: {e}");
                self.kill();
                self.finish(None, ctx);
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dispatcher for WrapperRun {
    fn source(&mut self) -> Option<&mut dyn Source> {
        Some(&mut self.io)
    }

    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.deadline = Some(ctx.set_timer(self.timeout));
        if self.input.is_empty() {
            self.io.stdin = None;
            self.reap = Some(ctx.set_timer(REAP_INTERVAL * 5));
        }
    }

    fn wants_read(&self) -> bool {
        !self.output_closed
    }

    fn wants_write(&self) -> bool {
        self.io.stdin.is_some()
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>) {
        let Some(stdin) = &mut self.io.stdin else {
            return;
        };
        while self.written < self.input.len() {
            match stdin.write(&self.input[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ctx.write_would_block();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EPIPE: the child stopped reading (it refused to run); its exit says why.
                    log::debug!("writing to Mailman 2's wrapper: {e}");
                    break;
                }
            }
        }
        // All written (or no reader left): close stdin so the child sees the end. Its exit is
        // looked for from now on too, in case a descendant keeps the output pipe open.
        self.io.stdin = None;
        if self.reap.is_none() {
            self.reap = Some(ctx.set_timer(REAP_INTERVAL * 5));
        }
    }

    fn on_readable(&mut self, ctx: &mut Ctx<'_>) {
        let mut buf = [0u8; 4096];
        loop {
            match self.io.output.read(&mut buf) {
                Ok(0) => {
                    self.output_closed = true;
                    return self.try_reap(ctx);
                }
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(self.output.len());
                    self.output.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ctx.read_would_block();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.output_closed = true;
                    return self.try_reap(ctx);
                }
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, timer: TimerId) {
        if self.deadline == Some(timer) {
            self.deadline = None;
            log::error!(
                "Mailman 2's wrapper for {} did not finish within {:?}: killed",
                self.list,
                self.timeout
            );
            self.kill();
            self.finish(None, ctx);
        } else if self.reap == Some(timer) {
            self.reap = None;
            self.try_reap(ctx);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>) {
        if self.done.is_some() {
            // Closed from outside (the loop is shutting down): nobody learns of a delivery
            // that may not have happened, so make sure it did not.
            self.kill();
            self.finish(None, ctx);
        }
    }
}
