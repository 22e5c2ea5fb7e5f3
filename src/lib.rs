//! mailroom: a self-hosted email control plane.
//!
//! Floors, top to bottom; a module imports only from floors below it:
//! `app` (composition root) > `router` > the resources (`tenancy`, `users`,
//! `invitations`, `domains`, `mailboxes`, `senders`, `relays`, `messages`, `emails`,
//! `suppressions`, `webhooks`) > `http` > `state` > `mail`, `dns`, `identity` > `events` >
//! `types`, `store`, `config`, `metrics`.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod dns;
pub mod domains;
pub mod emails;
pub mod events;
pub mod http;
pub mod identity;
pub mod invitations;
pub mod mail;
pub mod mailboxes;
pub mod messages;
pub mod metrics;
pub mod relays;
pub mod router;
pub mod senders;
pub mod state;
pub mod store;
pub mod suppressions;
pub mod tenancy;
pub mod types;
pub mod users;
pub mod webhooks;

pub use app::{Application, shutdown_signal};
