//! The integration tests: the real server over real HTTP, on SQLite and on PostgreSQL.

mod helpers;

mod auth;
mod cli;
mod connection_reuse;
mod connections;
mod cpu_sink;
mod delivery;
mod dkim_dns;
mod dkim_rotation;
mod dns_abuse;
mod dns_advice;
mod domains;
mod emails;
mod errors;
mod hardening;
mod identity;
mod invitations;
mod mail;
mod mail_servers;
mod mailboxes;
mod metrics;
mod mime;
mod openapi;
mod processes;
mod properties;
mod relay_abuse;
mod relay_tls;
mod senders;
mod suppressions;
mod tenancy;
mod untrusted_input;
mod walls;
mod webhooks;
