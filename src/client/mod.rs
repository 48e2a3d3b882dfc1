//! The non-blocking SMTP/LMTP client (what `PureProxy` used `smtplib` for): a sans-I/O
//! [`Client`] state machine and a [`Relay`] dispatcher that runs it on the reactor.
//!
//! ```text
//!   mail() rcpt() data() rset() quit()   ──►  Client  ──► poll_transmit(): bytes for the socket
//!   handle_line(reply line)              ──►          ──► poll_event(): Ready, Mail, Rcpt, Data, ...
//! ```
//!
//! Commands may be issued at any time; they are queued and sent one at a time, each after the
//! reply to the one before, so every [`Event`] names the command it answers. The greeting and
//! EHLO (falling back to HELO when EHLO is refused; LHLO in LMTP mode) are the client's own
//! business; MAIL parameters are passed only when the upstream advertised their extension, and
//! a transaction the upstream cannot carry (SMTPUTF8 or an 8-bit body without the extension) is
//! refused locally with the RFC's reply instead of being mangled.

mod relay;
mod session;

#[cfg(feature = "tls")]
pub use relay::{system_roots_config, upstream_ca_config};
pub use relay::{
    EventHandler, Relay, RelayCommand, RelayHandler, RelayOptions, UpstreamTls, UpstreamTlsMode,
};
pub use session::{Capabilities, Client, ClientConfig, Event, MailParams, StartTls};
