//! The table of every fixed reply text the session sends: pure data, crate-private.
//!
//! Texts taken from CPython 3.11's `smtpd.py` are byte-exact; the few
//! replies CPython lacks (marked "not in CPython") cover cases where CPython
//! crashes or misbehaves. The session and its tests use only this table; the
//! replies built from the [`Config`](super::Config) (greeting, HELO, EHLO, too
//! many errors) are made in `session.rs`.

use super::reply::Reply;

/// A fixed reply: code and text known at compile time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Canned {
    /// The reply code.
    pub code: u16,
    /// The reply text (without the code).
    pub text: &'static str,
}

impl Canned {
    /// Builds a table entry.
    pub const fn new(code: u16, text: &'static str) -> Canned {
        Canned { code, text }
    }

    /// The entry as a [`Reply`].
    pub fn reply(self) -> Reply {
        Reply::new(self.code, self.text)
    }

    /// The reply line as sent, without CRLF (`"250 OK"`).
    pub fn line(self) -> String {
        format!("{} {}", self.code, self.text)
    }
}

impl From<Canned> for Reply {
    fn from(c: Canned) -> Reply {
        c.reply()
    }
}

/// Generic success; also the default verdict on a message.
pub const OK: Canned = Canned::new(250, "OK");
/// Reply to QUIT, followed by closing the connection.
pub const BYE: Canned = Canned::new(221, "Bye");
/// Empty command line; also (not in CPython) a line with a bare CR or LF or
/// a line that is not UTF-8.
pub const BAD_SYNTAX: Canned = Canned::new(500, "Error: bad syntax");
/// Command line longer than the limit for its command.
pub const LINE_TOO_LONG: Canned = Canned::new(500, "Error: line too long");
/// Message body longer than `data_size_limit`.
pub const TOO_MUCH_DATA: Canned = Canned::new(552, "Error: Too much mail data");
/// Reply to an accepted DATA command.
pub const START_DATA: Canned = Canned::new(354, "End data with <CR><LF>.<CR><LF>");
/// HELO without argument.
pub const HELO_SYNTAX: Canned = Canned::new(501, "Syntax: HELO hostname");
/// EHLO without argument.
pub const EHLO_SYNTAX: Canned = Canned::new(501, "Syntax: EHLO hostname");
/// A second HELO or EHLO.
pub const DUPLICATE_HELO: Canned = Canned::new(503, "Duplicate HELO/EHLO");
/// NOOP with an argument.
pub const NOOP_SYNTAX: Canned = Canned::new(501, "Syntax: NOOP");
/// RSET with an argument.
pub const RSET_SYNTAX: Canned = Canned::new(501, "Syntax: RSET");
/// DATA with an argument.
pub const DATA_SYNTAX: Canned = Canned::new(501, "Syntax: DATA");
/// VRFY without argument.
pub const VRFY_SYNTAX: Canned = Canned::new(501, "Syntax: VRFY <address>");
/// VRFY with a parsable address.
pub const CANNOT_VRFY: Canned = Canned::new(
    252,
    "Cannot VRFY user, but will accept message and attempt delivery",
);
/// EXPN, whatever its argument.
pub const EXPN_NOT_IMPLEMENTED: Canned = Canned::new(502, "EXPN not implemented");
/// MAIL, RCPT or DATA before HELO/EHLO.
pub const SEND_HELO_FIRST: Canned = Canned::new(503, "Error: send HELO first");
/// RCPT before MAIL.
pub const NEED_MAIL: Canned = Canned::new(503, "Error: need MAIL command");
/// DATA before any accepted RCPT.
pub const NEED_RCPT: Canned = Canned::new(503, "Error: need RCPT command");
/// MAIL inside a transaction.
pub const NESTED_MAIL: Canned = Canned::new(503, "Error: nested MAIL command");
/// MAIL syntax error after HELO.
pub const MAIL_SYNTAX: Canned = Canned::new(501, "Syntax: MAIL FROM: <address>");
/// MAIL syntax error after EHLO.
pub const MAIL_SYNTAX_ESMTP: Canned =
    Canned::new(501, "Syntax: MAIL FROM: <address> [SP <mail-parameters>]");
/// RCPT syntax error after HELO.
pub const RCPT_SYNTAX: Canned = Canned::new(501, "Syntax: RCPT TO: <address>");
/// RCPT syntax error after EHLO.
pub const RCPT_SYNTAX_ESMTP: Canned =
    Canned::new(501, "Syntax: RCPT TO: <address> [SP <mail-parameters>]");
/// `BODY=` with a value other than 7BIT or 8BITMIME.
pub const BODY_INVALID: Canned = Canned::new(501, "Error: BODY can only be one of 7BIT, 8BITMIME");
/// `SMTPUTF8=value`.
pub const SMTPUTF8_NO_ARGS: Canned = Canned::new(501, "Error: SMTPUTF8 takes no arguments");
/// `SIZE=` above `data_size_limit`.
pub const SIZE_EXCEEDED: Canned = Canned::new(
    552,
    "Error: message size exceeds fixed maximum message size",
);
/// MAIL with parameters the server does not know.
pub const MAIL_PARAMS_UNKNOWN: Canned = Canned::new(
    555,
    "MAIL FROM parameters not recognized or not implemented",
);
/// RCPT with parameters (none are known).
pub const RCPT_PARAMS_UNKNOWN: Canned =
    Canned::new(555, "RCPT TO parameters not recognized or not implemented");
/// RCPT beyond `max_recipients` (not in CPython).
pub const TOO_MANY_RECIPIENTS: Canned = Canned::new(452, "Error: too many recipients");
/// Non-ASCII address in a transaction without SMTPUTF8 (not in CPython).
pub const NON_ASCII_ADDRESS: Canned =
    Canned::new(553, "Error: non-ASCII address requires SMTPUTF8");
/// Message body with a lone LF under `BareLf::Reject` (not in CPython).
pub const BARE_LF: Canned = Canned::new(554, "Error: bare LF not allowed in message data");
/// Message body that is not UTF-8 under `decode_data` (not in CPython).
pub const DATA_NOT_UTF8: Canned = Canned::new(554, "Error: message data is not valid UTF-8");

/// HELP without argument.
pub const HELP_ALL: Canned = Canned::new(
    250,
    "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY",
);
/// HELP with an unknown topic.
pub const HELP_UNKNOWN: Canned = Canned::new(
    501,
    "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY",
);
/// `HELP EHLO`.
pub const HELP_EHLO: Canned = Canned::new(250, "Syntax: EHLO hostname");
/// `HELP HELO`.
pub const HELP_HELO: Canned = Canned::new(250, "Syntax: HELO hostname");
/// `HELP MAIL` after HELO.
pub const HELP_MAIL: Canned = Canned::new(250, "Syntax: MAIL FROM: <address>");
/// `HELP MAIL` after EHLO.
pub const HELP_MAIL_ESMTP: Canned =
    Canned::new(250, "Syntax: MAIL FROM: <address> [SP <mail-parameters>]");
/// `HELP RCPT` after HELO.
pub const HELP_RCPT: Canned = Canned::new(250, "Syntax: RCPT TO: <address>");
/// `HELP RCPT` after EHLO.
pub const HELP_RCPT_ESMTP: Canned =
    Canned::new(250, "Syntax: RCPT TO: <address> [SP <mail-parameters>]");
/// `HELP DATA`.
pub const HELP_DATA: Canned = Canned::new(250, "Syntax: DATA");
/// `HELP RSET`.
pub const HELP_RSET: Canned = Canned::new(250, "Syntax: RSET");
/// `HELP NOOP`.
pub const HELP_NOOP: Canned = Canned::new(250, "Syntax: NOOP");
/// `HELP QUIT`.
pub const HELP_QUIT: Canned = Canned::new(250, "Syntax: QUIT");
/// `HELP VRFY`.
pub const HELP_VRFY: Canned = Canned::new(250, "Syntax: VRFY <address>");

/// The reply to `HELP topic`; `topic` is compared case-insensitively and
/// `extended` tells whether the client said EHLO.
pub fn help(topic: &str, extended: bool) -> Canned {
    match topic.to_uppercase().as_str() {
        "EHLO" => HELP_EHLO,
        "HELO" => HELP_HELO,
        "MAIL" if extended => HELP_MAIL_ESMTP,
        "MAIL" => HELP_MAIL,
        "RCPT" if extended => HELP_RCPT_ESMTP,
        "RCPT" => HELP_RCPT,
        "DATA" => HELP_DATA,
        "RSET" => HELP_RSET,
        "NOOP" => HELP_NOOP,
        "QUIT" => HELP_QUIT,
        "VRFY" => HELP_VRFY,
        _ => HELP_UNKNOWN,
    }
}

/// The syntax error for MAIL (`extended` after EHLO).
pub fn mail_syntax(extended: bool) -> Canned {
    if extended {
        MAIL_SYNTAX_ESMTP
    } else {
        MAIL_SYNTAX
    }
}

/// The syntax error for RCPT (`extended` after EHLO).
pub fn rcpt_syntax(extended: bool) -> Canned {
    if extended {
        RCPT_SYNTAX_ESMTP
    } else {
        RCPT_SYNTAX
    }
}

/// Whether a reply to a command line counts as a protocol error for `max_errors`: unknown
/// command, syntax error, bad sequence, unknown parameter.
pub fn is_protocol_error(code: u16) -> bool {
    matches!(code, 500..=504 | 555)
}

/// `500 Error: command "{command}" not recognized`; `command` must already
/// be made safe to echo.
pub fn command_not_recognized(command: &str) -> Reply {
    Reply::new(500, format!("Error: command \"{command}\" not recognized"))
}

/// `502 Could not VRFY {arg}`; `arg` must already be made safe to echo.
pub fn could_not_vrfy(arg: &str) -> Reply {
    Reply::new(502, format!("Could not VRFY {arg}"))
}
