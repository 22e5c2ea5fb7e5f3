//! mailroom's own DNS server publishes the DKIM key that matches the stored private key.

use std::net::SocketAddr;

use base64::Engine as _;
use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use mailroom::store::crypto::MasterKey;
use reqwest::Method;
use rsa::pkcs1v15::{SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{Signer, Verifier};
use rsa::traits::PublicKeyParts;

use crate::both_engines;
use crate::helpers::{Engine, spawn_app_with};

both_engines!(the_published_key_verifies_signatures_made_with_the_stored_key);

pub fn resolver(server: SocketAddr, tcp: bool) -> Resolver<TokioRuntimeProvider> {
    let mut connection = if tcp {
        ConnectionConfig::tcp()
    } else {
        ConnectionConfig::udp()
    };
    connection.port = server.port();
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
        server.ip(),
        true,
        vec![connection],
    )]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().edns0 = true;
    builder.options_mut().cache_size = 0;
    builder.build().unwrap()
}

pub async fn txt(resolver: &Resolver<TokioRuntimeProvider>, name: &str) -> Option<String> {
    let lookup = resolver.lookup(name, RecordType::TXT).await.ok()?;
    lookup
        .answers()
        .iter()
        .find_map(|record| match &record.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
}

async fn the_published_key_verifies_signatures_made_with_the_stored_key(engine: Engine) {
    let app = spawn_app_with(engine, |s| {
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
        s.dkim_zone = "dkim.mailroom.test".into();
    })
    .await;
    let server = app.dns_address.expect("mailroom's DNS server runs");
    app.add_domain("customer.com").await;

    let master_key = MasterKey::load(&app.settings).unwrap();
    let keys: Vec<(String, String, String)> =
        sqlx::query_as("SELECT token, algorithm, private_key FROM dkim_keys ORDER BY position")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    // An RSA key and an Ed25519 key that sign, and an Ed25519 standby.
    let algorithms: Vec<&str> = keys.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(algorithms, ["rsa", "ed25519", "ed25519"]);
    let message = b"From: a@customer.com\r\nSubject: hello\r\n";

    for (tcp, (token, algorithm, sealed)) in [false, true, false].into_iter().zip(&keys) {
        let record = txt(
            &resolver(server, tcp),
            &format!("{token}.dkim.mailroom.test."),
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "no TXT for {token} over {}",
                if tcp { "TCP" } else { "UDP" }
            )
        });
        let public = record
            .strip_prefix(&format!("v=DKIM1; k={algorithm}; p="))
            .expect(&record);
        let public = base64::engine::general_purpose::STANDARD
            .decode(public)
            .unwrap();
        let der = mailroom::domains::dkim::open_private_key(&master_key, token, sealed).unwrap();
        if algorithm == "rsa" {
            let verifying = VerifyingKey::<sha2::Sha256>::new(
                rsa::RsaPublicKey::from_public_key_der(&public).unwrap(),
            );
            let private = rsa::RsaPrivateKey::from_pkcs8_der(&der).unwrap();
            assert_eq!(private.size() * 8, 2048);
            let signature = SigningKey::<sha2::Sha256>::new(private).sign(message);
            verifying
                .verify(message, &signature)
                .expect("the published key is the stored key's");
            assert!(verifying.verify(b"another message", &signature).is_err());
        } else {
            // RFC 8463: the raw 32-byte public key.
            assert_eq!(public.len(), 32);
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&der).unwrap();
            let signature = pair.sign(message);
            let verifying =
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public);
            verifying
                .verify(message, signature.as_ref())
                .expect("the published key is the stored key's");
            assert!(verifying.verify(b"another", signature.as_ref()).is_err());
        }
        assert!(
            !sealed.contains(&record[record.len() - 20..]),
            "the private key is not stored in clear"
        );
    }

    // Unknown names are NXDOMAIN; the apex has SOA and NS; other zones are refused.
    let udp = resolver(server, false);
    let unknown = udp
        .lookup(
            "0123456789abcdef0123456789abcdef.dkim.mailroom.test.",
            RecordType::TXT,
        )
        .await;
    assert!(unknown.is_err_and(|e| e.is_nx_domain()));
    let soa = udp
        .lookup("dkim.mailroom.test.", RecordType::SOA)
        .await
        .unwrap();
    assert!(matches!(soa.answers()[0].data, RData::SOA(_)));
    let ns = udp
        .lookup("dkim.mailroom.test.", RecordType::NS)
        .await
        .unwrap();
    assert!(matches!(ns.answers()[0].data, RData::NS(_)));
    assert!(udp.lookup("example.org.", RecordType::TXT).await.is_err());

    // A deleted domain's keys disappear from DNS at once, without a restart.
    app.api(Method::DELETE, "/v2/domains/customer.com")
        .send()
        .await
        .unwrap();
    let gone = udp
        .lookup(
            format!("{}.dkim.mailroom.test.", keys[0].0).as_str(),
            RecordType::TXT,
        )
        .await;
    assert!(gone.is_err_and(|e| e.is_nx_domain()));
}
