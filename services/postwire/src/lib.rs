//! The Postwire application: wires the store, the API gateway, the MTA worker and the
//! webhook dispatcher into one [`App`], and the command-line interface around it.
//!
//! - [`app`]: [`App`], built from settings and run on a listener the caller owns.
//! - [`cli`]: the `postwire` command line (serve, keys, dkim).
//! - [`keygen`]: DKIM key pair generation and the TXT record to publish.
//! - [`pruner`]: the task that applies `storage.retention`.
//! - [`send`]: `postwire send`, a test message through a running service.

pub mod app;
pub mod cli;
pub mod keygen;
pub mod pruner;
pub mod send;

pub use app::{App, AppError};
