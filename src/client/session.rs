//! The sans-I/O SMTP/LMTP client: commands in, bytes to send out, replies in, events out.
//!
//! ```text
//!   mail() rcpt() data() rset() quit()   ──►  Client  ──► poll_transmit(): bytes for the socket
//!   handle_line(reply line)              ──►          ──► poll_event(): Ready, Mail, Rcpt, Data, ...
//! ```
//!
//! Commands may be issued at any time; they are queued and sent one at a time, each after the
//! reply to the one before (no PIPELINING), so every event names the command it answers. The
//! greeting and EHLO (falling back to HELO when EHLO is refused; LHLO in LMTP mode) are sent by
//! the client itself; MAIL parameters are passed only when the upstream advertised their
//! extension, and a transaction the upstream cannot carry (SMTPUTF8 or an 8-bit body without the
//! extension) is refused locally with the RFC's reply instead of being mangled.

use std::collections::VecDeque;

use crate::smtp::{EnhancedCode, Reply};

/// Settings of a [`Client`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The name sent in EHLO/HELO/LHLO.
    pub helo_name: String,
    /// Speak LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the data.
    pub lmtp: bool,
    /// Whether to ask for STARTTLS after EHLO. Default [`StartTls::Never`].
    pub starttls: StartTls,
}

/// When the client sends STARTTLS (RFC 3207).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartTls {
    /// Never (plaintext, or the connection already runs TLS from connect).
    #[default]
    Never,
    /// When the upstream's EHLO offers it; otherwise (or when STARTTLS is refused with a
    /// reply) the session goes on in plaintext.
    IfOffered,
    /// Always: an upstream that does not offer STARTTLS, or refuses it, fails the session
    /// with a `4xx`; nothing is sent in plaintext.
    Required,
}

impl ClientConfig {
    /// SMTP with the given EHLO name.
    pub fn smtp(helo_name: impl Into<String>) -> ClientConfig {
        ClientConfig {
            helo_name: helo_name.into(),
            lmtp: false,
            starttls: StartTls::Never,
        }
    }

    /// LMTP with the given LHLO name.
    pub fn lmtp(helo_name: impl Into<String>) -> ClientConfig {
        ClientConfig {
            helo_name: helo_name.into(),
            lmtp: true,
            starttls: StartTls::Never,
        }
    }
}

/// What the upstream advertised in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The EHLO (or LHLO) was accepted; false after a HELO fallback.
    pub esmtp: bool,
    /// `SIZE`, with its limit if one was given (0 = none).
    pub size: Option<u64>,
    /// `8BITMIME`.
    pub eight_bit_mime: bool,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// `PIPELINING` (noted; commands are still sent one at a time).
    pub pipelining: bool,
    /// `STARTTLS`.
    pub starttls: bool,
}

/// What MAIL FROM should carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MailParams {
    /// The message size, sent as `SIZE=` when the upstream supports it.
    pub size: Option<u64>,
    /// The body contains 8-bit data (`BODY=8BITMIME`).
    pub eight_bit: bool,
    /// The transaction needs SMTPUTF8.
    pub smtputf8: bool,
}

impl MailParams {
    /// Parameters that describe `data`: its size, whether it has 8-bit bytes, plus SMTPUTF8.
    pub fn for_message(data: &[u8], smtputf8: bool) -> MailParams {
        MailParams {
            size: Some(data.len() as u64),
            eight_bit: !data.is_ascii(),
            smtputf8,
        }
    }
}

/// What happened, in the order the upstream answered.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Greeted and EHLO/HELO accepted: the session takes transactions.
    Ready(Capabilities),
    /// The upstream answered `220` to STARTTLS: switch the connection to TLS now (discarding
    /// any reply bytes already read after that `220`: response injection), then call
    /// [`Client::handle_tls_established`]. Nothing is sent until then.
    StartTls,
    /// The reply to MAIL FROM (or a local refusal when the upstream cannot carry it).
    Mail(Reply),
    /// The reply to the `n`th RCPT of the transaction (counting from 0).
    Rcpt(usize, Reply),
    /// The reply to the DATA command when it is not `354`: the body was not sent.
    DataRefused(Reply),
    /// The reply after the body (SMTP).
    Data(Reply),
    /// LMTP: the reply after the body for the `n`th RCPT (only recipients that were accepted
    /// get one).
    LmtpData(usize, Reply),
    /// The reply to RSET.
    Reset(Reply),
    /// QUIT was answered; the connection can be closed.
    Closed,
    /// The session is unusable: bad greeting, `421`, a protocol error, or the connection
    /// closed early. Carries a reply fit to pass on to a client (`4xx` unless the upstream
    /// refused permanently at the greeting). Nothing further happens after this.
    Failed(Reply),
}

#[derive(Debug)]
enum Command {
    Mail(String, MailParams),
    Rcpt(String),
    Data(Vec<u8>),
    Rset,
    Quit,
}

/// What the reply being waited for answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// The TLS handshake after `220` to STARTTLS (no reply is expected meanwhile).
    Handshake,
    Mail,
    Rcpt(usize),
    DataCommand,
    DataBody,
    Rset,
    Quit,
}

/// A sans-I/O SMTP or LMTP client session. See the [module docs](crate::client).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    caps: Capabilities,
    queue: VecDeque<Command>,
    expect: Option<Expect>,
    ready: bool,
    failed: bool,
    /// Recipients of the current transaction, and which were accepted (LMTP replies follow them).
    rcpts: usize,
    accepted: Vec<usize>,
    lmtp_pending: VecDeque<usize>,
    /// The body, kept between DATA and its 354.
    body: Option<Vec<u8>>,
    /// Lines of a multi-line reply read so far.
    partial: Vec<String>,
    partial_code: u16,
    transmit: Vec<u8>,
    events: VecDeque<Event>,
    /// The connection runs TLS.
    tls: bool,
}

/// `451 4.7.0`: TLS to the upstream is required and cannot be had.
fn tls_unavailable(why: &str) -> Reply {
    Reply::enhanced(
        451,
        EnhancedCode::new(4, 7, 0),
        format!("Requested action aborted: TLS to the upstream is required, but {why}"),
    )
}

/// `451` for a relay failure, with the reason.
fn temporary(text: impl Into<String>) -> Reply {
    Reply::new(451, text)
}

impl Client {
    /// A session that waits for the upstream's greeting.
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config,
            caps: Capabilities::default(),
            queue: VecDeque::new(),
            expect: Some(Expect::Greeting),
            ready: false,
            failed: false,
            rcpts: 0,
            accepted: Vec::new(),
            lmtp_pending: VecDeque::new(),
            body: None,
            partial: Vec::new(),
            partial_code: 0,
            transmit: Vec::new(),
            events: VecDeque::new(),
            tls: false,
        }
    }

    /// The upstream's capabilities (meaningful after [`Event::Ready`]).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether the connection runs TLS ([`handle_tls_established`](Self::handle_tls_established)
    /// was called).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The TLS handshake finished: after [`Event::StartTls`] the client forgets the
    /// capabilities and sends EHLO again; before the greeting (implicit TLS) it only notes that
    /// the connection is encrypted.
    pub fn handle_tls_established(&mut self) {
        if self.failed {
            return;
        }
        self.tls = true;
        if self.expect == Some(Expect::Handshake) {
            self.caps = Capabilities::default();
            self.send_hello();
        }
    }

    fn send_hello(&mut self) {
        let verb = if self.config.lmtp { "LHLO" } else { "EHLO" };
        self.send(&format!("{verb} {}", self.config.helo_name));
        self.expect = Some(Expect::Ehlo);
    }

    /// Whether the session failed or was closed: nothing more will happen.
    pub fn is_finished(&self) -> bool {
        self.failed || (self.expect.is_none() && self.queue.is_empty() && !self.ready)
    }

    /// Whether the reply awaited is the one after a message body (which may take longer).
    pub fn awaits_data_reply(&self) -> bool {
        self.expect == Some(Expect::DataBody)
    }

    /// Whether a reply is awaited (for command timeouts).
    pub fn is_waiting(&self) -> bool {
        self.expect.is_some()
    }

    /// Starts a transaction.
    pub fn mail(&mut self, from: impl Into<String>, params: MailParams) {
        self.enqueue(Command::Mail(from.into(), params));
    }

    /// Adds a recipient; its reply is `Event::Rcpt(n, ..)` with `n` counting from 0 per
    /// transaction.
    pub fn rcpt(&mut self, to: impl Into<String>) {
        self.enqueue(Command::Rcpt(to.into()));
    }

    /// Sends the message: `data` is the message as received (CRLF line ends, not dot-stuffed,
    /// without the final CRLF); the client dot-stuffs it and ends it with `CRLF.CRLF`.
    pub fn data(&mut self, data: Vec<u8>) {
        self.enqueue(Command::Data(data));
    }

    /// Abandons the current transaction.
    pub fn rset(&mut self) {
        self.enqueue(Command::Rset);
    }

    /// Ends the session politely.
    pub fn quit(&mut self) {
        self.enqueue(Command::Quit);
    }

    fn enqueue(&mut self, command: Command) {
        if self.failed {
            return;
        }
        self.queue.push_back(command);
        self.advance();
    }

    /// Appends the bytes to send to `buf`; returns whether there were any.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> bool {
        if self.transmit.is_empty() {
            return false;
        }
        buf.append(&mut self.transmit);
        true
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The connection closed (or failed) under the session.
    pub fn handle_closed(&mut self, why: &str) {
        if self.failed {
            return;
        }
        if self.expect == Some(Expect::Quit) {
            self.expect = None;
            self.events.push_back(Event::Closed);
            return;
        }
        self.fail(temporary(format!(
            "Requested action aborted: upstream connection lost ({why})"
        )));
    }

    /// The connection could not be established: a `4xx` that says so (not "connection lost",
    /// which would send whoever reads it looking for a crash).
    pub fn handle_connect_failed(&mut self, why: &str) {
        if self.failed {
            return;
        }
        self.fail(temporary(format!(
            "Requested action aborted: cannot connect to the upstream ({why})"
        )));
    }

    /// A timer ran out while waiting for a reply.
    pub fn handle_timeout(&mut self) {
        let what = match self.expect {
            None => return,
            Some(Expect::Greeting | Expect::Ehlo | Expect::Helo) => "the greeting",
            Some(Expect::StartTls | Expect::Handshake) => "STARTTLS",
            Some(Expect::DataBody) => "the end of data",
            Some(_) => "a command",
        };
        self.fail(temporary(format!(
            "Requested action aborted: upstream timed out answering {what}"
        )));
    }

    /// One reply line from the upstream, without its CRLF.
    pub fn handle_line(&mut self, line: &[u8]) {
        if self.failed {
            return;
        }
        let Some((code, last, text)) = parse_line(line) else {
            return self.fail(temporary(
                "Requested action aborted: upstream sent an unparsable reply",
            ));
        };
        if !self.partial.is_empty() && code != self.partial_code {
            return self.fail(temporary(
                "Requested action aborted: upstream sent an inconsistent reply",
            ));
        }
        self.partial_code = code;
        self.partial.push(text);
        if last {
            // The texts are kept as the upstream sent them (an enhanced code stays in the
            // text, where `Reply::enhanced_code` finds it), so a relay quotes them unchanged.
            let reply = Reply::multiline(code, std::mem::take(&mut self.partial));
            self.handle_reply(reply);
        }
    }

    fn fail(&mut self, reply: Reply) {
        self.failed = true;
        self.ready = false;
        self.queue.clear();
        self.expect = None;
        self.events.push_back(Event::Failed(reply));
    }

    fn send(&mut self, line: &str) {
        self.transmit.extend_from_slice(line.as_bytes());
        self.transmit.extend_from_slice(b"\r\n");
    }

    fn handle_reply(&mut self, reply: Reply) {
        let Some(expect) = self.expect.take() else {
            return self.fail(temporary(
                "Requested action aborted: upstream spoke out of turn",
            ));
        };
        // 421 may come at any time: the service is closing the channel.
        if reply.code == 421 && expect != Expect::Quit {
            return self.fail(reply);
        }
        let ok = (200..300).contains(&reply.code);
        match expect {
            Expect::Greeting => {
                if reply.code != 220 {
                    return self.fail(reply);
                }
                self.send_hello();
            }
            Expect::Ehlo if ok => {
                self.caps = parse_capabilities(&reply);
                if !self.tls && self.config.starttls != StartTls::Never {
                    if self.caps.starttls {
                        self.send("STARTTLS");
                        self.expect = Some(Expect::StartTls);
                        return;
                    }
                    if self.config.starttls == StartTls::Required {
                        return self.fail(tls_unavailable("the upstream does not offer STARTTLS"));
                    }
                }
                self.ready = true;
                self.events.push_back(Event::Ready(self.caps.clone()));
            }
            Expect::StartTls if reply.code == 220 => {
                // Nothing is sent until the handshake is over.
                self.expect = Some(Expect::Handshake);
                self.events.push_back(Event::StartTls);
                return;
            }
            Expect::StartTls => {
                if self.config.starttls == StartTls::Required {
                    return self.fail(tls_unavailable(&format!(
                        "the upstream refused STARTTLS ({} {})",
                        reply.code,
                        reply.lines.join(" ")
                    )));
                }
                // Opportunistic: a refusal leaves the session as it was, in plaintext.
                self.ready = true;
                self.events.push_back(Event::Ready(self.caps.clone()));
            }
            Expect::Handshake => {
                return self.fail(temporary(
                    "Requested action aborted: upstream spoke during the TLS handshake",
                ));
            }
            Expect::Ehlo if !self.config.lmtp && (500..600).contains(&reply.code) => {
                self.send(&format!("HELO {}", self.config.helo_name));
                self.expect = Some(Expect::Helo);
            }
            Expect::Ehlo | Expect::Helo if !ok => return self.fail(reply),
            Expect::Helo if !self.tls && self.config.starttls == StartTls::Required => {
                return self.fail(tls_unavailable("the upstream does not speak ESMTP"));
            }
            Expect::Helo => {
                self.caps = Capabilities::default();
                self.ready = true;
                self.events.push_back(Event::Ready(self.caps.clone()));
            }
            Expect::Mail => {
                self.rcpts = 0;
                self.accepted.clear();
                self.events.push_back(Event::Mail(reply));
            }
            Expect::Rcpt(n) => {
                if ok {
                    self.accepted.push(n);
                }
                self.events.push_back(Event::Rcpt(n, reply));
            }
            Expect::DataCommand => {
                let body = self.body.take().unwrap_or_default();
                if reply.code == 354 {
                    self.transmit.extend_from_slice(&dot_stuff(&body));
                    self.expect = Some(Expect::DataBody);
                    if self.config.lmtp {
                        self.lmtp_pending = self.accepted.iter().copied().collect();
                    }
                } else {
                    self.events.push_back(Event::DataRefused(reply));
                }
            }
            Expect::DataBody => {
                if self.config.lmtp {
                    let n = self.lmtp_pending.pop_front().unwrap_or(0);
                    self.events.push_back(Event::LmtpData(n, reply));
                    if !self.lmtp_pending.is_empty() {
                        self.expect = Some(Expect::DataBody);
                    }
                } else {
                    self.events.push_back(Event::Data(reply));
                }
            }
            Expect::Rset => self.events.push_back(Event::Reset(reply)),
            Expect::Quit => {
                self.ready = false;
                self.events.push_back(Event::Closed);
            }
            Expect::Ehlo => unreachable!("handled above"),
        }
        self.advance();
    }

    /// Sends the next queued command if nothing is awaited.
    fn advance(&mut self) {
        while self.ready && self.expect.is_none() {
            let Some(command) = self.queue.pop_front() else {
                return;
            };
            match command {
                Command::Mail(from, params) => {
                    if let Some(refusal) = self.cannot_carry(&params) {
                        self.events.push_back(Event::Mail(refusal));
                        continue;
                    }
                    let mut line = format!("MAIL FROM:<{from}>");
                    if self.caps.esmtp {
                        if let (Some(size), Some(_)) = (params.size, self.caps.size) {
                            line.push_str(&format!(" SIZE={size}"));
                        }
                        if params.eight_bit && self.caps.eight_bit_mime {
                            line.push_str(" BODY=8BITMIME");
                        }
                        if params.smtputf8 {
                            line.push_str(" SMTPUTF8");
                        }
                    }
                    self.send(&line);
                    self.expect = Some(Expect::Mail);
                }
                Command::Rcpt(to) => {
                    let n = self.rcpts;
                    self.rcpts += 1;
                    self.send(&format!("RCPT TO:<{to}>"));
                    self.expect = Some(Expect::Rcpt(n));
                }
                Command::Data(body) => {
                    self.body = Some(body);
                    self.send("DATA");
                    self.expect = Some(Expect::DataCommand);
                }
                Command::Rset => {
                    self.send("RSET");
                    self.expect = Some(Expect::Rset);
                }
                Command::Quit => {
                    self.send("QUIT");
                    self.expect = Some(Expect::Quit);
                }
            }
        }
    }

    /// A local refusal when the upstream cannot carry the transaction unchanged.
    fn cannot_carry(&self, params: &MailParams) -> Option<Reply> {
        if params.smtputf8 && !self.caps.smtputf8 {
            // RFC 6531 3.4: a message needing SMTPUTF8 is not downgraded.
            return Some(Reply::enhanced(
                553,
                EnhancedCode::new(5, 6, 7),
                "Requested action not taken: upstream does not support SMTPUTF8",
            ));
        }
        if params.eight_bit && !self.caps.eight_bit_mime {
            // RFC 6152 3: 8-bit data is not sent to a server without 8BITMIME.
            return Some(Reply::enhanced(
                554,
                EnhancedCode::new(5, 6, 3),
                "Requested action not taken: upstream does not support 8BITMIME",
            ));
        }
        if let (Some(size), Some(limit)) = (params.size, self.caps.size) {
            if limit != 0 && size > limit {
                return Some(Reply::enhanced(
                    552,
                    EnhancedCode::new(5, 3, 4),
                    "Requested mail action aborted: message exceeds upstream size limit",
                ));
            }
        }
        None
    }
}

/// Parses `250-text` / `250 text` / `250`: (code, is last line, text).
fn parse_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let text = String::from_utf8_lossy(line);
    let bytes = text.as_bytes();
    if bytes.len() < 3
        || !bytes[..3].iter().all(u8::is_ascii_digit)
        || !(b'2'..=b'5').contains(&bytes[0])
    {
        return None;
    }
    let code: u16 = text[..3].parse().ok()?;
    match bytes.get(3) {
        None => Some((code, true, String::new())),
        Some(b' ') => Some((code, true, text[4..].to_string())),
        Some(b'-') => Some((code, false, text[4..].to_string())),
        Some(_) => None,
    }
}

fn parse_capabilities(reply: &Reply) -> Capabilities {
    let mut caps = Capabilities {
        esmtp: true,
        ..Capabilities::default()
    };
    // The first line is the server's name.
    for line in reply.lines.iter().skip(1) {
        let mut words = line.split_ascii_whitespace();
        let keyword = words.next().unwrap_or("").to_ascii_uppercase();
        match keyword.as_str() {
            "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "8BITMIME" => caps.eight_bit_mime = true,
            "STARTTLS" => caps.starttls = true,
            "SMTPUTF8" => caps.smtputf8 = true,
            "PIPELINING" => caps.pipelining = true,
            _ => {}
        }
    }
    caps
}

/// Dot-stuffs a message (RFC 5321 4.5.2) and appends the end-of-data marker.
pub(crate) fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 8);
    let mut at_line_start = true;
    let mut rest = data;
    while !rest.is_empty() {
        if at_line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr(b'\n', rest) {
            Some(i) => {
                out.extend_from_slice(&rest[..=i]);
                rest = &rest[i + 1..];
                at_line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                rest = &[];
                at_line_start = false;
            }
        }
    }
    if !data.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{Config, Decision, Output, Receiver, Request, Session};
    use std::sync::Arc;

    /// Runs a client against our own server session in memory, answering messages with
    /// `verdict`. Returns the client's events and the messages the server received.
    fn against_server(
        config: Config,
        drive: impl FnOnce(&mut Client),
        verdict: Reply,
    ) -> (Vec<Event>, Vec<crate::smtp::Message>) {
        let session = Session::new(Arc::new(config), "127.0.0.1:2525".parse().unwrap());
        let mut server = Receiver::new(session);
        let mut client = Client::new(ClientConfig::smtp("client.example"));
        let mut out = Vec::new();
        server.start(&mut out);
        let mut to_client: Vec<u8> = Vec::new();
        let mut to_server: Vec<u8> = Vec::new();
        let mut events = Vec::new();
        let mut messages = Vec::new();
        drive(&mut client);
        for _ in 0..1000 {
            let mut decide = false;
            for o in out.drain(..) {
                match o {
                    Output::Reply(r) => r.write_to(&mut to_client),
                    Output::Decide(Request::Message(m)) => {
                        messages.push(m);
                        decide = true;
                    }
                    Output::Close | Output::Reset => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            if decide {
                server
                    .resolve(Decision::Reply(verdict.clone()), &mut out)
                    .unwrap();
                continue;
            }
            // Server → client, one line at a time.
            if let Some(i) = to_client.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = to_client.drain(..i + 2).collect();
                client.handle_line(&line[..i]);
                while let Some(e) = client.poll_event() {
                    events.push(e);
                }
                client.poll_transmit(&mut to_server);
                continue;
            }
            // Client → server, through the server's own receiver.
            if !to_server.is_empty() && server.wants_input() {
                let used = server.receive(&to_server, &mut out);
                to_server.drain(..used);
                continue;
            }
            break;
        }
        (events, messages)
    }

    fn ok_events(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Ready(_) => "ready".to_string(),
                Event::StartTls => "starttls".to_string(),
                Event::Mail(r) => format!("mail {}", r.code),
                Event::Rcpt(n, r) => format!("rcpt{n} {}", r.code),
                Event::DataRefused(r) => format!("data-refused {}", r.code),
                Event::Data(r) => format!("data {}", r.code),
                Event::LmtpData(n, r) => format!("lmtp{n} {}", r.code),
                Event::Reset(r) => format!("rset {}", r.code),
                Event::Closed => "closed".to_string(),
                Event::Failed(r) => format!("failed {}", r.code),
            })
            .collect()
    }

    #[test]
    fn a_whole_transaction_against_our_server_arrives_byte_exact() {
        let data = b"Subject: t\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend".to_vec();
        let sent = data.clone();
        let (events, messages) = against_server(
            Config::default(),
            move |c| {
                c.mail("a@example.com", MailParams::for_message(&sent, false));
                c.rcpt("b@example.com");
                c.rcpt("c@example.com");
                c.data(sent);
                c.quit();
            },
            Reply::ok(),
        );
        assert_eq!(
            ok_events(&events),
            [
                "ready",
                "mail 250",
                "rcpt0 250",
                "rcpt1 250",
                "data 250",
                "closed"
            ]
        );
        let Event::Ready(caps) = &events[0] else {
            panic!()
        };
        assert_eq!(caps.size, Some(33554432));
        assert!(caps.eight_bit_mime && caps.esmtp && !caps.smtputf8);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].data, data);
        assert_eq!(messages[0].rcpt_tos, ["b@example.com", "c@example.com"]);
        assert_eq!(messages[0].mail_options, [format!("SIZE={}", data.len())]);
    }

    #[test]
    fn an_empty_message_and_a_server_refusal_come_back_as_events() {
        let (events, messages) = against_server(
            Config::default(),
            |c| {
                c.mail("a@example.com", MailParams::default());
                c.rcpt("b@example.com");
                c.data(Vec::new());
            },
            Reply::new(554, "no thanks"),
        );
        assert_eq!(
            ok_events(&events),
            ["ready", "mail 250", "rcpt0 250", "data 554"]
        );
        assert_eq!(messages[0].data, b"");
    }

    #[test]
    fn smtputf8_and_8bit_are_refused_locally_when_the_upstream_lacks_them() {
        let (events, _) = against_server(
            Config::default(),
            |c| {
                c.mail(
                    "a@example.com",
                    MailParams {
                        smtputf8: true,
                        ..Default::default()
                    },
                );
                c.mail(
                    "a@example.com",
                    MailParams {
                        size: Some(10),
                        ..Default::default()
                    },
                );
            },
            Reply::ok(),
        );
        assert_eq!(ok_events(&events), ["ready", "mail 553", "mail 250"]);
        let config = Config {
            decode_data: true, // no 8BITMIME advertised
            ..Config::default()
        };
        let (events, _) = against_server(
            config,
            |c| {
                c.mail(
                    "a@example.com",
                    MailParams {
                        eight_bit: true,
                        ..Default::default()
                    },
                )
            },
            Reply::ok(),
        );
        assert_eq!(ok_events(&events), ["ready", "mail 554"]);
    }

    #[test]
    fn ehlo_refused_falls_back_to_helo() {
        let mut c = Client::new(ClientConfig::smtp("me"));
        c.handle_line(b"220 old.example ready");
        let mut sent = Vec::new();
        c.poll_transmit(&mut sent);
        assert_eq!(sent, b"EHLO me\r\n");
        c.handle_line(b"502 what?");
        sent.clear();
        c.poll_transmit(&mut sent);
        assert_eq!(sent, b"HELO me\r\n");
        c.mail("a@x", MailParams::for_message(b"abc", false));
        c.handle_line(b"250 hi");
        assert_eq!(c.poll_event(), Some(Event::Ready(Capabilities::default())));
        sent.clear();
        c.poll_transmit(&mut sent);
        assert_eq!(
            sent, b"MAIL FROM:<a@x>\r\n",
            "no ESMTP parameters after HELO"
        );
    }

    fn sent(c: &mut Client) -> String {
        let mut out = Vec::new();
        c.poll_transmit(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn with_starttls(policy: StartTls) -> Client {
        let mut config = ClientConfig::smtp("me");
        config.starttls = policy;
        Client::new(config)
    }

    #[test]
    fn starttls_when_offered_then_ehlo_again_with_the_new_capabilities() {
        let mut c = with_starttls(StartTls::IfOffered);
        c.mail("a@x", MailParams::default());
        c.handle_line(b"220 mx ready");
        assert_eq!(sent(&mut c), "EHLO me\r\n");
        c.handle_line(b"250-mx");
        c.handle_line(b"250-SIZE 10");
        c.handle_line(b"250 STARTTLS");
        assert_eq!(sent(&mut c), "STARTTLS\r\n");
        assert_eq!(c.poll_event(), None, "not ready before TLS");
        c.handle_line(b"220 go ahead");
        assert_eq!(c.poll_event(), Some(Event::StartTls));
        assert_eq!(sent(&mut c), "", "nothing is sent during the handshake");
        assert!(c.is_waiting(), "the handshake is timed like a reply");
        c.handle_tls_established();
        assert!(c.is_tls());
        assert_eq!(sent(&mut c), "EHLO me\r\n");
        c.handle_line(b"250-mx");
        c.handle_line(b"250 8BITMIME");
        let Some(Event::Ready(caps)) = c.poll_event() else {
            panic!("not ready")
        };
        assert!(caps.eight_bit_mime && !caps.starttls && caps.size.is_none());
        assert_eq!(sent(&mut c), "MAIL FROM:<a@x>\r\n");
    }

    #[test]
    fn a_reply_during_the_handshake_fails_the_session() {
        let mut c = with_starttls(StartTls::IfOffered);
        c.handle_line(b"220 mx");
        c.handle_line(b"250-mx");
        c.handle_line(b"250 STARTTLS");
        c.handle_line(b"220 go ahead");
        assert_eq!(c.poll_event(), Some(Event::StartTls));
        c.handle_line(b"250 injected");
        assert!(matches!(c.poll_event(), Some(Event::Failed(r)) if r.code == 451));
    }

    #[test]
    fn required_starttls_fails_without_it_and_on_a_refusal() {
        let mut c = with_starttls(StartTls::Required);
        c.mail("a@x", MailParams::default());
        c.handle_line(b"220 mx");
        sent(&mut c);
        c.handle_line(b"250-mx");
        c.handle_line(b"250 8BITMIME");
        assert!(matches!(c.poll_event(), Some(Event::Failed(r)) if r.code == 451));
        assert_eq!(sent(&mut c), "", "nothing relayed in plaintext");

        let mut c = with_starttls(StartTls::Required);
        c.handle_line(b"220 mx");
        c.handle_line(b"250-mx");
        c.handle_line(b"250 STARTTLS");
        sent(&mut c);
        c.handle_line(b"454 4.7.0 not now");
        assert!(matches!(c.poll_event(), Some(Event::Failed(r)) if r.code == 451));

        // HELO fallback: no ESMTP, so no STARTTLS either.
        let mut c = with_starttls(StartTls::Required);
        c.handle_line(b"220 mx");
        c.handle_line(b"500 what");
        assert_eq!(sent(&mut c), "EHLO me\r\nHELO me\r\n");
        c.handle_line(b"250 hi");
        assert!(matches!(c.poll_event(), Some(Event::Failed(r)) if r.code == 451));
    }

    #[test]
    fn opportunistic_goes_on_in_plaintext_when_not_offered_or_refused() {
        let mut c = with_starttls(StartTls::IfOffered);
        c.handle_line(b"220 mx");
        c.handle_line(b"250 mx");
        assert!(matches!(c.poll_event(), Some(Event::Ready(_))));
        let mut c = with_starttls(StartTls::IfOffered);
        c.handle_line(b"220 mx");
        c.handle_line(b"250-mx");
        c.handle_line(b"250 STARTTLS");
        c.handle_line(b"454 4.7.0 not now");
        assert!(matches!(c.poll_event(), Some(Event::Ready(_))));
        assert!(!c.is_tls());
        // Never: STARTTLS offered but not used.
        let mut c = Client::new(ClientConfig::smtp("me"));
        c.handle_line(b"220 mx");
        c.handle_line(b"250-mx");
        c.handle_line(b"250 STARTTLS");
        assert!(matches!(c.poll_event(), Some(Event::Ready(caps)) if caps.starttls));
        assert_eq!(sent(&mut c), "EHLO me\r\n");
    }

    #[test]
    fn lmtp_gives_one_reply_per_accepted_recipient() {
        let mut c = Client::new(ClientConfig::lmtp("me"));
        let mut sent = Vec::new();
        c.handle_line(b"220 lmtp ready");
        c.handle_line(b"250-lmtp.example");
        c.handle_line(b"250 8BITMIME");
        c.mail("a@x", MailParams::default());
        c.rcpt("l1@x");
        c.rcpt("nobody@x");
        c.rcpt("l2@x");
        c.data(b"hi".to_vec());
        for reply in [
            &b"250 ok"[..],
            b"250 ok",
            b"550 no such list",
            b"250 ok",
            b"354 go",
        ] {
            c.handle_line(reply);
        }
        c.poll_transmit(&mut sent);
        let text = String::from_utf8(sent).unwrap();
        assert!(text.starts_with("LHLO me\r\n"));
        assert!(text.ends_with("DATA\r\nhi\r\n.\r\n"), "{text:?}");
        c.handle_line(b"250 delivered to l1");
        c.handle_line(b"452 l2 over quota");
        let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(
            ok_events(&events),
            [
                "ready",
                "mail 250",
                "rcpt0 250",
                "rcpt1 550",
                "rcpt2 250",
                "lmtp0 250",
                "lmtp2 452"
            ]
        );
    }

    #[test]
    fn failures_are_temporary_and_final() {
        let mut c = Client::new(ClientConfig::smtp("me"));
        c.handle_line(b"220 hi");
        c.handle_line(b"250 hi");
        c.mail("a@x", MailParams::default());
        c.handle_line(b"421 shutting down");
        c.rcpt("b@x");
        let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(ok_events(&events), ["ready", "failed 421"]);
        assert!(c.is_finished());

        let mut c = Client::new(ClientConfig::smtp("me"));
        c.handle_line(b"220 hi");
        c.handle_timeout();
        assert!(matches!(c.poll_event(), Some(Event::Failed(r)) if r.code == 451));

        let mut c = Client::new(ClientConfig::smtp("me"));
        c.handle_line(b"garbage");
        assert!(matches!(c.poll_event(), Some(Event::Failed(r)) if r.code == 451));

        let mut c = Client::new(ClientConfig::smtp("me"));
        c.handle_line(b"220 hi");
        c.handle_line(b"250 hi");
        c.handle_closed("reset by peer");
        let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(
            matches!(&events[1], Event::Failed(r) if r.code == 451 && r.lines[0].contains("reset by peer"))
        );
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b".a\r\nb\r\n."), b"..a\r\nb\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b"x.y\r\n..z"), b"x.y\r\n...z\r\n.\r\n");
    }
}
