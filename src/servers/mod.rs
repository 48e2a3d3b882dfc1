//! Built-in servers, written only against the public [`SmtpServer`](crate::server::SmtpServer)
//! API, as a user would write their own; [`capture`] holds the stores a server can keep
//! messages in (Maildir, mbox, JSON lines) and [`faults`] a wrapper that makes any backend
//! misbehave on purpose.
pub mod capture;
pub mod debugging;
mod dsn;
pub mod faults;
mod headers;
pub mod mailman;
mod pure_proxy;
mod sink;

pub use debugging::DebuggingServer;
pub use mailman::{MailmanOptions, MailmanProxy};
pub use pure_proxy::{ProxyOptions, PureProxy, Refusal, RelayMode};
pub use sink::Sink;
