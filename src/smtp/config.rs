//! Per-server settings of an SMTP session ([`Config`]) and their validation.

use std::fmt;

/// CPython's `DATA_SIZE_DEFAULT`: the default message size limit in bytes.
pub const DATA_SIZE_DEFAULT: usize = 33_554_432;

/// CPython's `SMTPChannel.command_size_limit`: the base length limit of a
/// command line (without its CRLF).
pub const COMMAND_SIZE_LIMIT: usize = 512;

/// How many bytes the `SIZE` extension adds to the `MAIL` command limit.
pub const SIZE_EXTENSION_BYTES: usize = 26;

/// How many bytes the `SMTPUTF8` extension adds to the `MAIL` command limit.
pub const SMTPUTF8_EXTENSION_BYTES: usize = 10;

/// What to do with a line feed in the message body that is not preceded by
/// a carriage return.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BareLf {
    /// Refuse the message with a 554 reply and reset the transaction.
    #[default]
    Reject,
    /// Accept the message, turning each lone LF into CRLF.
    Normalize,
}

/// Settings shared by all sessions of one server.
///
/// `Config::default()` gives CPython's `SMTPChannel` defaults, except for
/// `hostname` (CPython calls `socket.getfqdn()`, which is I/O this module does
/// not do; the caller should fill it in) and `product`. Settings may be added in
/// minor versions: start from `Config::default()` and assign the fields you change.
///
/// ```
/// let mut config = smtpd::smtp::Config::default();
/// config.hostname = "mx.example.org".to_owned();
/// config.max_recipients = 100;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Name announced in the greeting (`220 {hostname} {product}`) and in the
    /// first line of the HELO/EHLO reply (`250 {hostname}`).
    pub hostname: String,
    /// Product string announced in the greeting.
    pub product: String,
    /// Largest accepted message body in bytes; 0 means no limit.
    pub data_size_limit: usize,
    /// Offer and accept the SMTPUTF8 extension (RFC 6531).
    pub enable_smtputf8: bool,
    /// CPython's `decode_data`: the message must be UTF-8, 8BITMIME is not
    /// offered and `BODY=` is not accepted. Cannot be combined with
    /// `enable_smtputf8`.
    pub decode_data: bool,
    /// Join message lines with `\n` (CPython's form) instead of keeping CRLF.
    pub lf_newlines: bool,
    /// Largest number of recipients per transaction; 0 means no limit.
    pub max_recipients: usize,
    /// After this many protocol errors (replies 500–504 and 555: unknown commands, bad
    /// syntax, bad sequence, over-long lines) the session answers
    /// `421 4.7.0 <hostname> Error: too many errors` and closes; 0 means no limit.
    pub max_errors: usize,
    /// Policy for lone LF bytes in the message body.
    pub bare_lf: BareLf,
    /// Ask the caller to decide each connection before the greeting
    /// ([`Request::Connect`](super::Request::Connect)) instead of greeting at once.
    pub check_connect: bool,
    /// Ask the caller to decide each HELO/EHLO ([`Request::Helo`](super::Request::Helo))
    /// before the built-in handling.
    pub check_helo: bool,
    /// Ask the caller to decide each syntactically valid MAIL FROM
    /// ([`Request::Mail`](super::Request::Mail)) instead of accepting it at once.
    pub check_mail: bool,
    /// Ask the caller to decide each syntactically valid RCPT TO
    /// ([`Request::Rcpt`](super::Request::Rcpt)) instead of accepting it at once.
    pub check_rcpt: bool,
    /// Upper-case verbs the caller handles itself ([`Request::Command`](super::Request::Command)):
    /// new commands, or built-in ones it overrides (Python's `smtp_XXX` methods).
    pub custom_verbs: Vec<String>,
    /// The EHLO keywords after the hostname line, replacing the default list
    /// ([`default_ehlo_keywords`]) when set.
    pub ehlo_keywords: Option<Vec<String>>,
    /// Offer STARTTLS (RFC 3207): EHLO lists it before TLS, and the command answers
    /// `220 2.0.0 Ready to start TLS` with [`Output::StartTls`](super::Output::StartTls).
    /// Off (the default), `STARTTLS` is an unknown command, as in CPython. Set it only when
    /// the caller can run a TLS handshake.
    pub starttls: bool,
    /// Before TLS, serve only EHLO, HELO, NOOP, RSET, QUIT and STARTTLS; everything else gets
    /// `530 5.7.0 Must issue a STARTTLS command first` (RFC 3207 4; never on a public MX).
    pub require_tls: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            hostname: "localhost".to_owned(),
            product: "smtpd-rs 0.1".to_owned(),
            data_size_limit: DATA_SIZE_DEFAULT,
            enable_smtputf8: false,
            decode_data: false,
            lf_newlines: false,
            max_recipients: 0,
            max_errors: 0,
            bare_lf: BareLf::Reject,
            check_connect: false,
            check_helo: false,
            check_mail: false,
            check_rcpt: false,
            custom_verbs: Vec::new(),
            ehlo_keywords: None,
            starttls: false,
            require_tls: false,
        }
    }
}

impl Config {
    /// Checks that the settings can be used together.
    ///
    /// Sessions assume a validated configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.enable_smtputf8 && self.decode_data {
            return Err(ConfigError::DecodeDataWithSmtputf8);
        }
        Ok(())
    }
}

/// The EHLO keywords CPython's `SMTPChannel` announces for `config`: `SIZE n` when a limit is
/// set, `8BITMIME` unless `decode_data`, `SMTPUTF8` when enabled, and `HELP`. What
/// [`Config::ehlo_keywords`] replaces when set.
pub fn default_ehlo_keywords(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    if config.data_size_limit != 0 {
        lines.push(format!("SIZE {}", config.data_size_limit));
    }
    if !config.decode_data {
        lines.push("8BITMIME".to_owned());
    }
    if config.enable_smtputf8 {
        lines.push("SMTPUTF8".to_owned());
    }
    lines.push("HELP".to_owned());
    lines
}

/// A configuration that [`Config::validate`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigError {
    /// `decode_data` and `enable_smtputf8` were both set.
    DecodeDataWithSmtputf8,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::DecodeDataWithSmtputf8 => f.write_str(
                "decode_data and enable_SMTPUTF8 cannot be set to True at the same time",
            ),
        }
    }
}

impl std::error::Error for ConfigError {}
