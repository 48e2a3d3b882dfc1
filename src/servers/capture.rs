//! Capture stores: where a debugging server (or any server) keeps the messages it receives, as
//! real files other tools can read.
//!
//! * [`Maildir`]: one file per message, as the Maildir convention requires (a unique name
//!   `secs.M<usec>P<pid>Q<n>.<host>`, written to `tmp/`, fsynced, renamed into `new/`).
//! * [`Mbox`]: one mboxrd file (lines matching `^>*From ` get one more `>`), each message after
//!   a `From sender date` line, under an advisory `flock` so other processes never interleave.
//! * [`JsonLines`]: one JSON object per message (time, peer, HELO, envelope with parameters,
//!   size, where the message was stored, a few headers), to a file or stdout.
//!
//! The message is stored byte-exact: the data as received (dot-unstuffed, CRLF line ends as the
//! client sent them) plus the line break that ended its last line. No `X-Peer:` line is added:
//! only CPython's printed block ([`Print::Cpython`](super::debugging::Print)) carries one.
//!
//! Every store runs on the reactor thread, inside `process_message`; a store that fails
//! (disk full, a directory gone) makes the server answer `451 4.3.0` so the client retries.
//!
//! ```
//! use smtpd::servers::capture::{CaptureStore, Maildir};
//! use smtpd::server::Message;
//!
//! let dir = std::env::temp_dir().join(format!("capture-doc-{}", std::process::id()));
//! let mut maildir = Maildir::open(&dir)?;
//! let message = Message::new("127.0.0.1:2525".parse().unwrap(), "a@example.com",
//!                            ["b@example.com"], &b"Subject: hi\r\n\r\nhello"[..]);
//! let stored = maildir.store(&message, &[])?.expect("a path");
//! assert_eq!(std::fs::read(&stored)?, b"Subject: hi\r\n\r\nhello\r\n");
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::server::Message;

use super::headers::{civil, header_end};

/// Somewhere messages are kept. [`DebuggingServer`](super::DebuggingServer) calls every store
/// attached to it for each message, in the order they were attached.
pub trait CaptureStore {
    /// Stores `message`. `stored` lists where the stores called before this one put it (a
    /// log such as [`JsonLines`] records it). Returns where this store put it (a path), if
    /// it is a place; an error makes the server answer `451 4.3.0`.
    ///
    /// # Errors
    /// Any I/O error: the message is not (fully) stored.
    fn store(&mut self, message: &Message, stored: &[String]) -> io::Result<Option<String>>;
}

/// The bytes of a stored message: the data plus the line break that ended its last line (the
/// data's own style: LF when it has LF but no CRLF, else CRLF); nothing for an empty message.
pub fn stored_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 2);
    out.extend_from_slice(data);
    if !data.is_empty() {
        out.extend_from_slice(line_end(data));
    }
    out
}

fn line_end(data: &[u8]) -> &'static [u8] {
    let crlf = memchr::memmem::find(data, b"\r\n").is_some();
    if !crlf && data.contains(&b'\n') {
        b"\n"
    } else {
        b"\r\n"
    }
}

/// A Maildir (`new/`, `cur/`, `tmp/`), created if missing.
///
/// Each message is written to `tmp/NAME`, fsynced, renamed to `new/NAME` and the directory
/// fsynced, so a reader never sees a partial file. With [`keep`](Self::keep), the oldest
/// messages (by name, which starts with the time) in `new/` and `cur/` are removed once there
/// are more.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    host: String,
    pid: u32,
    counter: u64,
    keep: Option<usize>,
    /// Messages in `new/` and `cur/`, oldest first (known when `keep` is set).
    kept: VecDeque<PathBuf>,
}

impl Maildir {
    /// Opens (creating if needed) the Maildir at `root`.
    ///
    /// # Errors
    /// When a directory cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Maildir> {
        let root = root.into();
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        // The spec: '/' and ':' cannot be in a name; write them as octal escapes.
        let host = host.replace('/', "\\057").replace(':', "\\072");
        Ok(Maildir {
            root,
            host,
            pid: std::process::id(),
            counter: 0,
            keep: None,
            kept: VecDeque::new(),
        })
    }

    /// Keeps at most `n` messages: after each store (and now), the oldest in `new/` and
    /// `cur/` beyond `n` are removed (`--keep N`).
    ///
    /// # Errors
    /// When `new/` or `cur/` cannot be listed.
    pub fn keep(mut self, n: usize) -> io::Result<Maildir> {
        let mut names = Vec::new();
        for sub in ["new", "cur"] {
            for entry in fs::read_dir(self.root.join(sub))? {
                let entry = entry?;
                names.push((entry.file_name(), entry.path()));
            }
        }
        names.sort();
        self.kept = names.into_iter().map(|(_, p)| p).collect();
        self.keep = Some(n);
        self.trim();
        Ok(self)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    fn unique_name(&mut self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.counter += 1;
        format!(
            "{}.M{:06}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            self.pid,
            self.counter,
            self.host
        )
    }

    fn trim(&mut self) {
        let Some(keep) = self.keep else { return };
        while self.kept.len() > keep {
            let Some(oldest) = self.kept.pop_front() else {
                break;
            };
            match fs::remove_file(&oldest) {
                Ok(()) => log::info!("--keep {keep}: removed {}", oldest.display()),
                // Moved to cur/ (flags added) or deleted by a reader: look for it there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    remove_renamed(&self.root, &oldest);
                }
                Err(e) => log::warn!("--keep {keep}: cannot remove {}: {e}", oldest.display()),
            }
        }
    }
}

/// A reader moved `new/NAME` to `cur/NAME:2,FLAGS`: remove that instead.
fn remove_renamed(root: &Path, old: &Path) {
    let Some(name) = old.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(entries) = fs::read_dir(root.join("cur")) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        if file
            .to_str()
            .is_some_and(|f| f.split(':').next() == Some(name))
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

impl CaptureStore for Maildir {
    fn store(&mut self, message: &Message, _stored: &[String]) -> io::Result<Option<String>> {
        let name = self.unique_name();
        let tmp = self.root.join("tmp").join(&name);
        let new = self.root.join("new").join(&name);
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(&stored_bytes(&message.data))?;
            file.sync_all()?;
            fs::rename(&tmp, &new)?;
            File::open(self.root.join("new"))?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        if self.keep.is_some() {
            self.kept.push_back(new.clone());
            self.trim();
        }
        Ok(Some(new.to_string_lossy().into_owned()))
    }
}

/// An mbox file in the mboxrd flavour, appended to under an exclusive `flock`.
///
/// Each message is a `From SENDER DATE` line (`MAILER-DAEMON` for the null sender, the date
/// in `asctime` form, UTC), the message with every line matching `^>*From ` given one more
/// `>` (so a reader removes exactly one), and an empty line. The message keeps its own line
/// ends (CRLF as received); the `From ` line and the empty line after the message end in LF.
/// The whole entry is written with one `write` under the lock, so neither this server's
/// connections (all on one thread) nor other processes that lock the file interleave.
/// `--keep` does not trim an mbox (rotate it with your own tools).
#[derive(Debug)]
pub struct Mbox {
    path: PathBuf,
}

impl Mbox {
    /// Opens (creating if needed) the mbox at `path`.
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Mbox> {
        let path = path.into();
        OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Mbox { path })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The mboxrd entry for `message` received at `when`.
pub fn mboxrd_entry(message: &Message, when: SystemTime) -> Vec<u8> {
    let sender = match message.mail_from.as_str() {
        "" | "<>" => "MAILER-DAEMON",
        s => s,
    };
    // A sender with spaces (a quoted local part) would split the separator line.
    let sender: String = sender
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    let mut out = format!("From {sender} {}\n", asctime(when)).into_bytes();
    let body = stored_bytes(&message.data);
    let mut rest = &body[..];
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let line = &rest[..end];
        let unquoted = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
        if line[unquoted..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
        rest = &rest[end..];
    }
    out.push(b'\n');
    out
}

impl CaptureStore for Mbox {
    fn store(&mut self, message: &Message, _stored: &[String]) -> io::Result<Option<String>> {
        use nix::fcntl::{Flock, FlockArg};
        let entry = mboxrd_entry(message, SystemTime::now());
        let file = OpenOptions::new().append(true).open(&self.path)?;
        let mut locked = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let length = locked.metadata()?.len();
        if let Err(e) = locked.write_all(&entry).and_then(|()| locked.sync_data()) {
            // Do not leave half an entry for the next one to run into.
            let _ = locked.set_len(length);
            return Err(e);
        }
        Ok(Some(self.path.to_string_lossy().into_owned()))
    }
}

/// One JSON object per message, one per line, to a file (appended) or stdout.
///
/// The fields: `time` (RFC 3339, UTC, microseconds), `peer` (`ip:port`), `helo` (or `null`),
/// `mail_from`, `mail_params` (`[{"keyword", "value"}]`, `value` `null` when absent),
/// `recipients` (`[{"address", "params"}]`), `size` (bytes stored), `stored` (where the other
/// stores put it: paths), `headers` (`subject`, `from`, `to`, `message_id`: unfolded, or
/// `null`). Text that is not UTF-8 is decoded lossily; JSON escaping follows RFC 8259.
///
/// With [`keep`](Self::keep) (files only), the oldest lines beyond `n` are removed (the file
/// is rewritten through a temporary file and a rename).
pub struct JsonLines {
    out: Box<dyn Write>,
    path: Option<PathBuf>,
    keep: Option<usize>,
    lines: usize,
}

impl std::fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLines")
            .field("path", &self.path)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl JsonLines {
    /// Appends to the file at `path` (created if needed).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<JsonLines> {
        let path = path.into();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let lines = count_lines(&path)?;
        Ok(JsonLines {
            out: Box::new(file),
            path: Some(path),
            keep: None,
            lines,
        })
    }

    /// Writes to stdout.
    pub fn stdout() -> JsonLines {
        JsonLines::with_writer(Box::new(io::stdout()))
    }

    /// Writes to any writer (flushed after each line).
    pub fn with_writer(out: Box<dyn Write>) -> JsonLines {
        JsonLines {
            out,
            path: None,
            keep: None,
            lines: 0,
        }
    }

    /// Keeps at most `n` lines in the file (ignored for stdout and other writers).
    pub fn keep(mut self, n: usize) -> JsonLines {
        self.keep = Some(n);
        self
    }

    fn trim(&mut self) -> io::Result<()> {
        let (Some(keep), Some(path)) = (self.keep, self.path.clone()) else {
            return Ok(());
        };
        if self.lines <= keep {
            return Ok(());
        }
        let mut text = Vec::new();
        File::open(&path)?.read_to_end(&mut text)?;
        let mut starts: Vec<usize> = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', &text).map(|i| i + 1));
        starts.retain(|&s| s < text.len());
        let drop = starts.len().saturating_sub(keep);
        let from = starts.get(drop).copied().unwrap_or(text.len());
        let tmp = path.with_extension("jsonl.tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(&text[from..])?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        let mut file = OpenOptions::new().append(true).open(&path)?;
        file.seek(SeekFrom::End(0))?;
        self.out = Box::new(file);
        self.lines = starts.len() - drop;
        log::info!(
            "--keep {keep}: removed {drop} line(s) from {}",
            path.display()
        );
        Ok(())
    }
}

fn count_lines(path: &Path) -> io::Result<usize> {
    let mut text = Vec::new();
    File::open(path)?.read_to_end(&mut text)?;
    Ok(memchr::memchr_iter(b'\n', &text).count())
}

impl CaptureStore for JsonLines {
    fn store(&mut self, message: &Message, stored: &[String]) -> io::Result<Option<String>> {
        let mut line = json_record(message, SystemTime::now(), stored);
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.out.flush()?;
        self.lines += 1;
        self.trim()?;
        Ok(None)
    }
}

/// The JSON object [`JsonLines`] writes for `message` (without the line break).
pub fn json_record(message: &Message, when: SystemTime, stored: &[String]) -> String {
    let mut j = String::with_capacity(512);
    j.push('{');
    j.push_str("\"time\":");
    json_str(&mut j, &rfc3339(when));
    j.push_str(",\"peer\":");
    json_str(&mut j, &message.peer.to_string());
    j.push_str(",\"helo\":");
    json_opt(&mut j, message.helo.as_deref());
    j.push_str(",\"mail_from\":");
    json_str(&mut j, &message.mail_from);
    j.push_str(",\"mail_params\":");
    json_params(&mut j, &message.mail_params);
    j.push_str(",\"recipients\":[");
    for (i, r) in message.recipients.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        j.push_str("{\"address\":");
        json_str(&mut j, &r.address);
        j.push_str(",\"params\":");
        json_params(&mut j, &r.params);
        j.push('}');
    }
    j.push_str("],\"size\":");
    j.push_str(&stored_bytes(&message.data).len().to_string());
    j.push_str(",\"stored\":[");
    for (i, s) in stored.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        json_str(&mut j, s);
    }
    j.push_str("],\"headers\":{");
    let headers = Headers::parse(&message.data);
    for (i, (key, name)) in [
        ("subject", "Subject"),
        ("from", "From"),
        ("to", "To"),
        ("message_id", "Message-ID"),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            j.push(',');
        }
        json_str(&mut j, key);
        j.push(':');
        json_opt(&mut j, headers.get(name));
    }
    j.push_str("}}");
    j
}

fn json_params(j: &mut String, params: &[crate::server::Param]) {
    j.push('[');
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        j.push_str("{\"keyword\":");
        json_str(j, &p.keyword);
        j.push_str(",\"value\":");
        json_opt(j, p.value.as_deref());
        j.push('}');
    }
    j.push(']');
}

fn json_opt(j: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(j, s),
        None => j.push_str("null"),
    }
}

/// Appends `s` as a JSON string (RFC 8259: `"`, `\` and control characters escaped).
pub(crate) fn json_str(j: &mut String, s: &str) {
    j.push('"');
    for c in s.chars() {
        match c {
            '"' => j.push_str("\\\""),
            '\\' => j.push_str("\\\\"),
            '\n' => j.push_str("\\n"),
            '\r' => j.push_str("\\r"),
            '\t' => j.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                j.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => j.push(c),
        }
    }
    j.push('"');
}

/// `2026-12-01T22:20:14.123456Z`.
fn rfc3339(when: SystemTime) -> String {
    let c = civil(when);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.micros
    )
}

/// `Tue Dec  1 22:20:14 2026` (C's `asctime`, UTC).
fn asctime(when: SystemTime) -> String {
    let c = civil(when);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        c.weekday, c.month_name, c.day, c.hour, c.minute, c.second, c.year
    )
}

/// A message's header section, parsed for assertions and logs: fields unfolded (continuation
/// lines joined, the line break removed), names compared ignoring ASCII case, values trimmed,
/// not MIME-decoded, non-UTF-8 bytes decoded lossily.
///
/// ```
/// use smtpd::servers::capture::Headers;
///
/// let h = Headers::parse(b"Subject: a long\r\n  subject\r\nTo: x@y\r\nto: z@w\r\n\r\nbody");
/// assert_eq!(h.get("SUBJECT"), Some("a long  subject"));
/// assert_eq!(h.get_all("To").collect::<Vec<_>>(), ["x@y", "z@w"]);
/// assert_eq!(h.get("Body"), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    /// Parses the header section of `data` (everything up to the first empty line, or all of
    /// it when there is none). A line that is neither a field nor a continuation is skipped.
    pub fn parse(data: &[u8]) -> Headers {
        let section = &data[..header_end(data).unwrap_or(data.len())];
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in section.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(line);
            if line[0] == b' ' || line[0] == b'\t' {
                if let Some((_, value)) = fields.last_mut() {
                    value.push_str(&text);
                }
                continue;
            }
            if let Some((name, value)) = text.split_once(':') {
                if !name.is_empty() && !name.contains(' ') {
                    fields.push((name.to_string(), value.trim_start().to_string()));
                }
            }
        }
        for (_, value) in &mut fields {
            let trimmed = value.trim_end().len();
            value.truncate(trimmed);
        }
        Headers { fields }
    }

    /// The first field called `name` (ignoring ASCII case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every field called `name` (ignoring ASCII case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every field as (name as written, unfolded value), in order.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(data: &[u8]) -> Message {
        Message::new("127.0.0.1:1".parse().unwrap(), "a@b", ["c@d"], data)
    }

    #[test]
    fn mboxrd_quoting() {
        let m = msg(b"A: b\r\n\r\nFrom me\r\n>From you\r\n>>From x\r\nFromage\r\n From y");
        let when = UNIX_EPOCH + Duration::from_secs(1_796_163_614);
        let got = mboxrd_entry(&m, when);
        let want = b"From a@b Tue Dec  1 22:20:14 2026\nA: b\r\n\r\n>From me\r\n>>From you\r\n>>>From x\r\nFromage\r\n From y\r\n\n";
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        let null = Message::new("127.0.0.1:1".parse().unwrap(), "<>", ["c@d"], &b"x"[..]);
        assert!(mboxrd_entry(&null, when).starts_with(b"From MAILER-DAEMON Tue"));
    }

    #[test]
    fn maildir_keep_removes_the_oldest_also_when_moved_to_cur() {
        let dir = std::env::temp_dir().join(format!("smtpd-maildir-keep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut maildir = Maildir::open(&dir).unwrap().keep(2).unwrap();
        let first = maildir.store(&msg(b"1"), &[]).unwrap().unwrap();
        // A reader marks the first one seen: new/NAME becomes cur/NAME:2,S.
        let name = Path::new(&first)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        fs::rename(&first, dir.join("cur").join(format!("{name}:2,S"))).unwrap();
        maildir.store(&msg(b"2"), &[]).unwrap();
        maildir.store(&msg(b"3"), &[]).unwrap();
        let mut left: Vec<Vec<u8>> = ["new", "cur"]
            .iter()
            .flat_map(|sub| fs::read_dir(dir.join(sub)).unwrap())
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [b"2\r\n".to_vec(), b"3\r\n".to_vec()]);
        // Reopened, it counts what is already there.
        let mut again = Maildir::open(&dir).unwrap().keep(1).unwrap();
        assert_eq!(fs::read_dir(dir.join("new")).unwrap().count(), 1);
        again.store(&msg(b"4"), &[]).unwrap();
        let only: Vec<_> = fs::read_dir(dir.join("new")).unwrap().collect();
        assert_eq!(only.len(), 1);
        assert_eq!(
            fs::read(only[0].as_ref().unwrap().path()).unwrap(),
            b"4\r\n"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn stored_bytes_line_ends() {
        assert_eq!(stored_bytes(b""), b"");
        assert_eq!(stored_bytes(b"a\r\nb"), b"a\r\nb\r\n");
        assert_eq!(stored_bytes(b"a\nb"), b"a\nb\n");
        assert_eq!(stored_bytes(b"ab"), b"ab\r\n");
    }

    #[test]
    fn json_escaping_and_fields() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\n\u{1}\u{7f}é\u{2028}");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\\u007fé\\u2028\"");
        let m = msg(b"Subject: hi \"there\"\r\nMessage-ID: <1@x>\r\n\r\nbody")
            .with_helo("client")
            .with_mail_params(vec![crate::server::Param::new("SIZE", Some("10".into()))]);
        let when = UNIX_EPOCH + Duration::from_micros(1_796_163_614_000_042);
        let got = json_record(&m, when, &["/tmp/x".to_string()]);
        assert_eq!(
            got,
            "{\"time\":\"2026-12-01T22:20:14.000042Z\",\"peer\":\"127.0.0.1:1\",\"helo\":\"client\",\
             \"mail_from\":\"a@b\",\"mail_params\":[{\"keyword\":\"SIZE\",\"value\":\"10\"}],\
             \"recipients\":[{\"address\":\"c@d\",\"params\":[]}],\"size\":48,\"stored\":[\"/tmp/x\"],\
             \"headers\":{\"subject\":\"hi \\\"there\\\"\",\"from\":null,\"to\":null,\"message_id\":\"<1@x>\"}}"
        );
    }

    #[test]
    fn headers_unfold_and_ignore_case() {
        let h = Headers::parse(b"X-A: 1\n\tcont\nbad line\nx-a: 2\n\nY: no");
        assert_eq!(h.get("x-A"), Some("1\tcont"));
        assert_eq!(h.get_all("X-a").count(), 2);
        assert_eq!(h.get("Y"), None);
        assert_eq!(h.fields().len(), 2);
    }
}
