//! mailroom's DNS server is no amplifier: it answers Internet-class questions only, and
//! over UDP at most the configured rate to one source network, telling the rest to ask
//! again over TCP. Real questions over real UDP and TCP sockets.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::helpers::{Engine, TestApp, spawn_app_with};

async fn app(rate_limit: u64) -> (TestApp, SocketAddr) {
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
        s.dkim_zone = "dkim.mailroom.test".into();
        s.dns_rate_limit = rate_limit;
    })
    .await;
    let server = app.dns_address.expect("mailroom's DNS server runs");
    (app, server)
}

/// A question with EDNS (so a whole key fits a UDP answer).
fn question(name: &str, record_type: RecordType, class: DNSClass) -> Message {
    let mut query = Query::query(Name::from_ascii(name).unwrap(), record_type);
    query.set_query_class(class);
    let mut message = Message::query();
    message.add_query(query);
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    message.set_edns(edns);
    message
}

async fn ask_udp(socket: &UdpSocket, server: SocketAddr, message: &Message) -> Message {
    socket
        .send_to(&message.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("an answer over UDP")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn ask_tcp(server: SocketAddr, message: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let bytes = message.to_vec().unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

async fn a_token(app: &TestApp) -> String {
    let domain = app.add_domain("customer.com").await;
    let record = &domain["records"][0];
    let target = record["value"].as_str().unwrap();
    format!("{}.", target.trim_end_matches('.'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_questions_of_other_classes_are_refused() {
    let (app, server) = app(0).await;
    let name = a_token(&app).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let internet = ask_udp(
        &socket,
        server,
        &question(&name, RecordType::TXT, DNSClass::IN),
    )
    .await;
    assert_eq!(internet.metadata.response_code, ResponseCode::NoError);
    assert_eq!(internet.answers.len(), 1);

    for class in [DNSClass::CH, DNSClass::HS, DNSClass::ANY] {
        for (name, record_type) in [
            (name.as_str(), RecordType::TXT),
            ("dkim.mailroom.test.", RecordType::SOA),
            ("version.bind.", RecordType::TXT),
        ] {
            let answer = ask_udp(&socket, server, &question(name, record_type, class)).await;
            assert_eq!(
                answer.metadata.response_code,
                ResponseCode::Refused,
                "{class:?} {name} {record_type}"
            );
            assert!(answer.answers.is_empty());
        }
    }

    // One label `x.dkim` under `mailroom.test` reads like a name of the zone as text, but is
    // none of its names.
    let odd = Name::from_labels(vec![&b"x.dkim"[..], b"mailroom", b"test"]).unwrap();
    let mut message = Message::query();
    message.add_query(Query::query(odd, RecordType::TXT));
    let answer = ask_udp(&socket, server, &message).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_udp_answers_are_rate_limited_per_source_and_tcp_still_answers() {
    let (app, server) = app(5).await;
    let name = a_token(&app).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let asked = question(&name, RecordType::TXT, DNSClass::IN);
    let bytes = asked.to_vec().unwrap();
    let amplified = {
        let answer = ask_udp(&socket, server, &asked).await;
        answer.to_vec().unwrap().len() as f64 / bytes.len() as f64
    };
    assert!(
        amplified > 4.0,
        "a key answer is {amplified:.1} times the question"
    );

    // A flood from one source (forged, it would be a victim's address).
    let flood = 40;
    for _ in 0..flood {
        socket.send_to(&bytes, server).await.unwrap();
    }
    let (mut full, mut truncated, mut size) = (0, 0, 0);
    let mut buf = vec![0u8; 4096];
    for _ in 0..flood {
        let Ok(received) =
            tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
        else {
            break;
        };
        let (n, _) = received.unwrap();
        size += n;
        let answer = Message::from_vec(&buf[..n]).unwrap();
        if answer.metadata.truncation {
            assert!(answer.answers.is_empty());
            assert!(
                n <= bytes.len() + 16,
                "a truncated answer is no larger than the question"
            );
            truncated += 1;
        } else {
            assert_eq!(answer.answers.len(), 1);
            full += 1;
        }
    }
    // The first answer above used one of the five; a few refill while the flood is read.
    assert!(full <= 6, "{full} whole answers, {truncated} truncated");
    assert!(
        truncated >= flood - 6,
        "{full} whole answers, {truncated} truncated"
    );
    assert!(
        (size as f64) < (flood * bytes.len()) as f64 * 2.0,
        "the flood's answers ({size} bytes) are not much larger than its questions"
    );

    // A real client, told to, asks again over TCP and gets its answer.
    let over_tcp = ask_tcp(server, &asked).await;
    assert!(!over_tcp.metadata.truncation);
    assert_eq!(over_tcp.answers.len(), 1);

    // And the limit refills: a second later UDP answers whole again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = ask_udp(&socket, server, &asked).await;
    assert!(!again.metadata.truncation);
    assert_eq!(again.answers.len(), 1);
}
