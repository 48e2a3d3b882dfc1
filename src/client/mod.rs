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
//!
//! TLS to the upstream (feature `tls`, [`UpstreamTls`] in [`RelayOptions::tls`]): with
//! [`StartTls`] set, the client sends STARTTLS after EHLO and reports [`Event::StartTls`] on
//! the `220`; the relay then switches its socket in place to a rustls client connection,
//! discarding any reply bytes read after that `220` (response injection), and the client says
//! EHLO again once [`Client::handle_tls_established`] is called. `Required` never goes on in
//! plaintext; implicit TLS (SMTPS) starts the handshake at connect.

mod relay;
mod session;

#[cfg(feature = "tls")]
pub use relay::{system_roots_config, upstream_ca_config};
pub use relay::{
    EventHandler, Relay, RelayCommand, RelayHandler, RelayOptions, UpstreamTls, UpstreamTlsMode,
};
pub use session::{Capabilities, Client, ClientConfig, Event, MailParams, StartTls};
