//! DNS: the resolver that checks tenants' records, and the authoritative server that
//! publishes their DKIM keys.

pub mod resolver;
pub mod server;

pub use resolver::{Answer, DnsResolver};
