//! The non-blocking SMTP/LMTP client (what `PureProxy` used `smtplib` for): a sans-I/O
//! [`Client`] state machine and a [`Relay`] dispatcher that runs it on the reactor.

mod relay;
mod session;

pub use relay::{EventHandler, Relay, RelayCommand, RelayOptions};
pub use session::{dot_stuff, Capabilities, Client, ClientConfig, Event, MailParams};
