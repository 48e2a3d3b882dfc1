//! Built-in servers, written only against the public [`SmtpServer`](crate::server::SmtpServer)
//! API, as a user would write their own.
pub mod debugging;
mod sink;

pub use debugging::DebuggingServer;
pub use sink::Sink;
