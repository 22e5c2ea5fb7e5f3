//! The integration tests: the real server over real HTTP, on SQLite and on PostgreSQL.

mod helpers;

mod auth;
mod cli;
mod dkim_dns;
mod domains;
mod errors;
mod invitations;
mod mail;
mod mail_servers;
mod mailboxes;
mod openapi;
mod processes;
mod properties;
mod senders;
mod tenancy;
mod walls;
