//! DNS: the resolver that checks tenants' records, and the authoritative server that
//! publishes their DKIM keys and the SPF record they include.

mod rate_limit;
pub mod resolver;
pub mod server;
pub mod spf;

pub use resolver::{Answer, DnsResolver};
