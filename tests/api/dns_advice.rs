//! Every record mailroom advises holds up when published: SPF checked by pyspf against
//! mailroom's own DNS server, DMARC by an independent parser, and the zone's name server
//! has the addresses the operator gave.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hickory_resolver::Resolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::dmarc::{Dmarc, Policy};
use mailroom::config::Settings;
use mailroom::types::EmailAddress;
use serde_json::Value;

use crate::both_engines;
use crate::helpers::dns::TestDns;
use crate::helpers::judges::{importable, judge};
use crate::helpers::{Engine, spawn_app_with};

both_engines!(
    the_advised_records_pass_independent_checkers,
    with_nothing_configured_nothing_untrue_is_advised,
);

const ZONE: &str = "dkim.mailroom.test";

/// pyspf's verdict for mail from `sender` sent from each of `ips`.
fn spf_results(
    zone_dns: SocketAddr,
    dns: SocketAddr,
    sender: &str,
    ips: &[&str],
) -> BTreeMap<String, String> {
    let (zone_dns, dns) = (zone_dns.to_string(), dns.to_string());
    let mut args = vec![
        "--zone",
        ZONE,
        "--zone-dns",
        &zone_dns,
        "--dns",
        &dns,
        "--sender",
        sender,
    ];
    args.extend(ips);
    let (ok, output) = judge("spf_check.py", &args, b"");
    assert!(ok, "the SPF judge failed");
    let results: Value = serde_json::from_str(&output).unwrap();
    results
        .as_object()
        .unwrap()
        .iter()
        .map(|(ip, verdict)| {
            let result = verdict["result"].as_str().unwrap().to_string();
            eprintln!("{ip}: {result} ({})", verdict["explanation"]);
            (ip.clone(), result)
        })
        .collect()
}

fn resolver(server: SocketAddr) -> Resolver<TokioRuntimeProvider> {
    let mut connection = ConnectionConfig::udp();
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

/// What DNS answers: `Ok(values)`, `Err("nxdomain")` or `Err("nodata")`.
async fn ask(
    resolver: &Resolver<TokioRuntimeProvider>,
    name: &str,
    record_type: RecordType,
) -> Result<Vec<String>, &'static str> {
    match resolver.lookup(name, record_type).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                ),
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(aaaa) => Some(aaaa.0.to_string()),
                RData::NS(ns) => Some(ns.0.to_ascii()),
                RData::SOA(soa) => Some(soa.mname.to_ascii()),
                _ => None,
            })
            .collect()),
        Err(error) if error.is_nx_domain() => Err("nxdomain"),
        Err(error) if error.is_no_records_found() => Err("nodata"),
        Err(error) => panic!("{name} {record_type}: {error}"),
    }
}

fn advised<'a>(domain: &'a Value, name: &str, prefix: &str) -> Option<&'a Value> {
    domain["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name && r["value"].as_str().unwrap().starts_with(prefix))
}

async fn the_advised_records_pass_independent_checkers(engine: Engine) {
    let dns = TestDns::start().await;
    // The upstream relay provider's own SPF record.
    dns.txt("_spf.relay.example", &["v=spf1 ip4:198.51.100.0/24 -all"]);
    let app = spawn_app_with(engine, |s| {
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
        s.dns_nameservers = vec![dns.address];
        s.dkim_zone = ZONE.into();
        s.spf_ips = vec!["192.0.2.0/24".into(), "2001:db8:5::1".into()];
        // Enough networks that the record takes two DNS strings.
        s.spf_ips
            .extend((0..12).map(|i| format!("2001:db8:1{i:02}::/48")));
        s.spf_upstream = vec!["_spf.relay.example".into()];
        s.dns_ns_addresses = vec![
            "192.0.2.53".parse().unwrap(),
            "2001:db8::53".parse().unwrap(),
        ];
        s.dmarc_rua = Some(EmailAddress::parse("dmarc-reports@operator.example").unwrap());
    })
    .await;
    let zone_dns = app.dns_address.expect("mailroom's DNS server runs");
    dns.delegate(ZONE, zone_dns);

    // The tenant publishes exactly what the API advises.
    let domain = app.add_domain("customer.com").await;
    let mut txt: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in domain["records"].as_array().unwrap() {
        let (name, value) = (
            record["name"].as_str().unwrap(),
            record["value"].as_str().unwrap(),
        );
        match record["type"].as_str().unwrap() {
            "CNAME" => dns.cname(name, value),
            "TXT" => txt.entry(name.into()).or_default().push(value.into()),
            other => panic!("unexpected advice {other} {name} {value}"),
        }
    }
    for (name, values) in &txt {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        dns.txt(name, &values);
    }
    let spf = advised(&domain, "customer.com", "v=spf1").expect("SPF is advised");
    assert_eq!(spf["value"], "v=spf1 include:spf.dkim.mailroom.test ~all");

    // mailroom's own check of them agrees.
    let checked = app.verify_domain("customer.com").await;
    assert_eq!(checked["status"], "active", "{checked}");
    for record in checked["records"].as_array().unwrap() {
        assert_eq!(record["status"], "verified", "{record}");
    }

    // DMARC: an independent parser reads the policy and the configured report address.
    let dmarc = advised(&domain, "_dmarc.customer.com", "v=DMARC1").unwrap();
    let parsed = Dmarc::parse(dmarc["value"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(parsed.p, Policy::None);
    let rua: Vec<&str> = parsed.rua().iter().map(|uri| uri.uri()).collect();
    assert_eq!(rua, vec!["dmarc-reports@operator.example"]);

    // SPF: pyspf, as a receiver, through the tenant's include into mailroom's zone and on
    // into the upstream's record.
    if importable("spf, dns.resolver") {
        let results = spf_results(
            zone_dns,
            dns.address,
            "news@customer.com",
            &[
                "192.0.2.7",
                "2001:db8:5::1",
                "198.51.100.20",
                "203.0.113.9",
                "2001:db8:6::1",
                "2001:db8:111::9",
            ],
        );
        assert_eq!(results["192.0.2.7"], "pass");
        assert_eq!(results["2001:db8:5::1"], "pass");
        assert_eq!(results["198.51.100.20"], "pass", "the upstream's addresses");
        assert_eq!(results["203.0.113.9"], "softfail");
        assert_eq!(results["2001:db8:6::1"], "softfail");
        assert_eq!(
            results["2001:db8:111::9"], "pass",
            "a network in the record's second string"
        );
    }

    // The zone's name server has the addresses the operator gave, and SOA and NS name it.
    let zone = resolver(zone_dns);
    let ns = "ns.dkim.mailroom.test.";
    assert_eq!(
        ask(&zone, ns, RecordType::A).await,
        Ok(vec!["192.0.2.53".into()])
    );
    assert_eq!(
        ask(&zone, ns, RecordType::AAAA).await,
        Ok(vec!["2001:db8::53".into()])
    );
    assert_eq!(
        ask(&zone, "dkim.mailroom.test.", RecordType::NS).await,
        Ok(vec![ns.to_string()])
    );
    assert_eq!(
        ask(&zone, "dkim.mailroom.test.", RecordType::SOA).await,
        Ok(vec![ns.to_string()])
    );
    // Other types at existing names have no data; names below them do not exist.
    assert_eq!(ask(&zone, ns, RecordType::TXT).await, Err("nodata"));
    let include = "spf.dkim.mailroom.test.";
    assert_eq!(ask(&zone, include, RecordType::A).await, Err("nodata"));
    assert_eq!(
        ask(&zone, "dkim.mailroom.test.", RecordType::TXT).await,
        Err("nodata")
    );
    for name in [
        "x.ns.dkim.mailroom.test.",
        "x.spf.dkim.mailroom.test.",
        "spf2.dkim.mailroom.test.",
        "_spf.dkim.mailroom.test.",
    ] {
        assert_eq!(
            ask(&zone, name, RecordType::TXT).await,
            Err("nxdomain"),
            "{name}"
        );
    }

    // A tenant cannot take the zone's fixed names: a domain of that name is only a domain,
    // and the zone answers as before.
    for name in ["spf.dkim.mailroom.test", "ns.dkim.mailroom.test"] {
        let _ = app
            .api(reqwest::Method::POST, "/v2/domains")
            .json(&serde_json::json!({"domain": name}))
            .send()
            .await
            .unwrap();
    }
    let networks: String = (0..12)
        .map(|i| format!(" ip6:2001:db8:1{i:02}::/48"))
        .collect();
    let strings = zone
        .lookup(include, RecordType::TXT)
        .await
        .unwrap()
        .answers()
        .iter()
        .map(|record| match &record.data {
            RData::TXT(txt) => txt.txt_data.iter().map(|s| s.len()).collect::<Vec<_>>(),
            _ => vec![],
        })
        .collect::<Vec<_>>();
    assert_eq!(strings.len(), 1, "one record");
    assert!(strings[0].len() == 2 && strings[0][0] == 255, "{strings:?}");
    let published = ask(&zone, "SPF.dkim.MAILROOM.test.", RecordType::TXT).await;
    assert_eq!(
        published,
        Ok(vec![format!(
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:5::1{networks} include:_spf.relay.example -all"
        )])
    );
    assert_eq!(
        ask(&zone, ns, RecordType::A).await,
        Ok(vec!["192.0.2.53".into()])
    );
}

async fn with_nothing_configured_nothing_untrue_is_advised(engine: Engine) {
    let app = spawn_app_with(engine, |s| {
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
        s.dkim_zone = ZONE.into();
    })
    .await;
    let domain = app.add_domain("customer.com").await;
    assert!(
        advised(&domain, "customer.com", "v=spf1").is_none(),
        "an include that authorises nothing is not advised: {domain}"
    );
    let dmarc = advised(&domain, "_dmarc.customer.com", "v=DMARC1").unwrap();
    assert_eq!(dmarc["value"], "v=DMARC1; p=none");
    let parsed = Dmarc::parse(b"v=DMARC1; p=none").unwrap();
    assert!(parsed.rua().is_empty());

    let zone = resolver(app.dns_address.unwrap());
    let include = "spf.dkim.mailroom.test.";
    assert_eq!(ask(&zone, include, RecordType::TXT).await, Err("nxdomain"));
    // The name server the NS record names exists, without addresses to give.
    let ns = "ns.dkim.mailroom.test.";
    assert_eq!(ask(&zone, ns, RecordType::A).await, Err("nodata"));
}

/// Settings that would have mailroom advise a broken record stop the start, naming the
/// setting.
#[tokio::test]
async fn settings_that_would_break_advice_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let base = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        dkim_zone: ZONE.into(),
        ..Settings::default()
    };
    let cases: Vec<(Settings, &str)> = vec![
        (
            Settings {
                spf_ips: vec!["192.0.2.1/24".into()],
                ..base.clone()
            },
            "MAILROOM_SPF_IPS",
        ),
        (
            Settings {
                spf_upstream: (0..4).map(|i| format!("r{i}.relay.example")).collect(),
                ..base.clone()
            },
            "more than 3",
        ),
        (
            Settings {
                spf_include: Some("_spf.dkim.mailroom.test".into()),
                ..base.clone()
            },
            "MAILROOM_SPF_INCLUDE",
        ),
        (
            Settings {
                spf_include: Some("_spf.operator.example".into()),
                spf_ips: vec!["192.0.2.1".into()],
                ..base.clone()
            },
            "outside",
        ),
        (
            Settings {
                dmarc_rua: Some(EmailAddress::parse("reports@dkim.mailroom.test").unwrap()),
                ..base.clone()
            },
            "MAILROOM_DMARC_RUA",
        ),
    ];
    for (settings, expected) in cases {
        let error = match mailroom::Application::build(&settings).await {
            Ok(_) => panic!("started with {settings:?}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(expected), "{error}");
    }
}
