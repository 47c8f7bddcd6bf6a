//! postwire-e2e: the end-to-end harness, with real network peers on loopback. Each peer is
//! started by a test, scripted by it, records what it saw, and stops when dropped.
//!
//! - [`app`]: `TestApp`/`World`: a real Postwire app on loopback, with helpers per endpoint.
//! - [`dns`]: an authoritative DNS server (UDP and TCP) with a zone the test edits live.
//! - [`postfix`]: a real Postfix from a throwaway config directory (a bouncing MX, the bench).
//! - [`process`]: the real `postwire` binary as a child process, killed on drop.
//! - [`smtp`]: a scriptable SMTP server playing a recipient's MX host (STARTTLS, replies).
//! - [`webhook`]: an HTTP receiver for webhooks, with Standard Webhooks verification.

pub mod app;
pub mod dns;
pub mod postfix;
pub mod process;
pub mod smtp;
pub mod webhook;
