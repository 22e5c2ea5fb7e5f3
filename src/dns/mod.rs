//! DNS: the resolver that checks tenants' records, and the authoritative server that
//! publishes their DKIM keys.

mod rate_limit;
pub mod resolver;
pub mod server;

pub use resolver::{Answer, DnsResolver};
