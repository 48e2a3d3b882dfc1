//! The `smtpd` command line: `python3 -m smtpd` in Rust, reusable from a user's own binary.
//!
//! [`parse_args`] reads the options exactly as CPython's `smtpd.parseargs` does; [`main`] runs
//! the whole program (bind, drop privileges, serve until SIGINT/SIGTERM) with a registry of
//! server classes ([`Classes`]), so a user's binary can add its own classes by name — the
//! counterpart of Python's `-c module.ClassName`.

mod args;

pub use args::{
    parse_args, parse_spec, usage_text, CaptureOptions, CliError, Limits, LmtpTarget, Options,
    Parsed, TlsOptions,
};

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use crate::reactor::Reactor;
use crate::server::{Backend, Listener, ServerOptions, Shutdown};
use crate::servers::capture::{JsonLines, Maildir, Mbox};
use crate::servers::debugging::Print;
use crate::servers::faults::Faults;
use crate::servers::mailman::{LmtpAddr, Mailman2, MailmanVersion};
use crate::servers::{
    DebuggingServer, MailmanOptions, MailmanProxy, ProxyOptions, PureProxy, RelayMode, Sink,
};
use crate::smtp::DATA_SIZE_DEFAULT;

/// The version line printed by `-V` (CPython prints its `__version__`).
pub const VERSION: &str = concat!("smtpd-rs ", env!("CARGO_PKG_VERSION"));

/// How long transactions in flight may take to finish after SIGINT/SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What a server class is built from: the parsed options, and the remote address resolved at
/// start-up (never inside the loop).
#[derive(Debug)]
#[non_exhaustive]
pub struct ClassArgs<'a> {
    /// The parsed command line.
    pub options: &'a Options,
    /// `remotehost:remoteport`, resolved; `None` if it does not resolve (a class that relays
    /// should then fail with a clear message).
    pub remote: Option<SocketAddr>,
}

/// Why a server class could not be built: any error, shown to the user as the reason the
/// program did not start (`Box<dyn Error>`, so a factory can use `?` on I/O and parse errors,
/// or return a message with `"...".into()`).
pub type ClassError = Box<dyn std::error::Error>;

type Factory = Box<dyn Fn(&ClassArgs<'_>) -> Result<Box<dyn Backend>, ClassError>>;

/// The server classes `-c NAME` can choose from.
pub struct Classes {
    entries: Vec<(String, Factory)>,
}

impl Classes {
    /// The built-in classes: `DebuggingServer`, `PureProxy`, `MailmanProxy`, `Sink`.
    pub fn builtin() -> Classes {
        let mut classes = Classes {
            entries: Vec::new(),
        };
        classes.register("DebuggingServer", |args| {
            Ok(Rc::new(RefCell::new(debugging_server(
                &args.options.capture,
            )?)))
        });
        classes.register("Sink", |_| Ok(Rc::new(RefCell::new(Sink::default()))));
        classes.register("PureProxy", |args| Ok(pure_proxy(args)?));
        classes.register("MailmanProxy", |args| Ok(mailman_proxy(args)?));
        classes
    }

    /// Adds (or replaces) a class under `name`: `factory` builds its [`Backend`] (an
    /// `Rc<RefCell<S>>` of an [`SmtpServer`](crate::server::SmtpServer), or any other). The
    /// factory runs once, at start-up, after the command line was parsed and before the
    /// listener binds; its error ends the program with status 1 and the error's message on
    /// stderr.
    pub fn register<B: Backend>(
        &mut self,
        name: &str,
        factory: impl Fn(&ClassArgs<'_>) -> Result<B, ClassError> + 'static,
    ) {
        self.entries.retain(|(n, _)| n != name);
        let factory: Factory =
            Box::new(move |args| factory(args).map(|b| Box::new(b) as Box<dyn Backend>));
        self.entries.push((name.to_string(), factory));
    }

    /// The names of the classes, in the order they were registered.
    pub fn available(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn build(&self, name: &str, args: &ClassArgs<'_>) -> Result<Box<dyn Backend>, ClassError> {
        match self.entries.iter().find(|(n, _)| n == name) {
            Some((_, factory)) => factory(args),
            None => Err(format!(
                "unknown server class: {name} (available: {})",
                self.available().join(", ")
            )
            .into()),
        }
    }
}

impl std::fmt::Debug for Classes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(n, _)| n))
            .finish()
    }
}

/// The remote address, which a relaying class cannot do without.
/// DebuggingServer with the stores and print mode of the command line. The Maildir and the
/// mbox come before the JSON lines, whose records say where they put the message.
fn debugging_server(capture: &CaptureOptions) -> Result<DebuggingServer, ClassError> {
    let to_stdout = capture.jsonl.as_deref() == Some(std::path::Path::new("-"));
    let default_print = if to_stdout {
        Print::None
    } else {
        Print::Cpython
    };
    let mut server = DebuggingServer::new().with_print(capture.print.unwrap_or(default_print));
    if let Some(dir) = &capture.maildir {
        let mut maildir = Maildir::open(dir)
            .map_err(|e| format!("Cannot open the Maildir {}: {e}", dir.display()))?;
        if let Some(n) = capture.keep {
            maildir = maildir
                .keep(n)
                .map_err(|e| format!("Cannot list the Maildir {}: {e}", dir.display()))?;
        }
        server = server.with_store(maildir);
    }
    if let Some(file) = &capture.mbox {
        let mbox = Mbox::open(file)
            .map_err(|e| format!("Cannot open the mbox {}: {e}", file.display()))?;
        server = server.with_store(mbox);
    }
    if let Some(file) = &capture.jsonl {
        let mut jsonl = if to_stdout {
            JsonLines::stdout()
        } else {
            JsonLines::open(file)
                .map_err(|e| format!("Cannot open the JSON lines file {}: {e}", file.display()))?
        };
        if let Some(n) = capture.keep {
            jsonl = jsonl.keep(n);
        }
        server = server.with_store(jsonl);
    }
    Ok(server)
}

fn resolved_upstream(args: &ClassArgs<'_>) -> Result<SocketAddr, String> {
    let o = args.options;
    args.remote.ok_or_else(|| {
        format!(
            "Cannot resolve remote address: {}:{}",
            o.remotehost, o.remoteport
        )
    })
}

/// Builds a [`PureProxy`] from the command line.
fn pure_proxy(args: &ClassArgs<'_>) -> Result<PureProxy, String> {
    let mut options = relay_options(args.options)?;
    options.mode = args.options.relay_mode.unwrap_or(RelayMode::Live);
    Ok(PureProxy::new(resolved_upstream(args)?, options))
}

/// The relay settings shared by PureProxy and MailmanProxy.
fn relay_options(o: &Options) -> Result<ProxyOptions, String> {
    let mut options = ProxyOptions::default();
    if let Some(name) = &o.hostname {
        options.hostname = name.clone();
    }
    options.relay.tls = upstream_tls(o)?;
    options.trusted.extend(o.trusted.iter().copied());
    options.open_relay = o.open_relay;
    if let Some(secs) = o.upstream_timeout {
        let t = Duration::from_secs(secs);
        options.relay.connect_timeout = t;
        options.relay.command_timeout = t;
        options.relay.data_timeout = t * 2;
    }
    Ok(options)
}

/// `--upstream-tls`, `--upstream-ca`, `--upstream-tls-name`.
fn upstream_tls(o: &Options) -> Result<crate::client::UpstreamTls, String> {
    use crate::client::{UpstreamTls, UpstreamTlsMode};
    let mode = o.upstream_tls.unwrap_or_default();
    let mut tls = UpstreamTls::new(mode);
    tls.name = Some(
        o.upstream_tls_name
            .clone()
            .unwrap_or_else(|| o.remotehost.clone()),
    );
    #[cfg(feature = "tls")]
    if let Some(path) = &o.upstream_ca {
        tls.config = Some(
            crate::client::upstream_ca_config(path)
                .map_err(|e| format!("Cannot load --upstream-ca: {e}"))?,
        );
    } else if matches!(mode, UpstreamTlsMode::Required | UpstreamTlsMode::Implicit) {
        // The system store is read now, not in the loop at the first STARTTLS. (Opportunistic
        // TLS verifies nothing, so it needs no roots.)
        tls.config = Some(crate::client::system_roots_config().map_err(|e| e.to_string())?);
    }
    #[cfg(not(feature = "tls"))]
    if o.upstream_ca.is_some()
        || matches!(mode, UpstreamTlsMode::Required | UpstreamTlsMode::Implicit)
    {
        return Err("TLS to the upstream needs the `tls` feature".into());
    }
    if matches!(mode, UpstreamTlsMode::Off) && o.upstream_ca.is_some() {
        log::warn!("--upstream-ca is unused with --upstream-tls off");
    }
    Ok(tls)
}

/// Builds a [`MailmanProxy`] from the command line, and warns (without failing) when Mailman
/// cannot be reached: list mail then gets `451` until it can.
fn mailman_proxy(args: &ClassArgs<'_>) -> Result<MailmanProxy, String> {
    let o = args.options;
    let upstream = resolved_upstream(args)?;
    if o.relay_mode == Some(RelayMode::AfterData) {
        return Err("MailmanProxy relays live only (no --relay-mode after-data)".into());
    }
    if o.enable_smtputf8 {
        // CPython's MailmanProxy raised ValueError for enable_SMTPUTF8.
        return Err("MailmanProxy does not support SMTPUTF8 (-u)".into());
    }
    let backend = match (&o.mailman2_prefix, &o.mailman_lmtp) {
        (Some(_), Some(_)) => {
            return Err("Give --mailman-lmtp or --mailman2-prefix, not both".into());
        }
        (Some(prefix), None) => MailmanVersion::Mailman2(Mailman2::at(prefix)),
        (None, Some(LmtpTarget::Unix(path))) => {
            MailmanVersion::Mailman3(LmtpAddr::Unix(path.clone()))
        }
        (None, Some(target @ LmtpTarget::Tcp { host, port })) => {
            let addr = resolve(host, *port)
                .ok_or_else(|| format!("Cannot resolve Mailman LMTP address: {target}"))?;
            MailmanVersion::Mailman3(LmtpAddr::Tcp(addr))
        }
        (None, None) => MailmanVersion::default(),
    };
    let target = match &backend {
        MailmanVersion::Mailman2(mm2) => format!("Mailman 2's wrapper {}", mm2.wrapper.display()),
        MailmanVersion::Mailman3(lmtp) => format!("Mailman 3 at {lmtp}"),
    };
    let mut options = MailmanOptions {
        proxy: relay_options(o)?,
        mailman: backend,
        suffixes: o.mailman_suffixes.unwrap_or_default(),
        mailman_domain: o.mailman_domain.clone(),
        ..MailmanOptions::default()
    };
    if let Some(secs) = o.upstream_timeout {
        options.lmtp.command_timeout = Duration::from_secs(secs);
    }
    let proxy = MailmanProxy::new(upstream, options);
    match proxy.check_backend(Duration::from_secs(2)) {
        Ok(()) => log::info!("MailmanProxy: list mail to {target}, the rest to {upstream}"),
        Err(e) => log::warn!("{e}; list mail gets 451 until Mailman can be reached"),
    }
    Ok(proxy)
}

/// Applies the `--limit-*`, `--greeting-delay` and `--backlog` options.
fn apply_limits(limits: &Limits, o: &mut ServerOptions) {
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let secs = |n: u64| (n > 0).then(|| Duration::from_secs(n));
    if let Some(n) = limits.connections {
        o.max_connections = size(n);
    }
    if let Some(n) = limits.per_ip {
        o.max_connections_per_ip = size(n);
    }
    if let Some(n) = limits.errors {
        o.session.max_errors = size(n);
    }
    if let Some(n) = limits.recipients {
        o.session.max_recipients = size(n);
    }
    if let Some(n) = limits.data_memory {
        o.data_memory_limit = size(n);
    }
    if let Some(n) = limits.command_timeout {
        o.idle_timeout = secs(n);
    }
    if let Some(n) = limits.data_timeout {
        o.data_timeout = secs(n);
    }
    if let Some(n) = limits.data_rate {
        o.min_data_rate = size(n);
    }
    if let Some(n) = limits.greeting_delay_ms {
        o.greeting_delay = (n > 0).then(|| Duration::from_millis(n));
    }
    if let Some(n) = limits.backlog {
        o.backlog = n;
    }
}

/// SIGHUP: loads `--tls-cert` and `--tls-key` again; a bad new pair is refused with a log
/// line and the certificate in use is kept.
#[cfg(feature = "tls")]
fn reload_tls(
    reload: Option<&(
        crate::server::TlsConfig,
        std::path::PathBuf,
        std::path::PathBuf,
    )>,
) {
    let Some((tls, cert, key)) = reload else {
        return;
    };
    match tls.reload_pem_files(cert, key) {
        Ok(()) => log::info!("SIGHUP: reloaded the TLS certificate {}", cert.display()),
        Err(e) => log::error!("SIGHUP: keeping the TLS certificate in use: {e}"),
    }
}

#[cfg(not(feature = "tls"))]
fn reload_tls<T>(_: Option<&T>) {}

/// Applies the `--tls-*` options: loads the certificate and key (a clear error when they are
/// missing, unreadable or do not match).
fn apply_tls(tls: &TlsOptions, o: &mut ServerOptions) -> Result<(), String> {
    if let Some(secs) = tls.handshake_timeout {
        o.tls_handshake_timeout = Duration::from_secs(secs);
    }
    let (cert, key) = match (&tls.cert, &tls.key) {
        (None, None) => {
            if tls.implicit || tls.require_starttls {
                return Err(
                    "--implicit-tls and --require-starttls need --tls-cert and --tls-key".into(),
                );
            }
            return Ok(());
        }
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err("Give both --tls-cert and --tls-key".into()),
    };
    #[cfg(feature = "tls")]
    {
        let config = crate::server::TlsConfig::from_pem_files(cert, key)
            .map_err(|e| format!("Cannot use the TLS certificate: {e}"))?;
        o.tls = Some(config);
        o.implicit_tls = tls.implicit;
        o.session.require_tls = tls.require_starttls && !tls.implicit;
        Ok(())
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (cert, key, o);
        Err("This smtpd was built without TLS (cargo feature `tls`)".into())
    }
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    (host, port).to_socket_addrs().ok()?.next()
}

/// Switches to the user `nobody`: supplementary groups, then group, then user.
fn drop_privileges() -> Result<(), String> {
    use nix::unistd::{setgid, setgroups, setuid, User};
    let user = User::from_name("nobody")
        .ok()
        .flatten()
        .ok_or_else(|| "no user \"nobody\"".to_string())?;
    setgroups(&[user.gid]).map_err(|e| e.to_string())?;
    setgid(user.gid).map_err(|e| e.to_string())?;
    setuid(user.uid).map_err(|e| e.to_string())?;
    Ok(())
}

/// Runs the `smtpd` program with `args` (without the program name) and returns its exit status.
/// `classes` are the choices for `-c`.
pub fn main(args: impl IntoIterator<Item = OsString>, classes: &Classes) -> i32 {
    let options = match parse_args(args, "smtpd", VERSION) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help(text)) => {
            print!("{text}");
            return 0;
        }
        Ok(Parsed::Version(text)) => {
            println!("{text}");
            return 0;
        }
        Err(e) => {
            let mut stderr = std::io::stderr().lock();
            if !e.usage.is_empty() {
                let _ = writeln!(stderr, "{}", e.usage);
            }
            let _ = writeln!(stderr, "{}", e.message);
            return e.code;
        }
    };
    let level = if options.debug { "debug" } else { "info" };
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .try_init();
    match serve(&options, classes) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("{message}");
            1
        }
    }
}

fn serve(options: &Options, classes: &Classes) -> Result<(), String> {
    let local = resolve(&options.localhost, options.localport).ok_or_else(|| {
        format!(
            "Cannot resolve local address: {}:{}",
            options.localhost, options.localport
        )
    })?;
    let remote = resolve(&options.remotehost, options.remoteport);
    if options.capture.any_capture() && options.classname != "DebuggingServer" {
        return Err(format!(
            "--maildir, --mbox, --jsonl, --print and --keep are DebuggingServer options (-c DebuggingServer), not {}'s",
            options.classname
        ));
    }
    let mut server = classes
        .build(&options.classname, &ClassArgs { options, remote })
        .map_err(|e| e.to_string())?;
    if !options.capture.faults.is_empty() {
        let faults = options.capture.faults.iter().cloned();
        let faults = faults.fold(Faults::new(), Faults::with);
        server = Box::new(faults.wrap(server));
    }
    // Before the options are built: their connection cap follows the descriptor limit.
    match crate::sys::raise_fd_limit() {
        Ok(n) => log::debug!("descriptor limit {n}"),
        Err(e) => log::warn!("cannot raise the descriptor limit: {e}"),
    }
    let mut server_options = ServerOptions::default();
    apply_limits(&options.limits, &mut server_options);
    server_options
        .trusted_networks
        .extend(options.trusted.iter().copied());
    server_options.session.product = VERSION.to_string();
    if let Some(name) = &options.hostname {
        server_options.session.hostname = name.clone();
    }
    if let Some(policy) = options.bare_lf {
        server_options.session.bare_lf = policy;
    }
    server_options.session.data_size_limit = options.size_limit.unwrap_or(DATA_SIZE_DEFAULT);
    server_options.session.enable_smtputf8 = options.enable_smtputf8;
    apply_tls(&options.tls, &mut server_options)?;
    // SIGHUP reloads the certificate and key (only with TLS: otherwise it keeps its default).
    #[cfg(feature = "tls")]
    let reload = server_options.tls.clone().and_then(|tls| {
        let cert = options.tls.cert.clone()?;
        let key = options.tls.key.clone()?;
        Some((tls, cert, key))
    });
    #[cfg(not(feature = "tls"))]
    let reload: Option<((), std::path::PathBuf, std::path::PathBuf)> = None;

    // The handlers are installed before the listener exists: a signal that arrives as soon as
    // clients can connect is kept (and acted on once the loop runs), never the default kill.
    // This starts no thread.
    let mut wanted = vec![signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    if reload.is_some() {
        wanted.push(signal_hook::consts::SIGHUP);
    }
    let mut signals = signal_hook::iterator::Signals::new(wanted)
        .map_err(|e| format!("Cannot handle signals: {e}"))?;
    let mut reactor = Reactor::new().map_err(|e| format!("Cannot start the event loop: {e}"))?;
    let listener = Listener::bind(&mut reactor, local, server, server_options)
        .map_err(|e| format!("Cannot listen on {local}: {e}"))?;
    // Bind first (port 25 needs root), then give root up, before any thread starts.
    if options.setuid {
        if let Err(e) = drop_privileges() {
            log::debug!("dropping privileges: {e}");
            return Err("Cannot setuid \"nobody\"; try running with -n option.".into());
        }
    }
    let remote = reactor.remote();
    let target = listener.handle();
    std::thread::spawn(move || {
        let mut seen = 0;
        for signal in signals.forever() {
            if signal == signal_hook::consts::SIGHUP {
                reload_tls(reload.as_ref());
                continue;
            }
            seen += 1;
            if seen == 1 {
                log::info!("signal {signal}: shutting down gracefully");
                remote.notify(target, Shutdown::new(SHUTDOWN_GRACE));
            } else {
                log::info!("signal {signal} again: stopping now");
                remote.stop_handle().stop();
            }
        }
    });
    reactor
        .run()
        .map_err(|e| format!("The event loop failed: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(options: &Options) -> ClassArgs<'_> {
        ClassArgs {
            options,
            remote: None,
        }
    }

    #[test]
    fn classes_register_replace_and_report_errors() {
        let mut classes = Classes::builtin();
        assert_eq!(
            classes.available(),
            ["DebuggingServer", "Sink", "PureProxy", "MailmanProxy"]
        );
        // A factory can use `?` on any error type.
        classes.register(
            "Sink",
            |_| -> Result<Rc<RefCell<crate::servers::Sink>>, ClassError> {
                let port: u16 = "not a port".parse()?;
                Err(format!("unreachable: {port}").into())
            },
        );
        assert_eq!(
            classes.available(),
            ["DebuggingServer", "PureProxy", "MailmanProxy", "Sink"]
        );
        let options = Options::default();
        let message = |name| match classes.build(name, &args(&options)) {
            Ok(_) => panic!("{name} built"),
            Err(e) => e.to_string(),
        };
        assert_eq!(message("Sink"), "invalid digit found in string");
        assert_eq!(
            message("Nope"),
            "unknown server class: Nope (available: DebuggingServer, PureProxy, MailmanProxy, Sink)"
        );
        // A relaying class says why it cannot start without an upstream address.
        assert_eq!(
            message("PureProxy"),
            "Cannot resolve remote address: localhost:25"
        );
        assert!(classes.build("DebuggingServer", &args(&options)).is_ok());
    }

    #[test]
    fn limits_reach_the_server_options() {
        let Ok(Parsed::Run(o)) = parse_args(
            [
                "--limit-command-timeout",
                "0",
                "--greeting-delay",
                "250",
                "--backlog",
                "7",
            ]
            .map(OsString::from),
            "smtpd",
            VERSION,
        ) else {
            panic!("not parsed")
        };
        let mut server = ServerOptions::default();
        apply_limits(&o.limits, &mut server);
        assert_eq!(server.idle_timeout, None);
        assert_eq!(server.greeting_delay, Some(Duration::from_millis(250)));
        assert_eq!(server.backlog, 7);
        assert_eq!(server.max_connections_per_ip, 50);
    }
}
