//! mailroom's authoritative DNS server for the DKIM zone: the TXT record of every domain's
//! keys at `{token}.{zone}`, asked of the `Records` it is given on each query so that a
//! new or rotated key is published at once; and what the settings fix: SOA and NS, the
//! name server's addresses, the SPF record tenants include.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA, TXT};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};

use super::rate_limit::RateLimit;
use super::spf::{SpfRecord, character_strings};
use crate::metrics::Metrics;

/// Of every answer: a rotated DKIM key is signed with only after this has passed.
pub const TTL: u32 = 300;

/// What the zone publishes, answered by the composition root from the domains' keys.
#[async_trait::async_trait]
pub trait Records: Send + Sync + 'static {
    /// The TXT value at `{label}.{zone}`, when there is one.
    async fn txt(&self, label: &str) -> anyhow::Result<Option<String>>;
}

/// What the operator's settings publish in the zone besides the keys.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The SPF record tenants include, when its name is in the zone.
    pub spf: Option<SpfRecord>,
    /// The addresses of `ns.{zone}`, the name server the zone names.
    pub ns_addresses: Vec<IpAddr>,
}

/// A running DNS server; `shutdown` stops it.
pub struct DnsServer {
    server: hickory_server::Server<DkimZone>,
    pub address: SocketAddr,
}

impl DnsServer {
    /// Answers on UDP and TCP at `address` for `zone`, over UDP at most `rate_limit`
    /// answers a second to one source network (0: no limit); counts its answers in
    /// `metrics`.
    pub async fn start(
        address: SocketAddr,
        zone: &str,
        records: Box<dyn Records>,
        rate_limit: u64,
        published: Published,
        metrics: Metrics,
    ) -> anyhow::Result<DnsServer> {
        let (udp, tcp) = bind_both(address).await?;
        let address = udp.local_addr()?;
        let handler = DkimZone::new(
            zone,
            records,
            RateLimit::new(rate_limit),
            &published,
            metrics,
        )?;
        let mut server = hickory_server::Server::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        tracing::info!(%address, zone, "DNS server listening");
        Ok(DnsServer { server, address })
    }

    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            tracing::warn!(%error, "DNS server stopped with an error");
        }
    }
}

/// UDP and TCP on one port. With port 0 the system picks the UDP port, which TCP may
/// already use elsewhere: then another is tried.
pub async fn bind_both(address: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(address)
            .await
            .with_context(|| format!("cannot listen for DNS on udp/{address}"))?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(_) if address.port() == 0 && tries < 20 => tries += 1,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot listen for DNS on tcp/{bound}"));
            }
        }
    }
}

pub struct DkimZone {
    records: Box<dyn Records>,
    /// Lowercase, without the trailing dot.
    zone: String,
    soa: Record,
    /// What the settings fix, by lowercase owner name: the apex's SOA and NS, the name
    /// server's addresses, the SPF record.
    fixed: HashMap<String, Vec<Record>>,
    udp_answers: RateLimit,
    metrics: Metrics,
}

impl DkimZone {
    fn new(
        zone: &str,
        records: Box<dyn Records>,
        udp_answers: RateLimit,
        published: &Published,
        metrics: Metrics,
    ) -> anyhow::Result<DkimZone> {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let origin = Name::from_ascii(format!("{zone}."))?;
        let nameserver = Name::from_ascii(format!("ns.{zone}."))?;
        let soa = SOA::new(
            nameserver.clone(),
            Name::from_ascii(format!("hostmaster.{zone}."))?,
            1,
            3600,
            600,
            604_800,
            TTL,
        );
        let soa = Record::from_rdata(origin.clone(), TTL, RData::SOA(soa));
        let ns = Record::from_rdata(origin, TTL, RData::NS(NS(nameserver.clone())));
        let mut fixed: HashMap<String, Vec<Record>> = HashMap::new();
        fixed.insert(zone.clone(), vec![soa.clone(), ns]);
        // The name server exists even without addresses: the NS record names it.
        let addresses = published.ns_addresses.iter().map(|address| {
            let data = match address {
                IpAddr::V4(v4) => RData::A(A(*v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
            };
            Record::from_rdata(nameserver.clone(), TTL, data)
        });
        fixed
            .entry(format!("ns.{zone}"))
            .or_default()
            .extend(addresses);
        if let Some(spf) = &published.spf {
            let name = spf.name.trim_end_matches('.').to_ascii_lowercase();
            if name == zone || name.ends_with(&format!(".{zone}")) {
                let owner = Name::from_ascii(format!("{name}."))?;
                fixed.entry(name).or_default().push(txt(owner, &spf.value));
            }
        }
        Ok(DkimZone {
            records,
            zone,
            soa,
            fixed,
            udp_answers,
            metrics,
        })
    }

    /// The response code and answers for one question.
    async fn answer(&self, name: &str, record_type: RecordType) -> (ResponseCode, Vec<Record>) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        // A label holding a dot or an odd byte is written escaped (`x\.dkim`): such a name
        // is none of the zone's, whatever its text ends with.
        if name.contains('\\') || (name != self.zone && !name.ends_with(&format!(".{}", self.zone)))
        {
            return (ResponseCode::Refused, vec![]);
        }
        if let Some(records) = self.fixed.get(&name) {
            let answer = records
                .iter()
                .filter(|record| record.record_type() == record_type)
                .cloned()
                .collect();
            return (ResponseCode::NoError, answer);
        }
        // A name between the apex and a fixed name (`b.{zone}` of `a.b.{zone}`) exists
        // without records (RFC 8020).
        let below = format!(".{name}");
        if self.fixed.keys().any(|fixed| fixed.ends_with(&below)) {
            return (ResponseCode::NoError, vec![]);
        }
        let label = &name[..name.len() - self.zone.len() - 1];
        if label.contains('.') {
            return (ResponseCode::NXDomain, vec![]);
        }
        match self.records.txt(label).await {
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "DNS: cannot read the zone's records");
                (ResponseCode::ServFail, vec![])
            }
            Ok(None) => (ResponseCode::NXDomain, vec![]),
            Ok(Some(_)) if record_type != RecordType::TXT => (ResponseCode::NoError, vec![]),
            Ok(Some(value)) => {
                let Ok(owner) = Name::from_ascii(format!("{name}.")) else {
                    return (ResponseCode::FormErr, vec![]);
                };
                (ResponseCode::NoError, vec![txt(owner, &value)])
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for DkimZone {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let sent = self.respond(request, response_handle).await;
        self.metrics
            .dns_query(sent.response_code.into(), sent.truncation);
        sent
    }
}

impl DkimZone {
    /// Answers one request; answers what was sent.
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let builder = MessageResponseBuilder::from_message_request(request);
        if request.protocol() == Protocol::Udp && !self.udp_answers.allow(request.src().ip()) {
            // Over the source's rate: an empty answer flagged truncated, no larger than the
            // question, tells a real client to ask again over TCP.
            metadata.truncation = true;
            let message = builder.build_no_records(metadata);
            return response_handle
                .send_response(message)
                .await
                .unwrap_or_else(|_| failed(metadata));
        }
        let query = match request.request_info() {
            Ok(info) if request.metadata.op_code == OpCode::Query => info.query,
            Ok(_) => {
                return send_error(response_handle, builder, metadata, ResponseCode::NotImp).await;
            }
            Err(_) => {
                return send_error(response_handle, builder, metadata, ResponseCode::FormErr).await;
            }
        };
        // The zone is Internet-class data only (CHAOS questions such as `version.bind`
        // included).
        if query.query_class() != DNSClass::IN {
            return send_error(response_handle, builder, metadata, ResponseCode::Refused).await;
        }
        let (code, answers) = self
            .answer(&query.name().to_string(), query.query_type())
            .await;
        metadata.response_code = code;
        metadata.authoritative = code != ResponseCode::Refused;

        let mut response_edns = Edns::new();
        let mut limit = 512;
        let mut builder = builder;
        if let Some(edns) = &request.edns {
            limit = edns.max_payload().max(512);
            response_edns.set_max_payload(limit);
            builder.edns(&response_edns);
        }
        // A key does not fit a plain 512-byte UDP answer: flag it truncated so that the
        // client asks again over TCP.
        let too_large = request.protocol() == Protocol::Udp
            && answers.iter().map(answer_size).sum::<usize>() + 64 > usize::from(limit);
        let (answers, soa) = if too_large {
            metadata.truncation = true;
            (vec![], vec![])
        } else if answers.is_empty() && code != ResponseCode::Refused {
            (answers, vec![self.soa.clone()])
        } else {
            (answers, vec![])
        };
        let message = builder.build(metadata, answers.iter(), [], soa.iter(), []);
        match response_handle.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, "DNS: cannot send a response");
                failed(metadata)
            }
        }
    }
}

fn txt(owner: Name, value: &str) -> Record {
    Record::from_rdata(owner, TTL, RData::TXT(TXT::new(character_strings(value))))
}

fn answer_size(record: &Record) -> usize {
    let rdata = match &record.data {
        RData::TXT(txt) => txt.txt_data.iter().map(|s| s.len() + 1).sum(),
        _ => 64,
    };
    record.name.len() + 10 + rdata
}

async fn send_error<R: ResponseHandler>(
    mut handle: R,
    builder: MessageResponseBuilder<'_>,
    request_metadata: Metadata,
    code: ResponseCode,
) -> ResponseInfo {
    let message = builder.error_msg(&request_metadata, code);
    handle
        .send_response(message)
        .await
        .unwrap_or_else(|_| failed(request_metadata))
}

fn failed(mut metadata: Metadata) -> ResponseInfo {
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}
