//! State shared by a listener and its channels, and the guards that keep its counts right.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, ServerOptions};
use crate::reactor::Handle;
use crate::smtp::{Config, MemoryBudget};

/// State shared by a listener and its channels.
pub(crate) struct ListenerShared {
    pub(crate) options: ServerOptions,
    pub(crate) config: Arc<Config>,
    pub(crate) channels: RefCell<HashSet<Handle>>,
    /// Open connections, counted from accept until the channel is dropped.
    pub(crate) connections: Cell<usize>,
    /// Open connections per client address.
    pub(crate) per_ip: RefCell<HashMap<IpAddr, usize>>,
    /// Bytes of message data held by all channels (see `ServerOptions::data_memory_limit`).
    pub(crate) data_memory: Cell<usize>,
    /// Opens each channel's session.
    pub(crate) backend: RefCell<Box<dyn Backend>>,
}

impl ListenerShared {
    pub(crate) fn new(
        options: ServerOptions,
        config: Config,
        backend: Box<dyn Backend>,
    ) -> ListenerShared {
        ListenerShared {
            config: Arc::new(config),
            options,
            channels: RefCell::new(HashSet::new()),
            connections: Cell::new(0),
            per_ip: RefCell::new(HashMap::new()),
            data_memory: Cell::new(0),
            backend: RefCell::new(backend),
        }
    }

    /// Whether `ip` is exempt from the per-address connection cap.
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.options
            .trusted_networks
            .iter()
            .any(|n| n.contains(&ip))
    }

    /// The refusal for a new connection from `ip`, if a connection cap is reached.
    pub(crate) fn refusal(&self, ip: IpAddr) -> Option<String> {
        let host = &self.options.session.hostname;
        let max = self.options.max_connections;
        if max > 0 && self.connections.get() >= max {
            log::warn!("{ip}: refused, {max} connections already open");
            return Some(format!("421 4.7.0 {host} Error: too many connections\r\n"));
        }
        let per_ip = self.options.max_connections_per_ip;
        if per_ip > 0
            && self.per_ip.borrow().get(&ip).copied().unwrap_or(0) >= per_ip
            && !self.is_trusted(ip)
        {
            log::warn!("{ip}: refused, {per_ip} connections from it already open");
            return Some(format!(
                "421 4.7.0 {host} Error: too many connections from {ip}\r\n"
            ));
        }
        None
    }
}

/// One open connection in the listener's counts (total, per address, the set of channels the
/// shutdown reaches), released when dropped — also when a panic drops the channel without
/// its `on_close`.
pub(crate) struct ConnectionGuard {
    shared: Rc<ListenerShared>,
    ip: IpAddr,
    handle: Option<Handle>,
}

impl ConnectionGuard {
    /// Counts a connection from `ip`.
    pub(crate) fn new(shared: Rc<ListenerShared>, ip: IpAddr) -> ConnectionGuard {
        shared.connections.set(shared.connections.get() + 1);
        *shared.per_ip.borrow_mut().entry(ip).or_insert(0) += 1;
        ConnectionGuard {
            shared,
            ip,
            handle: None,
        }
    }

    /// The channel's handle, once it runs: it then gets the listener's shutdown.
    pub(crate) fn register(&mut self, handle: Handle) {
        self.handle = Some(handle);
        self.shared.channels.borrow_mut().insert(handle);
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.handle {
            self.shared.channels.borrow_mut().remove(&handle);
        }
        self.shared
            .connections
            .set(self.shared.connections.get().saturating_sub(1));
        let mut per_ip = self.shared.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// The listener's data memory limit, as a channel's receiver draws on it.
pub(crate) struct DataBudget<'a>(pub(crate) &'a ListenerShared);

impl MemoryBudget for DataBudget<'_> {
    fn try_reserve(&mut self, bytes: usize) -> bool {
        let limit = self.0.options.data_memory_limit;
        let used = self.0.data_memory.get();
        if limit != 0 && used + bytes > limit {
            return false;
        }
        self.0.data_memory.set(used + bytes);
        true
    }

    fn release(&mut self, bytes: usize) {
        let used = self.0.data_memory.get();
        self.0.data_memory.set(used.saturating_sub(bytes));
    }
}

/// Sent by the listener to each of its channels on [`Shutdown`](super::Shutdown).
pub(crate) struct ChannelShutdown {
    pub(crate) grace: Duration,
}
