//! smtpd
#![forbid(unsafe_code)]
pub mod chat;
pub mod reactor;
