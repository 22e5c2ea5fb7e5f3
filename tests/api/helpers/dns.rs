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

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
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
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = udp.local_addr().unwrap();
        let tcp = tokio::net::TcpListener::bind(address).await.unwrap();
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
        let answers: Vec<Record> = {
            let mut zone = self.0.lock().unwrap();
            *zone.asked.entry(name.clone()).or_default() += 1;
            if zone.failing.contains(&name) {
                metadata.response_code = ResponseCode::ServFail;
                vec![]
            } else {
                let owner = Name::from_ascii(format!("{name}.")).unwrap();
                let exists = zone.records.keys().any(|(n, _)| *n == name);
                if !exists {
                    metadata.response_code = ResponseCode::NXDomain;
                }
                zone.records
                    .get(&(name.clone(), query.query_type()))
                    .into_iter()
                    .flatten()
                    .map(|data| Record::from_rdata(owner.clone(), 60, data.clone()))
                    .collect()
            }
        };
        let message = MessageResponseBuilder::from_message_request(request).build(
            metadata,
            answers.iter(),
            [],
            [],
            [],
        );
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
