//! smtpd
#![forbid(unsafe_code)]
pub mod chat;
pub mod cli;
pub mod reactor;
pub mod server;
pub mod servers;
pub mod smtp;
