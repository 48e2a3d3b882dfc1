//! Command line parsing compatible with `python3 -m smtpd` (CPython 3.11).
//!
//! The accepted syntax is
//! `smtpd [options] [localhost:localport [remotehost:remoteport]]`.
//! Option handling follows Python's `getopt.getopt` (not `gnu_getopt`):
//! option parsing stops at the first non-option argument, long options may
//! be abbreviated to any unique prefix, and all options are read before any
//! of them takes effect. Options then act in command line order, so `-h`
//! before an invalid `-s` prints the help, while the reverse order reports
//! the invalid size.
//!
//! Every option is one row of `OPTIONS`: its names, whether it takes an argument, the
//! setter that parses and stores the argument, and its help, from which [`usage_text`] is
//! written. Adding an option is adding a row (and a field of [`Options`] for its value).

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use ipnet::IpNet;

use crate::servers::debugging::Print;
use crate::servers::faults::Fault;
use crate::servers::mailman::Suffixes;
use crate::servers::RelayMode;

/// Settings gathered from the command line, mirroring CPython's `Options`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Whether to switch to the `nobody` user (`-n`/`--nosetuid` clears it).
    pub setuid: bool,
    /// Name of the server class to run (`-c`/`--class`), `PureProxy` by default.
    pub classname: String,
    /// Message size limit from `-s`/`--size`; `None` when not given, and
    /// `Some(0)` means "no limit".
    pub size_limit: Option<usize>,
    /// Whether the SMTPUTF8 extension is enabled (`-u`/`--smtputf8`).
    pub enable_smtputf8: bool,
    /// Whether debugging output is enabled (`-d`/`--debug`).
    pub debug: bool,
    /// Host name or address to listen on (empty means all interfaces).
    pub localhost: String,
    /// Port to listen on.
    pub localport: u16,
    /// Host name or address of the upstream server.
    pub remotehost: String,
    /// Port of the upstream server.
    pub remoteport: u16,
    /// `--relay-mode live|after-data` (PureProxy); `None` for the class default.
    pub relay_mode: Option<RelayMode>,
    /// `--trusted NET[,NET...]` (repeatable): networks allowed to relay besides loopback, and
    /// exempt from the per-address connection limit. A bare address is a one-address network.
    pub trusted: Vec<IpNet>,
    /// `--open-relay`: relay for anybody.
    pub open_relay: bool,
    /// `--upstream-timeout SECS` (at least 1): connect and reply timeout towards the upstream.
    pub upstream_timeout: Option<u64>,
    /// `--upstream-tls off|opportunistic|required|implicit`; `None`: opportunistic.
    pub upstream_tls: Option<crate::client::UpstreamTlsMode>,
    /// `--upstream-ca FILE`: trust this CA (PEM) for the upstream instead of the system roots.
    pub upstream_ca: Option<PathBuf>,
    /// `--upstream-tls-name NAME`: the name the upstream's certificate must carry; `None`: the
    /// remote host as given.
    pub upstream_tls_name: Option<String>,
    /// `--hostname NAME`: the name in the greeting, the HELO/EHLO reply, the relay's EHLO and
    /// its `Received:` header; `None`: the machine's FQDN, as CPython finds it.
    pub hostname: Option<String>,
    /// `--bare-lf reject|normalize`: what a lone LF in a message body gets; `None`: reject.
    pub bare_lf: Option<crate::smtp::BareLf>,
    /// `--mailman-lmtp HOST:PORT|PATH` (MailmanProxy): Mailman 3's LMTP runner.
    pub mailman_lmtp: Option<LmtpTarget>,
    /// `--mailman2-prefix DIR` (MailmanProxy): a Mailman 2 installation instead.
    pub mailman2_prefix: Option<String>,
    /// `--mailman-suffixes cpython|mailman3` (MailmanProxy): which addresses are list
    /// candidates; `None` for the class default.
    pub mailman_suffixes: Option<Suffixes>,
    /// `--mailman-domain DOMAIN` (MailmanProxy, Mailman 3): the list domain to ask about.
    pub mailman_domain: Option<String>,
    /// The `--limit-*`, `--greeting-delay` and `--backlog` options; `None` keeps the
    /// library default (see `docs/limits.md`).
    pub limits: Limits,
    /// DebuggingServer's capture options (`--maildir`, `--mbox`, `--jsonl`, `--print`,
    /// `--keep`) and the faults (`--fault`, any class).
    pub capture: CaptureOptions,
    /// The `--tls-*`, `--require-starttls` and `--implicit-tls` options.
    pub tls: TlsOptions,
}

/// Where DebuggingServer keeps messages and what it prints; the faults in front of any class.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureOptions {
    /// `--maildir DIR`.
    pub maildir: Option<PathBuf>,
    /// `--mbox FILE`.
    pub mbox: Option<PathBuf>,
    /// `--jsonl FILE` (`-`: stdout).
    pub jsonl: Option<PathBuf>,
    /// `--print cpython|raw|none`; `None`: CPython's block, or nothing with `--jsonl -`.
    pub print: Option<Print>,
    /// `--keep N`: at most N messages in the Maildir and lines in the JSON lines file.
    pub keep: Option<usize>,
    /// `--fault SPEC` (repeatable), in order.
    pub faults: Vec<Fault>,
}

impl CaptureOptions {
    /// Whether a DebuggingServer-only option was given.
    pub fn any_capture(&self) -> bool {
        self.maildir.is_some()
            || self.mbox.is_some()
            || self.jsonl.is_some()
            || self.print.is_some()
            || self.keep.is_some()
    }
}

/// TLS on the listener, from the command line (feature `tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// `--tls-cert FILE`: the certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// `--tls-key FILE`: its private key (PEM).
    pub key: Option<PathBuf>,
    /// `--require-starttls`: refuse mail before STARTTLS (`530 5.7.0`).
    pub require_starttls: bool,
    /// `--implicit-tls`: TLS from the first byte (RFC 8314), no STARTTLS.
    pub implicit: bool,
    /// `--tls-handshake-timeout SECS` (at least 1).
    pub handshake_timeout: Option<u64>,
}

/// Where `--mailman-lmtp` points, as given (a host name is resolved at start-up, not here).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LmtpTarget {
    /// `HOST:PORT` (the host may be bracketed, as in `[::1]:8024`).
    Tcp {
        /// The host name or address.
        host: String,
        /// The port.
        port: u16,
    },
    /// A path (any argument with a `/`): the runner's unix-domain socket.
    Unix(PathBuf),
}

impl std::fmt::Display for LmtpTarget {
    /// As it would be given: `host:port` (`[host]:port` for an IPv6 address) or the path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpTarget::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            LmtpTarget::Tcp { host, port } => write!(f, "{host}:{port}"),
            LmtpTarget::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Limits given on the command line (our additions; `None`: the library default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// `--limit-connections N` (0: none).
    pub connections: Option<u64>,
    /// `--limit-per-ip N` (0: none).
    pub per_ip: Option<u64>,
    /// `--limit-errors N` (0: none).
    pub errors: Option<u64>,
    /// `--limit-recipients N` (0: none).
    pub recipients: Option<u64>,
    /// `--limit-data-memory BYTES` (0: none).
    pub data_memory: Option<u64>,
    /// `--limit-command-timeout SECS` (0: none).
    pub command_timeout: Option<u64>,
    /// `--limit-data-timeout SECS` (0: none).
    pub data_timeout: Option<u64>,
    /// `--limit-data-rate BYTES_PER_SEC` (0: none).
    pub data_rate: Option<u64>,
    /// `--greeting-delay MILLISECONDS` (0: none).
    pub greeting_delay_ms: Option<u64>,
    /// `--backlog N` (1 to `i32::MAX`).
    pub backlog: Option<i32>,
}

impl Default for Options {
    /// The values used when no options or positional arguments are given.
    fn default() -> Self {
        Options {
            setuid: true,
            classname: "PureProxy".to_owned(),
            size_limit: None,
            enable_smtputf8: false,
            debug: false,
            localhost: "localhost".to_owned(),
            localport: 8025,
            remotehost: "localhost".to_owned(),
            remoteport: 25,
            relay_mode: None,
            trusted: Vec::new(),
            open_relay: false,
            upstream_timeout: None,
            upstream_tls: None,
            upstream_ca: None,
            upstream_tls_name: None,
            hostname: None,
            bare_lf: None,
            limits: Limits::default(),
            capture: CaptureOptions::default(),
            mailman_lmtp: None,
            mailman2_prefix: None,
            mailman_suffixes: None,
            mailman_domain: None,
            tls: TlsOptions::default(),
        }
    }
}

/// The outcome of a successful parse.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // built once per process
#[non_exhaustive]
pub enum Parsed {
    /// Run the server with these options.
    Run(Options),
    /// `-h`/`--help`: print this usage text to stdout and exit with status 0.
    Help(String),
    /// `-V`/`--version`: print this line to stdout and exit with status 0.
    Version(String),
}

/// A command line error: print `usage` (when not empty) and then `message`
/// to stderr, then exit with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CliError {
    /// The error line, worded as CPython words it where CPython has one.
    pub message: String,
    /// Usage text to print before the message; empty for errors where
    /// CPython prints the message alone (`Invalid size: ...`).
    pub usage: String,
    /// Process exit status (always 1, as CPython's `usage(1, msg)`).
    pub code: i32,
}

impl std::fmt::Display for CliError {
    /// Formats the message only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Why a setter refused an option's argument.
#[derive(Debug)]
enum BadValue {
    /// `Invalid value for --NAME: VALUE`, after the usage text.
    Invalid,
    /// This message, after the usage text.
    Usage(String),
    /// This message alone: CPython prints `Invalid size: ...` without the usage text.
    Alone(String),
}

/// Stores an option's argument in the options, or says why it cannot.
type Setter = fn(&mut Options, &OsStr) -> Result<(), BadValue>;

/// What an option does when it acts.
enum Action {
    /// `-h`: stop and print the usage text.
    Help,
    /// `-V`: stop and print the version.
    Version,
    /// A flag without an argument.
    Flag(fn(&mut Options)),
    /// An option with an argument, called `metavar` in the usage text.
    Value {
        /// The argument's name in the usage text.
        metavar: &'static str,
        /// Parses and stores the argument.
        set: Setter,
    },
}

/// Under which heading of the usage text an option is described, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    /// CPython's own options.
    Python,
    /// Options of ours that apply to every class.
    Server,
    /// PureProxy's and MailmanProxy's relay options.
    Relay,
    /// The limits, one compact line each.
    Limits,
    /// MailmanProxy's options.
    Mailman,
    /// DebuggingServer's capture options and the faults.
    Debugging,
    /// TLS on the listener.
    Tls,
}

impl Section {
    /// The heading printed before the section's first option.
    fn heading(self) -> &'static str {
        match self {
            Section::Python => "Options:\n\n",
            Section::Server => "Server options (not in Python's smtpd):\n\n",
            Section::Relay => "Relay options (PureProxy and MailmanProxy; not in Python's smtpd):\n\n",
            Section::Limits => {
                "Limits (not in Python's smtpd; defaults and replies in docs/limits.md; 0 = none):\n\n"
            }
            Section::Debugging => {
                "DebuggingServer options (not in Python's smtpd). A message that cannot be
stored is answered 451 4.3.0; see docs/testing.md:\n\n"
            }
            Section::Mailman => {
                "MailmanProxy options (not in Python's smtpd). List mail goes to Mailman,
everything else is relayed upstream as PureProxy (live) relays it:\n\n"
            }
            Section::Tls => "TLS options (not in Python's smtpd):\n\n",
        }
    }
}

/// One command line option: one row of [`OPTIONS`].
struct OptSpec {
    /// The one-letter name (`-n`), if any; only CPython's options have one.
    short: Option<char>,
    /// The long name without its dashes (`nosetuid`); a unique prefix of it also works.
    long: &'static str,
    /// What it does, and whether it takes an argument.
    action: Action,
    /// Where the usage text describes it.
    section: Section,
    /// Its description in the usage text, one line per `\n`-separated line.
    help: &'static str,
}

impl OptSpec {
    /// Whether the option takes an argument.
    fn takes_arg(&self) -> bool {
        matches!(self.action, Action::Value { .. })
    }

    /// The option's names and argument as the usage text shows them (`-c, --class NAME`).
    fn label(&self) -> String {
        let mut label = match self.short {
            Some(c) => format!("-{c}, --{}", self.long),
            None => format!("--{}", self.long),
        };
        if let Action::Value { metavar, .. } = self.action {
            label.push(' ');
            label.push_str(metavar);
        }
        label
    }

    /// Appends the option's description to the usage text.
    fn write_help(&self, out: &mut String) {
        /// Where a compact description starts.
        const COLUMN: usize = 30;
        let label = self.label();
        let mut lines = self.help.lines();
        if self.section == Section::Limits {
            let first = lines.next().unwrap_or_default();
            let pad = (COLUMN - 4).saturating_sub(label.len()).max(2);
            out.push_str(&format!("    {label}{:pad$}{first}\n", ""));
            for line in lines {
                out.push_str(&format!("{:COLUMN$}{line}\n", ""));
            }
        } else {
            out.push_str(&format!("    {label}\n"));
            for line in lines {
                out.push_str(&format!("        {line}\n"));
            }
            out.push('\n');
        }
    }
}

/// The argument as text, or [`BadValue::Invalid`].
fn text(value: &OsStr) -> Result<&str, BadValue> {
    value.to_str().ok_or(BadValue::Invalid)
}

/// A count, byte size or time in whole units, read like Python's `int()`: 0 or more.
fn number(value: &OsStr) -> Result<u64, BadValue> {
    text(value)
        .ok()
        .and_then(py_int)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or(BadValue::Invalid)
}

/// The argument, lossily decoded for an error message.
fn lossy(value: &OsStr) -> String {
    value.to_string_lossy().into_owned()
}

/// Every option, in the order the usage text lists them.
static OPTIONS: &[OptSpec] = &[
    // CPython's options, with its short names.
    OptSpec {
        short: Some('n'),
        long: "nosetuid",
        action: Action::Flag(|o| o.setuid = false),
        section: Section::Python,
        help: "Do not switch to the user `nobody' at startup. Switching needs root
privileges, so give this flag when running as an ordinary user.",
    },
    OptSpec {
        short: Some('V'),
        long: "version",
        action: Action::Version,
        section: Section::Python,
        help: "Show the version and exit.",
    },
    OptSpec {
        short: Some('c'),
        long: "class",
        action: Action::Value {
            metavar: "NAME",
            set: |o, v| {
                o.classname = v
                    .to_str()
                    .ok_or_else(|| BadValue::Usage(format!("Invalid class name: {}", lossy(v))))?
                    .to_owned();
                Ok(())
            },
        },
        section: Section::Python,
        help: "Handle mail with the server class NAME: DebuggingServer, PureProxy,
MailmanProxy or Sink. The default is PureProxy, as in Python.",
    },
    OptSpec {
        short: Some('s'),
        long: "size",
        action: Action::Value {
            metavar: "LIMIT",
            set: |o, v| {
                let size = v.to_str().and_then(parse_size);
                o.size_limit = Some(
                    size.ok_or_else(|| BadValue::Alone(format!("Invalid size: {}", lossy(v))))?,
                );
                Ok(())
            },
        },
        section: Section::Python,
        help: "Accept messages of at most LIMIT bytes and announce the limit with
the SIZE extension (RFC 1870). The default is 33554432 (32 MiB);
0 means no limit.",
    },
    OptSpec {
        short: Some('u'),
        long: "smtputf8",
        action: Action::Flag(|o| o.enable_smtputf8 = true),
        section: Section::Python,
        help: "Turn on the SMTPUTF8 extension (RFC 6531).",
    },
    OptSpec {
        short: Some('d'),
        long: "debug",
        action: Action::Flag(|o| o.debug = true),
        section: Section::Python,
        help: "Log the SMTP dialogue to stderr (RUST_LOG=debug does the same;
RUST_LOG=warn silences the one line logged per message).",
    },
    OptSpec {
        short: Some('h'),
        long: "help",
        action: Action::Help,
        section: Section::Python,
        help: "Show this help and exit.",
    },
    // Every class.
    OptSpec {
        short: None,
        long: "hostname",
        action: Action::Value {
            metavar: "NAME",
            set: |o, v| {
                let name = text(v)?;
                if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(BadValue::Usage(format!("Invalid host name: {name:?}")));
                }
                o.hostname = Some(name.to_owned());
                Ok(())
            },
        },
        section: Section::Server,
        help: "The name in the greeting, in the HELO/EHLO reply, in the relay's
EHLO and Received: header (default: this machine's FQDN; where
/etc/hosts maps the host name to localhost that is \"localhost\",
which upstreams checking the HELO name refuse).",
    },
    OptSpec {
        short: None,
        long: "bare-lf",
        action: Action::Value {
            metavar: "POLICY",
            set: |o, v| {
                o.bare_lf = Some(match text(v)? {
                    "reject" => crate::smtp::BareLf::Reject,
                    "normalize" => crate::smtp::BareLf::Normalize,
                    other => {
                        return Err(BadValue::Usage(format!(
                            "Invalid --bare-lf policy: {other} (reject or normalize)"
                        )))
                    }
                });
                Ok(())
            },
        },
        section: Section::Server,
        help: "A lone LF in a message body: reject (the default: 554, as RFC 5321
asks) or normalize (turned into CRLF; for clients such as curl
uploading a file with LF line ends).",
    },
    // Relaying.
    OptSpec {
        short: None,
        long: "relay-mode",
        action: Action::Value {
            metavar: "live|after-data",
            set: |o, v| {
                o.relay_mode = Some(match v.to_str() {
                    Some("live") => RelayMode::Live,
                    Some("after-data") => RelayMode::AfterData,
                    _ => {
                        return Err(BadValue::Usage(format!(
                            "Invalid relay mode: {} (live or after-data)",
                            lossy(v)
                        )))
                    }
                });
                Ok(())
            },
        },
        section: Section::Relay,
        help: "live (the default): the upstream session opens at MAIL and every
MAIL, RCPT and end of data is answered with the upstream's own reply.
after-data (CPython's timing): the upstream is contacted once the
message is complete. Either way the client hears 250 only when the
upstream took the message, and 451 when it is down, slow or refuses
temporarily, so no mail is lost.",
    },
    OptSpec {
        short: None,
        long: "trusted",
        action: Action::Value {
            metavar: "NET[,NET...]",
            set: |o, v| {
                let nets = v.to_string_lossy();
                for net in nets.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let parsed = net
                        .parse::<IpNet>()
                        .or_else(|_| net.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map_err(|_| BadValue::Usage(format!("Invalid trusted network: {net}")))?;
                    o.trusted.push(parsed);
                }
                Ok(())
            },
        },
        section: Section::Relay,
        help: "Networks (CIDR, e.g. 192.0.2.0/24) whose clients may relay, besides
loopback. Repeatable.",
    },
    OptSpec {
        short: None,
        long: "open-relay",
        action: Action::Flag(|o| o.open_relay = true),
        section: Section::Relay,
        help: "Let anybody relay. Dangerous: only behind other access control.",
    },
    OptSpec {
        short: None,
        long: "upstream-timeout",
        action: Action::Value {
            metavar: "SECS",
            set: |o, v| {
                let secs = number(v).ok().filter(|&n| n > 0).ok_or_else(|| {
                    BadValue::Usage(format!("Invalid upstream timeout: {}", lossy(v)))
                })?;
                o.upstream_timeout = Some(secs);
                Ok(())
            },
        },
        section: Section::Relay,
        help: "Give up on an upstream that does not connect or answer within SECS
seconds (default 30 to connect, 60 per reply, 120 after the data).",
    },
    OptSpec {
        short: None,
        long: "upstream-tls",
        action: Action::Value {
            metavar: "MODE",
            set: |o, v| {
                let mode = v.to_str().unwrap_or("").parse().map_err(BadValue::Usage)?;
                o.upstream_tls = Some(mode);
                Ok(())
            },
        },
        section: Section::Relay,
        help: "TLS to the upstream (MailmanProxy: not to Mailman's LMTP):
opportunistic (the default): STARTTLS when the upstream's EHLO offers
it, encrypted but the certificate not verified (RFC 7435); a failed
handshake is answered 451 (no retry in plaintext). required: STARTTLS with a verified
certificate, or 451 and nothing relayed. implicit: TLS from connect
(SMTPS, port 465), verified as required. off: plaintext.",
    },
    OptSpec {
        short: None,
        long: "upstream-ca",
        action: Action::Value {
            metavar: "FILE",
            set: |o, v| {
                o.upstream_ca = Some(PathBuf::from(v));
                Ok(())
            },
        },
        section: Section::Relay,
        help: "Trust the CA certificates in FILE (PEM) for the upstream, instead of
the system's store (required and implicit: opportunistic verifies nothing).",
    },
    OptSpec {
        short: None,
        long: "upstream-tls-name",
        action: Action::Value {
            metavar: "NAME",
            set: |o, v| {
                o.upstream_tls_name = Some(lossy(v));
                Ok(())
            },
        },
        section: Section::Relay,
        help: "The name the upstream's certificate must carry (default: the remote
host as given, a name or an IP address).",
    },
    // Limits.
    OptSpec {
        short: None,
        long: "limit-connections",
        action: Action::Value {
            metavar: "N",
            set: |o, v| {
                o.limits.connections = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "simultaneous connections (default: the
descriptor limit less 64)",
    },
    OptSpec {
        short: None,
        long: "limit-per-ip",
        action: Action::Value {
            metavar: "N",
            set: |o, v| {
                o.limits.per_ip = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "connections per client address (default 50;
loopback and --trusted networks exempt)",
    },
    OptSpec {
        short: None,
        long: "limit-errors",
        action: Action::Value {
            metavar: "N",
            set: |o, v| {
                o.limits.errors = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "protocol errors before 421 (default 20)",
    },
    OptSpec {
        short: None,
        long: "limit-recipients",
        action: Action::Value {
            metavar: "N",
            set: |o, v| {
                o.limits.recipients = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "recipients per message (default 100)",
    },
    OptSpec {
        short: None,
        long: "limit-data-memory",
        action: Action::Value {
            metavar: "BYTES",
            set: |o, v| {
                o.limits.data_memory = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "message data held in memory at once, all
connections together (default 536870912)",
    },
    OptSpec {
        short: None,
        long: "limit-command-timeout",
        action: Action::Value {
            metavar: "SECS",
            set: |o, v| {
                o.limits.command_timeout = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "time for each command line (default 300)",
    },
    OptSpec {
        short: None,
        long: "limit-data-timeout",
        action: Action::Value {
            metavar: "SECS",
            set: |o, v| {
                o.limits.data_timeout = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "silence allowed inside DATA (default 300)",
    },
    OptSpec {
        short: None,
        long: "limit-data-rate",
        action: Action::Value {
            metavar: "BYTES",
            set: |o, v| {
                o.limits.data_rate = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "least average DATA rate per second (default 500)",
    },
    OptSpec {
        short: None,
        long: "greeting-delay",
        action: Action::Value {
            metavar: "MS",
            set: |o, v| {
                o.limits.greeting_delay_ms = Some(number(v)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "hold the greeting back; clients talking
before it get 554 (default 0: off)",
    },
    OptSpec {
        short: None,
        long: "backlog",
        action: Action::Value {
            metavar: "N",
            set: |o, v| {
                let n = number(v)?;
                let backlog = i32::try_from(n).ok().filter(|&b| b > 0);
                o.limits.backlog = Some(backlog.ok_or(BadValue::Invalid)?);
                Ok(())
            },
        },
        section: Section::Limits,
        help: "listen backlog (default 1024; at least 1)",
    },
    // DebuggingServer's capture options and the faults (one block).
    OptSpec {
        short: None,
        long: "maildir",
        action: Action::Value {
            metavar: "DIR",
            set: |o, v| {
                o.capture.maildir = Some(PathBuf::from(v));
                Ok(())
            },
        },
        section: Section::Debugging,
        help: "Keep every message as a file in the Maildir DIR (created if missing):
written to tmp/, fsynced, renamed into new/. Byte-exact, no X-Peer.",
    },
    OptSpec {
        short: None,
        long: "mbox",
        action: Action::Value {
            metavar: "FILE",
            set: |o, v| {
                o.capture.mbox = Some(PathBuf::from(v));
                Ok(())
            },
        },
        section: Section::Debugging,
        help: "Append every message to the mbox FILE (mboxrd quoting of From lines,
an advisory flock around each message).",
    },
    OptSpec {
        short: None,
        long: "jsonl",
        action: Action::Value {
            metavar: "FILE|-",
            set: |o, v| {
                o.capture.jsonl = Some(PathBuf::from(v));
                Ok(())
            },
        },
        section: Section::Debugging,
        help: "Write one JSON object per message (time, peer, HELO, envelope,
size, where it was stored, Subject/From/To/Message-ID) to FILE, or
to stdout for -, where --print then defaults to none.",
    },
    OptSpec {
        short: None,
        long: "print",
        action: Action::Value {
            metavar: "cpython|raw|none",
            set: |o, v| {
                o.capture.print = Some(match v.to_str() {
                    Some("cpython") => Print::Cpython,
                    Some("raw") => Print::Raw,
                    Some("none") => Print::None,
                    _ => {
                        return Err(BadValue::Usage(format!(
                            "Invalid print mode: {} (cpython, raw or none)",
                            lossy(v)
                        )))
                    }
                });
                Ok(())
            },
        },
        section: Section::Debugging,
        help: "What goes to stdout for each message: CPython's block (the default),
the raw message as stored, or nothing.",
    },
    OptSpec {
        short: None,
        long: "keep",
        action: Action::Value {
            metavar: "N",
            set: |o, v| {
                let n = number(v)?;
                o.capture.keep = Some(usize::try_from(n).map_err(|_| BadValue::Invalid)?);
                Ok(())
            },
        },
        section: Section::Debugging,
        help: "Keep at most N messages in the Maildir and N lines in the --jsonl
file (the oldest are removed). An mbox is not trimmed.",
    },
    OptSpec {
        short: None,
        long: "fault",
        action: Action::Value {
            metavar: "SPEC",
            set: |o, v| {
                let fault = Fault::parse(text(v)?).map_err(|e| BadValue::Usage(e.to_string()))?;
                o.capture.faults.push(fault);
                Ok(())
            },
        },
        section: Section::Debugging,
        help: "Misbehave on purpose (any class; repeatable, first match acts).
WHEN[=GLOB]:WHAT with WHEN connect|helo|mail|rcpt|data, GLOB an
address (or HELO name, IP) pattern with * and ?, and WHAT a reply
(\"rcpt=bad@*:550 5.1.1 No such user\"), delay=DURATION (mail, rcpt,
data: \"data:delay=2s\"), drop (close the connection) or discard
(data: 250 but not stored). rate:N/DURATION answers MAIL with
421 4.7.0 past N transactions per DURATION (\"rate:10/60s\").",
    },
    // MailmanProxy.
    OptSpec {
        short: None,
        long: "mailman-lmtp",
        action: Action::Value {
            metavar: "HOST:PORT|PATH",
            set: |o, v| {
                let target = if v.as_encoded_bytes().contains(&b'/') {
                    LmtpTarget::Unix(PathBuf::from(v))
                } else {
                    let (host, port) = text(v).ok().and_then(parse_spec).ok_or_else(|| {
                        BadValue::Usage(format!(
                            "Invalid Mailman LMTP address: {} (HOST:PORT or a socket path)",
                            lossy(v)
                        ))
                    })?;
                    LmtpTarget::Tcp { host, port }
                };
                o.mailman_lmtp = Some(target);
                Ok(())
            },
        },
        section: Section::Mailman,
        help: "Mailman 3's LMTP runner (default 127.0.0.1:8024), or the path of
its unix socket. Mailman itself says at RCPT time which recipients
are its lists; while it is unreachable they get 451.",
    },
    OptSpec {
        short: None,
        long: "mailman2-prefix",
        action: Action::Value {
            metavar: "DIR",
            set: |o, v| {
                let prefix = v.to_str().ok_or_else(|| {
                    BadValue::Usage(format!("Invalid Mailman 2 prefix: {}", lossy(v)))
                })?;
                o.mailman2_prefix = Some(prefix.to_owned());
                Ok(())
            },
        },
        section: Section::Mailman,
        help: "Use Mailman 2 instead: lists are DIR/lists/NAME, mail is piped to
DIR/mail/mailman. Its wrapper checks the caller's group, so run
with -n as a user of Mailman's mail group.",
    },
    OptSpec {
        short: None,
        long: "mailman-suffixes",
        action: Action::Value {
            metavar: "cpython|mailman3",
            set: |o, v| {
                o.mailman_suffixes = Some(match v.to_str() {
                    Some("cpython") => Suffixes::Cpython,
                    Some("mailman3") => Suffixes::Mailman3,
                    _ => {
                        return Err(BadValue::Usage(format!(
                            "Invalid Mailman suffixes: {} (cpython or mailman3)",
                            lossy(v)
                        )))
                    }
                });
                Ok(())
            },
        },
        section: Section::Mailman,
        help: "cpython (the default): LIST and LIST-admin|owner|request|join|leave,
never a name with a dash. mailman3: also -bounces, -confirm,
-subscribe, -unsubscribe, +tags and list names with dashes.",
    },
    OptSpec {
        short: None,
        long: "mailman-domain",
        action: Action::Value {
            metavar: "DOMAIN",
            set: |o, v| {
                o.mailman_domain = Some(lossy(v));
                Ok(())
            },
        },
        section: Section::Mailman,
        help: "Mailman 3: ask about lists in DOMAIN whatever the recipient's
domain (CPython ignored it). Default: the recipient's domain.",
    },
    // TLS on the listener.
    OptSpec {
        short: None,
        long: "tls-cert",
        action: Action::Value {
            metavar: "FILE",
            set: |o, v| {
                o.tls.cert = Some(PathBuf::from(v));
                Ok(())
            },
        },
        section: Section::Tls,
        help: "certificate chain (PEM, leaf first); with --tls-key, EHLO
offers STARTTLS (RFC 3207); SIGHUP reloads both files",
    },
    OptSpec {
        short: None,
        long: "tls-key",
        action: Action::Value {
            metavar: "FILE",
            set: |o, v| {
                o.tls.key = Some(PathBuf::from(v));
                Ok(())
            },
        },
        section: Section::Tls,
        help: "the certificate's private key (PEM)",
    },
    OptSpec {
        short: None,
        long: "require-starttls",
        action: Action::Flag(|o| o.tls.require_starttls = true),
        section: Section::Tls,
        help: "before STARTTLS serve only EHLO, HELO, NOOP, RSET, QUIT
(the rest get 530); not for a public MX",
    },
    OptSpec {
        short: None,
        long: "implicit-tls",
        action: Action::Flag(|o| o.tls.implicit = true),
        section: Section::Tls,
        help: "TLS from the first byte (RFC 8314, port 465) instead of STARTTLS",
    },
    OptSpec {
        short: None,
        long: "tls-handshake-timeout",
        action: Action::Value {
            metavar: "SECS",
            set: |o, v| {
                let n = number(v)?;
                o.tls.handshake_timeout =
                    Some(Some(n).filter(|&n| n > 0).ok_or(BadValue::Invalid)?);
                Ok(())
            },
        },
        section: Section::Tls,
        help: "time allowed for a TLS handshake (default 10)",
    },
];

/// The option with this one-letter name.
fn find_short(c: char) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|spec| spec.short == Some(c))
}

/// Resolves a (possibly abbreviated) long option name the way Python's
/// `getopt.long_has_args` does: an exact name, else the one name it is a prefix of.
fn resolve_long(name: &str) -> Result<&'static OptSpec, String> {
    if let Some(spec) = OPTIONS.iter().find(|spec| spec.long == name) {
        return Ok(spec);
    }
    let mut matches = OPTIONS.iter().filter(|spec| spec.long.starts_with(name));
    match (matches.next(), matches.next()) {
        (None, _) => Err(format!("option --{name} not recognized")),
        (Some(spec), None) => Ok(spec),
        (Some(_), Some(_)) => Err(format!("option --{name} not a unique prefix")),
    }
}

/// One option found on the command line, with its argument; none acts before all are read.
type Found = (&'static OptSpec, Option<OsString>);

/// Splits the arguments into options and positionals like `getopt.getopt`.
fn collect(args: Vec<OsString>) -> Result<(Vec<Found>, Vec<OsString>), String> {
    use lexopt::Arg;

    let mut parser = lexopt::Parser::from_args(args);
    // getopt keeps a leading '=' in "-c=Foo" as part of the value.
    parser.set_short_equals(false);
    let mut opts = Vec::new();
    let mut positionals = Vec::new();
    loop {
        let arg = parser.next().map_err(|e| e.to_string())?;
        match arg {
            None => break,
            Some(Arg::Short(c)) => {
                let spec = find_short(c).ok_or_else(|| format!("option -{c} not recognized"))?;
                let value = if spec.takes_arg() {
                    Some(
                        parser
                            .value()
                            .map_err(|_| format!("option -{c} requires argument"))?,
                    )
                } else {
                    None
                };
                opts.push((spec, value));
            }
            Some(Arg::Long(name)) => {
                let name = name.to_owned();
                let spec = resolve_long(&name)?;
                let full = spec.long;
                let value = if spec.takes_arg() {
                    Some(
                        parser
                            .value()
                            .map_err(|_| format!("option --{full} requires argument"))?,
                    )
                } else {
                    if parser.optional_value().is_some() {
                        return Err(format!("option --{full} must not have an argument"));
                    }
                    None
                };
                opts.push((spec, value));
            }
            Some(Arg::Value(v)) => {
                // getopt.getopt stops at the first non-option argument.
                positionals.push(v);
                if let Ok(rest) = parser.raw_args() {
                    positionals.extend(rest);
                }
                break;
            }
        }
    }
    Ok((opts, positionals))
}

/// Parses a decimal integer the way Python's `int(str)` does: surrounding
/// whitespace, an optional sign, leading zeros and single underscores
/// between digits are accepted. Returns `None` when Python would raise
/// `ValueError`; values too large for `i128` are also `None`.
/// (Non-ASCII decimal digits, which Python accepts, are not.)
fn py_int(text: &str) -> Option<i128> {
    let s = text.trim_matches(char::is_whitespace);
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') {
        return None;
    }
    let mut value: i128 = 0;
    let mut previous_underscore = false;
    for b in digits.bytes() {
        match b {
            b'_' if previous_underscore => return None,
            b'_' => previous_underscore = true,
            b'0'..=b'9' => {
                previous_underscore = false;
                value = value.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
            }
            _ => return None,
        }
    }
    Some(if negative { -value } else { value })
}

/// Why a `host:port` spec was rejected.
#[derive(Debug, PartialEq, Eq)]
enum SpecError {
    /// No `:` separator (or a malformed bracketed host).
    Spec,
    /// The port is not an integer in `0..=65535`.
    Port,
}

/// Splits a `host:port` spec; see [`parse_spec`].
fn split_spec(spec: &str) -> Result<(String, u16), SpecError> {
    // "[host]:port" is our extension; anything else is split as CPython does.
    let bracketed = spec
        .strip_prefix('[')
        .and_then(|s| s.split_once("]:"))
        .filter(|(host, _)| !host.contains(']'));
    let (host, port) = match bracketed {
        Some(parts) => parts,
        None => spec.split_once(':').ok_or(SpecError::Spec)?,
    };
    let port = py_int(port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or(SpecError::Port)?;
    Ok((host.to_owned(), port))
}

/// Parses a `host:port` spec as CPython's `parseargs` does: the host is
/// everything before the first `:` (possibly empty) and the port is the
/// rest, read like Python's `int()`. As an extension, an IPv6 address may
/// be given in brackets (`[::1]:8025` gives host `::1`); a spec starting
/// with `[` but not of the form `[host]:port` is split the CPython way
/// (so `[::1]` fails on its port). Returns `None` for
/// a spec without `:` or a port outside `0..=65535`.
pub fn parse_spec(spec: &str) -> Option<(String, u16)> {
    split_spec(spec).ok()
}

/// Parses the size limit argument; negative values are rejected.
fn parse_size(arg: &str) -> Option<usize> {
    py_int(arg).and_then(|n| usize::try_from(n).ok())
}

/// Parses the command line (`args` excludes the program name).
///
/// `program` is used in the usage text; `version` is returned verbatim by
/// `-V` (CPython prints its `__version__` string), e.g. `"smtpd-rs 0.1"`.
pub fn parse_args<I: IntoIterator<Item = OsString>>(
    args: I,
    program: &str,
    version: &str,
) -> Result<Parsed, CliError> {
    let with_usage = |message: String| CliError {
        message,
        usage: usage_text(program),
        code: 1,
    };
    let (opts, positionals) = collect(args.into_iter().collect()).map_err(with_usage)?;

    let mut options = Options::default();
    for (spec, value) in opts {
        match spec.action {
            Action::Help => return Ok(Parsed::Help(usage_text(program))),
            Action::Version => return Ok(Parsed::Version(version.to_owned())),
            Action::Flag(set) => set(&mut options),
            Action::Value { set, .. } => {
                // `collect` gives every option that takes an argument its argument.
                let value = value.unwrap_or_default();
                set(&mut options, &value).map_err(|bad| match bad {
                    BadValue::Invalid => with_usage(format!(
                        "Invalid value for --{}: {}",
                        spec.long,
                        lossy(&value)
                    )),
                    BadValue::Usage(message) => with_usage(message),
                    BadValue::Alone(message) => CliError {
                        message,
                        usage: String::new(),
                        code: 1,
                    },
                })?;
            }
        }
    }

    let (localspec, remotespec) = match positionals.as_slice() {
        [] => (
            OsString::from("localhost:8025"),
            OsString::from("localhost:25"),
        ),
        [local] => (local.clone(), OsString::from("localhost:25")),
        [local, remote] => (local.clone(), remote.clone()),
        _ => {
            let joined: Vec<_> = positionals.iter().map(|a| a.to_string_lossy()).collect();
            return Err(with_usage(format!(
                "Invalid arguments: {}",
                joined.join(", ")
            )));
        }
    };
    (options.localhost, options.localport) = check_spec(&localspec, "local").map_err(with_usage)?;
    (options.remotehost, options.remoteport) =
        check_spec(&remotespec, "remote").map_err(with_usage)?;
    Ok(Parsed::Run(options))
}

/// Parses one positional spec, producing CPython's error message on failure.
fn check_spec(spec: &OsString, which: &str) -> Result<(String, u16), String> {
    let lossy = spec.to_string_lossy();
    let result = spec.to_str().ok_or(SpecError::Spec).and_then(split_spec);
    result.map_err(|e| match e {
        SpecError::Spec => format!("Bad {which} spec: {lossy}"),
        SpecError::Port => format!("Bad {which} port: {lossy}"),
    })
}

/// The usage text printed for `-h` and before most errors.
///
/// It documents the same options and defaults as CPython's module
/// docstring, in this crate's own words; the options' part is written from the option table.
pub fn usage_text(program: &str) -> String {
    let mut text = format!(
        "\
An SMTP proxy server (RFC 5321) with optional SIZE (RFC 1870) and
SMTPUTF8 (RFC 6531) support.

Usage: {program} [options] [localhost:localport [remotehost:remoteport]]

"
    );
    let mut section = None;
    for spec in OPTIONS {
        if section != Some(spec.section) {
            if section == Some(Section::Limits) {
                text.push('\n');
            }
            text.push_str(spec.section.heading());
            section = Some(spec.section);
        }
        spec.write_help(&mut text);
    }
    if section == Some(Section::Limits) {
        text.push('\n');
    }
    text.push_str(
        "\
The local address defaults to localhost:8025 and the remote address to
localhost:25. Either port may be given without a host (`:8025') to mean
all interfaces; put an IPv6 address in brackets, as in [::1]:8025.
",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, CliError> {
        parse_args(args.iter().map(OsString::from), "smtpd", "smtpd-rs 0.1")
    }

    fn run(args: &[&str]) -> Options {
        match parse(args) {
            Ok(Parsed::Run(o)) => o,
            other => panic!("{args:?}: expected Run, got {other:?}"),
        }
    }

    fn err(args: &[&str]) -> CliError {
        match parse(args) {
            Err(e) => e,
            other => panic!("{args:?}: expected error, got {other:?}"),
        }
    }

    #[test]
    fn upstream_tls_options() {
        let o = run(&[]);
        assert_eq!(o.upstream_tls, None);
        let o = run(&[
            "--upstream-tls",
            "required",
            "--upstream-ca",
            "/tmp/ca.pem",
            "--upstream-tls-name=smarthost.example",
        ]);
        assert_eq!(
            o.upstream_tls,
            Some(crate::client::UpstreamTlsMode::Required)
        );
        assert_eq!(o.upstream_ca, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(o.upstream_tls_name.as_deref(), Some("smarthost.example"));
        for mode in ["off", "opportunistic", "implicit"] {
            assert!(run(&["--upstream-tls", mode]).upstream_tls.is_some());
        }
        let _ = err(&["--upstream-tls", "sometimes"]);
    }

    #[test]
    fn limit_options() {
        let o = run(&[
            "--limit-errors",
            "5",
            "--limit-per-ip=0",
            "--limit-data-memory",
            "1_000",
            "--greeting-delay",
            "250",
            "--backlog",
            "4096",
            "--limit-command-timeout",
            "60",
        ]);
        assert_eq!(o.limits.errors, Some(5));
        assert_eq!(o.limits.per_ip, Some(0));
        assert_eq!(o.limits.data_memory, Some(1000));
        assert_eq!(o.limits.greeting_delay_ms, Some(250));
        assert_eq!(o.limits.backlog, Some(4096));
        assert_eq!(o.limits.command_timeout, Some(60));
        assert_eq!(o.limits.connections, None);
        let e = err(&["--limit-errors", "-1"]);
        assert_eq!(e.message, "Invalid value for --limit-errors: -1");
        // CPython's prefixes still resolve as before.
        assert!(run(&["--d"]).debug);
    }

    #[test]
    fn option_table_is_consistent() {
        let usage = usage_text("prog");
        for (i, spec) in OPTIONS.iter().enumerate() {
            // Names are unique, so every name (and every unique prefix) finds its own row.
            assert!(
                OPTIONS[i + 1..].iter().all(|o| o.long != spec.long),
                "--{} twice",
                spec.long
            );
            assert!(std::ptr::eq(resolve_long(spec.long).unwrap(), spec));
            if let Some(c) = spec.short {
                assert!(std::ptr::eq(find_short(c).unwrap(), spec), "-{c}");
                // Only CPython's options have one-letter names.
                assert_eq!(spec.section, Section::Python, "-{c}");
            }
            assert!(
                usage.contains(&spec.label()),
                "usage lacks {}",
                spec.label()
            );
            assert!(!spec.help.is_empty(), "--{} has no help", spec.long);
        }
        // Exactly CPython's short options, and the two that take an argument.
        let mut shorts: Vec<_> = OPTIONS.iter().filter_map(|o| o.short).collect();
        shorts.sort_unstable();
        assert_eq!(shorts, ['V', 'c', 'd', 'h', 'n', 's', 'u']);
        for (c, takes) in [('c', true), ('s', true), ('n', false), ('h', false)] {
            assert_eq!(find_short(c).unwrap().takes_arg(), takes, "-{c}");
        }
    }

    #[test]
    fn relay_and_mailman_values_are_parsed_once() {
        let o = run(&[
            "--relay-mode",
            "after-data",
            "--trusted",
            "192.0.2.0/24, 2001:db8::1",
            "--trusted=10.0.0.0/8",
            "--mailman-suffixes",
            "mailman3",
            "--mailman-lmtp",
            "[::1]:8024",
        ]);
        assert_eq!(o.relay_mode, Some(RelayMode::AfterData));
        let nets: Vec<String> = o.trusted.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["192.0.2.0/24", "2001:db8::1/128", "10.0.0.0/8"]);
        assert_eq!(o.mailman_suffixes, Some(Suffixes::Mailman3));
        let lmtp = o.mailman_lmtp.unwrap();
        assert_eq!(
            lmtp,
            LmtpTarget::Tcp {
                host: "::1".into(),
                port: 8024
            }
        );
        assert_eq!(lmtp.to_string(), "[::1]:8024");
        assert_eq!(
            run(&["--relay-mode=live"]).relay_mode,
            Some(RelayMode::Live)
        );
        assert_eq!(
            run(&["--mailman-lmtp", "/run/lmtp.sock"]).mailman_lmtp,
            Some(LmtpTarget::Unix("/run/lmtp.sock".into()))
        );
        let table: &[(&[&str], &str)] = &[
            (
                &["--relay-mode", "sometimes"],
                "Invalid relay mode: sometimes (live or after-data)",
            ),
            // Every network is checked, the second of a list too.
            (
                &["--trusted", "10.0.0.0/8,not-a-net"],
                "Invalid trusted network: not-a-net",
            ),
            (
                &["--mailman-suffixes", "all"],
                "Invalid Mailman suffixes: all (cpython or mailman3)",
            ),
            (
                &["--mailman-lmtp", "nowhere"],
                "Invalid Mailman LMTP address: nowhere (HOST:PORT or a socket path)",
            ),
            (&["--upstream-timeout", "0"], "Invalid upstream timeout: 0"),
            (&["--backlog", "0"], "Invalid value for --backlog: 0"),
            (
                &["--backlog", "2147483648"],
                "Invalid value for --backlog: 2147483648",
            ),
        ];
        for (args, message) in table {
            let e = err(args);
            assert_eq!(e.message, *message, "{args:?}");
            assert_eq!(e.usage, usage_text("smtpd"), "{args:?}");
        }
        assert_eq!(
            run(&["--backlog", "2147483647"]).limits.backlog,
            Some(i32::MAX)
        );
    }

    #[test]
    fn defaults() {
        let o = run(&[]);
        assert_eq!(o, Options::default());
        assert!(o.setuid);
        assert_eq!(o.classname, "PureProxy");
        assert_eq!(o.size_limit, None);
        assert!(!o.enable_smtputf8 && !o.debug);
        assert_eq!((o.localhost.as_str(), o.localport), ("localhost", 8025));
        assert_eq!((o.remotehost.as_str(), o.remoteport), ("localhost", 25));
    }

    #[test]
    fn each_option_short_and_long() {
        type Check = fn(&Options) -> bool;
        let table: &[(&[&str], Check)] = &[
            (&["-n"], |o| !o.setuid),
            (&["--nosetuid"], |o| !o.setuid),
            (&["--nos"], |o| !o.setuid),
            (&["-u"], |o| o.enable_smtputf8),
            (&["--smtputf8"], |o| o.enable_smtputf8),
            (&["--sm"], |o| o.enable_smtputf8),
            (&["-d"], |o| o.debug),
            (&["--debug"], |o| o.debug),
            (&["--d"], |o| o.debug),
            (&["-c", "Sink"], |o| o.classname == "Sink"),
            (&["-cSink"], |o| o.classname == "Sink"),
            (&["-c=Sink"], |o| o.classname == "=Sink"),
            (&["-c", "-n"], |o| o.classname == "-n" && o.setuid),
            (&["--class", "Sink"], |o| o.classname == "Sink"),
            (&["--class=Sink"], |o| o.classname == "Sink"),
            (&["--class="], |o| o.classname.is_empty()),
            (&["--cl=mod.Cls"], |o| o.classname == "mod.Cls"),
            (&["-s", "1000"], |o| o.size_limit == Some(1000)),
            (&["-s1000"], |o| o.size_limit == Some(1000)),
            (&["--size", "1000"], |o| o.size_limit == Some(1000)),
            (&["--size=1000"], |o| o.size_limit == Some(1000)),
            (&["--si=7"], |o| o.size_limit == Some(7)),
            (&["-s", "0"], |o| o.size_limit == Some(0)),
            (&["-s", " +1_000 "], |o| o.size_limit == Some(1000)),
            (&["-s", "-0"], |o| o.size_limit == Some(0)),
            (&["-s", "1", "-s", "2"], |o| o.size_limit == Some(2)),
        ];
        for (args, check) in table {
            let o = run(args);
            assert!(check(&o), "{args:?} gave {o:?}");
        }
    }

    #[test]
    fn combined_short_options() {
        let o = run(&["-nduc", "Foo", "-s10"]);
        assert!(!o.setuid && o.debug && o.enable_smtputf8);
        assert_eq!(o.classname, "Foo");
        assert_eq!(o.size_limit, Some(10));
        let o = run(&["-ncFoo"]);
        assert_eq!((o.setuid, o.classname.as_str()), (false, "Foo"));
        let o = run(&["-us", "5", "a:1", "b:2"]);
        assert!(o.enable_smtputf8);
        assert_eq!(o.size_limit, Some(5));
        assert_eq!((o.localhost.as_str(), o.localport), ("a", 1));
        assert_eq!((o.remotehost.as_str(), o.remoteport), ("b", 2));
    }

    #[test]
    fn help_and_version() {
        for args in [
            &["-h"][..],
            &["--help"],
            &["--he"],
            &["-nh"],
            &["-h", "-s", "x"],
        ] {
            assert_eq!(parse(args).unwrap(), Parsed::Help(usage_text("smtpd")));
        }
        for args in [
            &["-V"][..],
            &["--version"],
            &["--v"],
            &["-V", "a", "b", "c"],
        ] {
            assert_eq!(
                parse(args).unwrap(),
                Parsed::Version("smtpd-rs 0.1".to_owned())
            );
        }
        // Options act in order: the first of -h / -V wins.
        assert_eq!(
            parse(&["-V", "-h"]).unwrap(),
            Parsed::Version("smtpd-rs 0.1".into())
        );
        // Option errors are found before any option acts.
        assert_eq!(err(&["-h", "-x"]).message, "option -x not recognized");
    }

    #[test]
    fn usage_text_contents() {
        let u = usage_text("prog");
        assert!(u.contains("Usage: prog [options] [localhost:localport [remotehost:remoteport]]"));
        for word in [
            "--nosetuid",
            "--version",
            "--class",
            "--size",
            "--smtputf8",
            "--debug",
            "--help",
            "DebuggingServer",
            "PureProxy",
            "MailmanProxy",
            "Sink",
            "localhost:8025",
            "localhost:25",
        ] {
            assert!(u.contains(word), "usage lacks {word}");
        }
    }

    #[test]
    fn positional_specs() {
        type Addr = (&'static str, u16);
        let table: &[(&[&str], Addr, Addr)] = &[
            (&["127.0.0.1:2525"], ("127.0.0.1", 2525), ("localhost", 25)),
            (&[":0"], ("", 0), ("localhost", 25)),
            (&["a:1", "mx.example:587"], ("a", 1), ("mx.example", 587)),
            (&["[::1]:8025"], ("::1", 8025), ("localhost", 25)),
            (
                &["[::]:25", "[2001:db8::1]:2525"],
                ("::", 25),
                ("2001:db8::1", 2525),
            ),
            (&["h:65535"], ("h", 65535), ("localhost", 25)),
            (&["h: 0025 "], ("h", 25), ("localhost", 25)),
            (&["--", "-h:1"], ("-h", 1), ("localhost", 25)),
        ];
        for (args, local, remote) in table {
            let o = run(args);
            assert_eq!((o.localhost.as_str(), o.localport), *local, "{args:?}");
            assert_eq!((o.remotehost.as_str(), o.remoteport), *remote, "{args:?}");
        }
    }

    #[test]
    fn options_stop_at_first_positional() {
        // getopt.getopt (not gnu_getopt): "-n" after a positional is positional.
        let e = err(&["h:1", "-n"]);
        assert_eq!(e.message, "Bad remote spec: -n");
        let e = err(&["h:1", "--", "x:2"]);
        assert_eq!(e.message, "Invalid arguments: h:1, --, x:2");
    }

    #[test]
    fn errors() {
        let table: &[(&[&str], &str)] = &[
            (&["-x"], "option -x not recognized"),
            (&["-nx"], "option -x not recognized"),
            (&["-n=1"], "option -= not recognized"),
            (&["--bogus"], "option --bogus not recognized"),
            (&["--bogus=1"], "option --bogus not recognized"),
            (&["--s"], "option --s not a unique prefix"),
            (&["-c"], "option -c requires argument"),
            (&["-s"], "option -s requires argument"),
            (&["-nc"], "option -c requires argument"),
            (&["--class"], "option --class requires argument"),
            (&["--cla"], "option --class requires argument"),
            (&["--size"], "option --size requires argument"),
            (&["--debug=1"], "option --debug must not have an argument"),
            (&["--nos=1"], "option --nosetuid must not have an argument"),
            (&["a:1", "b:2", "c:3"], "Invalid arguments: a:1, b:2, c:3"),
            (&["localhost"], "Bad local spec: localhost"),
            (&["a:1", "remote"], "Bad remote spec: remote"),
            (&["a:x"], "Bad local port: a:x"),
            (&["a:"], "Bad local port: a:"),
            (&["a:65536"], "Bad local port: a:65536"),
            (&["a:-1"], "Bad local port: a:-1"),
            (&["a:1_"], "Bad local port: a:1_"),
            (&["::1:8025"], "Bad local port: ::1:8025"),
            (&["[::1]"], "Bad local port: [::1]"),
            (&["[::1]8025"], "Bad local port: [::1]8025"),
            (&["[host]"], "Bad local spec: [host]"),
            (&["-"], "Bad local spec: -"),
            (&["--=x"], "option -- not a unique prefix"),
            (&["[::1]:x"], "Bad local port: [::1]:x"),
            (&["a:1", "b:99999"], "Bad remote port: b:99999"),
            (&["a:1", "b:2x"], "Bad remote port: b:2x"),
        ];
        for (args, message) in table {
            let e = err(args);
            assert_eq!(e.message, *message, "{args:?}");
            assert_eq!(e.code, 1, "{args:?}");
            assert_eq!(e.usage, usage_text("smtpd"), "{args:?}");
        }
    }

    #[test]
    fn invalid_size_has_no_usage() {
        for (arg, message) in [
            ("abc", "Invalid size: abc"),
            ("-1", "Invalid size: -1"),
            ("", "Invalid size: "),
            ("1__0", "Invalid size: 1__0"),
            ("1e3", "Invalid size: 1e3"),
            (
                "99999999999999999999999999",
                "Invalid size: 99999999999999999999999999",
            ),
        ] {
            let e = err(&["-s", arg]);
            assert_eq!((e.message.as_str(), e.code), (message, 1));
            assert!(e.usage.is_empty());
        }
        assert_eq!(err(&["--size=-5"]).message, "Invalid size: -5");
        // Options act in order, before positionals are checked.
        assert_eq!(err(&["-s", "x", "-h"]).message, "Invalid size: x");
        assert_eq!(err(&["-s", "x", "bad"]).message, "Invalid size: x");
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_arguments() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'h', 0xff, b':', b'1']);
        let e = parse_args([bad()], "smtpd", "v").unwrap_err();
        assert_eq!(e.message, "Bad local spec: h\u{fffd}:1");
        let e = parse_args([OsString::from("-c"), bad()], "smtpd", "v").unwrap_err();
        assert_eq!(e.message, "Invalid class name: h\u{fffd}:1");
        let e = parse_args([OsString::from("-s"), bad()], "smtpd", "v").unwrap_err();
        assert_eq!(e.message, "Invalid size: h\u{fffd}:1");
    }

    #[test]
    fn py_int_rules() {
        let table = [
            ("0", Some(0)),
            ("0025", Some(25)),
            ("+5", Some(5)),
            ("-7", Some(-7)),
            (" \t12\n", Some(12)),
            ("\u{a0}5", Some(5)),
            ("1_000", Some(1000)),
            ("", None),
            (" ", None),
            ("+", None),
            ("- 5", None),
            ("+_1", None),
            ("_1", None),
            ("1_", None),
            ("1__0", None),
            ("\x1c5", None),
            ("0x10", None),
            ("1.0", None),
        ];
        for (text, want) in table {
            assert_eq!(py_int(text), want, "{text:?}");
        }
    }

    #[test]
    fn parse_spec_helper() {
        assert_eq!(
            parse_spec("localhost:8025"),
            Some(("localhost".into(), 8025))
        );
        assert_eq!(
            parse_spec("[fe80::1%eth0]:25"),
            Some(("fe80::1%eth0".into(), 25))
        );
        assert_eq!(parse_spec("a:b:1"), None);
        assert_eq!(parse_spec("[a]b]:1"), Some(("[a]b]".into(), 1)));
        assert_eq!(parse_spec("[h:25"), Some(("[h".into(), 25)));
        assert_eq!(parse_spec("nocolon"), None);
        assert_eq!(parse_spec("h:70000"), None);
    }
}
