//! A DNS server on loopback that a test controls: it serves the customer's zone as the
//! test publishes, removes or breaks records, over UDP and TCP, with hickory-server.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{CNAME, TXT};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

type Forwarder = hickory_resolver::Resolver<hickory_resolver::net::runtime::TokioRuntimeProvider>;

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    /// Zones answered by another server (mailroom's), which CNAMEs are followed into.
    delegated: Vec<(String, Forwarder)>,
    failing: HashSet<String>,
    asked: HashMap<String, usize>,
}

#[derive(Clone)]
pub struct TestDns {
    zone: Arc<Mutex<Zone>>,
    pub address: SocketAddr,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl TestDns {
    pub async fn start() -> TestDns {
        let (udp, tcp) = mailroom::dns::server::bind_both("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let address = udp.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone::default()));
        let mut server = hickory_server::Server::new(Handler(zone.clone()));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
        // The server runs until the test's runtime ends.
        tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        TestDns { zone, address }
    }

    pub fn cname(&self, name: &str, target: &str) {
        let target = Name::from_ascii(format!("{}.", target.trim_end_matches('.'))).unwrap();
        self.set(name, RecordType::CNAME, vec![RData::CNAME(CNAME(target))]);
    }

    /// Questions about names in `zone` go to `server`, and CNAMEs pointing into `zone` are
    /// followed there, as a recursive resolver would.
    pub fn delegate(&self, zone: &str, server: SocketAddr) {
        let mut connection = hickory_resolver::config::ConnectionConfig::udp();
        connection.port = server.port();
        let config = hickory_resolver::config::ResolverConfig::from_name_servers(vec![
            hickory_resolver::config::NameServerConfig::new(server.ip(), true, vec![connection]),
        ]);
        let mut builder = hickory_resolver::Resolver::builder_with_config(
            config,
            hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
        );
        builder.options_mut().edns0 = true;
        builder.options_mut().cache_size = 0;
        let forwarder = builder.build().unwrap();
        self.zone
            .lock()
            .unwrap()
            .delegated
            .push((key(zone), forwarder));
    }

    pub fn txt(&self, name: &str, values: &[&str]) {
        let data = values
            .iter()
            .map(|v| RData::TXT(TXT::new(vec![v.to_string()])))
            .collect();
        self.set(name, RecordType::TXT, data);
    }

    fn set(&self, name: &str, record_type: RecordType, data: Vec<RData>) {
        self.zone
            .lock()
            .unwrap()
            .records
            .insert((key(name), record_type), data);
    }

    pub fn remove(&self, name: &str) {
        self.zone
            .lock()
            .unwrap()
            .records
            .retain(|(n, _), _| *n != key(name));
    }

    /// Every question about `name` gets SERVFAIL until `recover`.
    pub fn fail(&self, name: &str) {
        self.zone.lock().unwrap().failing.insert(key(name));
    }

    /// How many questions about `name` the server has answered.
    pub fn times_asked(&self, name: &str) -> usize {
        self.zone
            .lock()
            .unwrap()
            .asked
            .get(&key(name))
            .copied()
            .unwrap_or(0)
    }

    pub fn recover(&self, name: &str) {
        self.zone.lock().unwrap().failing.remove(&key(name));
    }
}

struct Handler(Arc<Mutex<Zone>>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let query = request.request_info().unwrap().query;
        let name = key(&query.name().to_string());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let (mut answers, follow) = self.local(&name, query.query_type(), &mut metadata);
        if let Some((forwarder, target)) = follow {
            match forwarder
                .lookup(format!("{target}.").as_str(), query.query_type())
                .await
            {
                Ok(lookup) => {
                    metadata.response_code = ResponseCode::NoError;
                    answers.extend(lookup.answers().iter().cloned());
                }
                Err(error) if error.is_nx_domain() => {
                    metadata.response_code = ResponseCode::NXDomain
                }
                Err(_) => metadata.response_code = ResponseCode::ServFail,
            }
        }
        let mut edns = hickory_server::proto::op::Edns::new();
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(asked) = &request.edns {
            edns.set_max_payload(asked.max_payload().max(512));
            builder.edns(&edns);
        }
        let message = builder.build(metadata, answers.iter(), [], [], []);
        response_handle
            .send_response(message)
            .await
            .unwrap_or_else(|_| {
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            })
    }
}

impl Handler {
    /// The answers held here, and where to follow the question when another server holds
    /// (the rest of) the answer.
    fn local(
        &self,
        name: &str,
        record_type: RecordType,
        metadata: &mut Metadata,
    ) -> (Vec<Record>, Option<(Forwarder, String)>) {
        let mut zone = self.0.lock().unwrap();
        *zone.asked.entry(name.to_string()).or_default() += 1;
        let delegated_to = |target: &str, zone: &Zone| {
            zone.delegated
                .iter()
                .find(|(suffix, _)| target == suffix || target.ends_with(&format!(".{suffix}")))
                .map(|(_, forwarder)| forwarder.clone())
        };
        if let Some(forwarder) = delegated_to(name, &zone) {
            return (vec![], Some((forwarder, name.to_string())));
        }
        if zone.failing.contains(name) {
            metadata.response_code = ResponseCode::ServFail;
            return (vec![], None);
        }
        let owner = Name::from_ascii(format!("{name}.")).unwrap();
        if !zone.records.keys().any(|(n, _)| n == name) {
            metadata.response_code = ResponseCode::NXDomain;
            return (vec![], None);
        }
        let record = |data: &RData| Record::from_rdata(owner.clone(), 60, data.clone());
        if let Some(data) = zone.records.get(&(name.to_string(), record_type)) {
            return (data.iter().map(record).collect(), None);
        }
        if let Some(cname) = zone.records.get(&(name.to_string(), RecordType::CNAME)) {
            let answers: Vec<Record> = cname.iter().map(record).collect();
            let target = match &cname[0] {
                RData::CNAME(target) => key(&target.0.to_ascii()),
                _ => unreachable!("only CNAME data is stored as CNAME"),
            };
            let follow = delegated_to(&target, &zone).map(|forwarder| (forwarder, target));
            return (answers, follow);
        }
        (vec![], None)
    }
}
