//! Lookups for domain checks, through hickory-resolver, without a cache so that every
//! check sees what DNS says now.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, net::NetError};

/// What one lookup told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The records' values: names lowercase without the trailing dot, TXT strings joined.
    Found(Vec<String>),
    /// The name or the record type does not exist: a definite answer.
    Nothing,
    /// No answer to trust (timeout, SERVFAIL, refused): says nothing about the records.
    Failed(String),
}

#[derive(Clone)]
pub struct DnsResolver {
    inner: Resolver<TokioRuntimeProvider>,
}

impl DnsResolver {
    /// Uses `nameservers` when given, else the system's configuration.
    pub fn new(nameservers: &[SocketAddr]) -> anyhow::Result<DnsResolver> {
        let mut builder = if nameservers.is_empty() {
            Resolver::builder_tokio()?
        } else {
            let servers = nameservers
                .iter()
                .map(|address| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut connection| {
                            connection.port = address.port();
                            connection
                        })
                        .collect();
                    NameServerConfig::new(address.ip(), true, connections)
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.cache_size = 0;
        options.timeout = Duration::from_secs(3);
        options.attempts = 2;
        options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        options.edns0 = true;
        Ok(DnsResolver {
            inner: builder.build()?,
        })
    }

    pub async fn lookup(&self, name: &str, record_type: RecordType) -> Answer {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.inner.lookup(fqdn.as_str(), record_type).await {
            Ok(lookup) => {
                let values: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter(|record| record.record_type() == record_type)
                    .filter_map(|record| value(&record.data))
                    .collect();
                if values.is_empty() {
                    Answer::Nothing
                } else {
                    Answer::Found(values)
                }
            }
            Err(error) if error.is_nx_domain() || error.is_no_records_found() => Answer::Nothing,
            Err(error) => Answer::Failed(describe(&error)),
        }
    }
}

fn value(data: &RData) -> Option<String> {
    Some(match data {
        RData::CNAME(target) => name_text(&target.0),
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect::<String>(),
        RData::MX(mx) => format!("{} {}", mx.preference, name_text(&mx.exchange)),
        _ => return None,
    })
}

fn name_text(name: &hickory_resolver::proto::rr::Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn describe(error: &NetError) -> String {
    match error {
        NetError::Timeout => "the lookup timed out".to_string(),
        other => format!("the lookup failed: {other}"),
    }
}
