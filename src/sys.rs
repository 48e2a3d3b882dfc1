//! Process utilities a server needs once at start-up: the machine's name and the descriptor
//! limit.
//!
//! They are blocking system calls, so none of them runs inside the loop: [`fqdn`] caches its
//! answer, and the descriptor functions are meant for start-up (the `smtpd` binary calls
//! [`raise_fd_limit`] before it builds its [`ServerOptions`](crate::server::ServerOptions),
//! whose connection cap defaults to [`fd_connection_limit`]).
//!
//! ```
//! // Raise the soft limit first, then derive the connection cap from it.
//! let _ = smtpd::sys::raise_fd_limit();
//! assert!(smtpd::sys::fd_connection_limit() >= 1);
//! assert!(!smtpd::sys::fqdn().is_empty());
//! ```

use std::sync::OnceLock;

/// The machine's fully qualified domain name as Python's `socket.getfqdn()` finds it: the host
/// name, resolved and looked up in reverse; the first of those names that contains a dot, else
/// the reverse name, else the host name. Looked up once per process (it is blocking I/O) and
/// cached; the default [`ServerOptions`](crate::server::ServerOptions) greet with it.
///
/// Without the `dns-lookup` cargo feature (on by default) there is no resolver, and this is
/// the plain host name (`localhost` if even that cannot be read).
pub fn fqdn() -> String {
    static FQDN: OnceLock<String> = OnceLock::new();
    FQDN.get_or_init(lookup_fqdn).clone()
}

/// The host name, `localhost` when it cannot be read.
fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(feature = "dns-lookup")]
fn lookup_fqdn() -> String {
    let host = host_name();
    let reverse = dns_lookup::lookup_host(&host)
        .ok()
        .and_then(|addrs| addrs.into_iter().next())
        .and_then(|ip| dns_lookup::lookup_addr(&ip).ok());
    match reverse {
        Some(name) if name.contains('.') || !host.contains('.') => name,
        _ => host,
    }
}

#[cfg(not(feature = "dns-lookup"))]
fn lookup_fqdn() -> String {
    host_name()
}

/// Descriptors kept free when [`ServerOptions::max_connections`] is derived from the
/// descriptor limit: the listener, the epoll and waker descriptors, log files, the acceptor's
/// reserve, outgoing relay connections.
///
/// [`ServerOptions::max_connections`]: crate::server::ServerOptions::max_connections
pub const FD_RESERVE: usize = 64;

/// The default [`ServerOptions::max_connections`]: the process's soft `RLIMIT_NOFILE` minus
/// [`FD_RESERVE`] (at least 1), so the connection cap is reached before descriptors run out.
/// The `smtpd` binary raises the soft limit to the hard one first
/// ([`raise_fd_limit`]). 0 (no cap) when the limit cannot be read.
///
/// [`ServerOptions::max_connections`]: crate::server::ServerOptions::max_connections
pub fn fd_connection_limit() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => usize::try_from(soft)
            .unwrap_or(usize::MAX)
            .saturating_sub(FD_RESERVE)
            .max(1),
        Err(_) => 0,
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit. The
/// `smtpd` binary calls it at start-up, before it builds its
/// [`ServerOptions`](crate::server::ServerOptions).
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_is_cached_and_not_empty() {
        let name = fqdn();
        assert!(!name.is_empty());
        assert_eq!(fqdn(), name);
    }

    #[test]
    fn connection_limit_leaves_the_reserve() {
        use nix::sys::resource::{getrlimit, Resource};
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let soft = usize::try_from(soft).unwrap_or(usize::MAX);
        assert_eq!(
            fd_connection_limit(),
            soft.saturating_sub(FD_RESERVE).max(1)
        );
    }
}
