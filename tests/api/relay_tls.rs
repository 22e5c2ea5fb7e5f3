//! What a relay's certificate may be: `tls.rejectUnauthorized` as nodemailer means it for
//! tenants' relays, `verify=false` and `MAILROOM_SMTP_CA_FILE` for the system relay, with
//! the reason a certificate is refused in words; and the name mailroom gives in EHLO.
//! Real SMTP servers on loopback present certificates made here; the engine plays no part.

use std::time::Duration;

use mailroom::app::Application;
use mailroom::config::{Secret, Settings};
use mailroom::types::HelloName;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::helpers::smtp::{Encryption, TestSmtp};
use crate::helpers::{Engine, TestApp, spawn_app_with};

/// A certificate authority of the test's own, which no system trusts.
struct Authority {
    certificate: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Authority {
            certificate,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, valid now or expired long ago.
    fn issue(&self, names: &[&str], expired: bool) -> Served {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        Served::new(certificate.der().clone(), &key)
    }

    /// A file holding the authority's certificate, as an operator writes one.
    fn pem_file(&self, dir: &tempfile::TempDir) -> std::path::PathBuf {
        let path = dir.path().join("relay-ca.pem");
        std::fs::write(&path, self.certificate.pem()).unwrap();
        path
    }
}

/// What a test server presents: its certificate and the key that proves it.
struct Served {
    certificate: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Served {
    fn new(certificate: CertificateDer<'static>, key: &rcgen::KeyPair) -> Served {
        Served {
            certificate,
            key: key.serialize_der(),
        }
    }

    fn self_signed(names: &[&str]) -> Served {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names).unwrap();
        Served::new(made.cert.der().clone(), &made.signing_key)
    }

    async fn serve(&self, tls: Encryption) -> TestSmtp {
        let key = PrivateKeyDer::Pkcs8(self.key.clone().into());
        TestSmtp::start_with_certificate(tls, vec![self.certificate.clone()], key).await
    }
}

fn relay_body(port: u16, secure: bool, reject_unauthorized: bool) -> Value {
    json!({
        "provider": "smtp", "description": "relay", "from": "",
        "options": {"host": "127.0.0.1", "port": port, "secure": secure, "debug": false,
                    "tls": {"rejectUnauthorized": reject_unauthorized},
                    "auth": {"user": "", "pass": ""}}
    })
}

impl TestApp {
    async fn put_relay(&self, domain: &str, body: &Value) {
        let path = format!("/api/v2/email/settings?domain={domain}");
        let response = self
            .api(Method::PUT, &path)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    async fn relay_test(&self, domain: &str) -> Value {
        let path = format!("/api/v2/email/settings/test?domain={domain}");
        let response = self.api(Method::POST, &path).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// The first error recorded for message `id`, once there is one.
    async fn first_error(&self, id: &str) -> String {
        let failed = self
            .wait_for_message(id, Duration::from_secs(20), |m| m["last_error"].is_string())
            .await;
        assert_ne!(failed["status"], "sent", "{failed}");
        failed["last_error"].as_str().unwrap().to_string()
    }
}

/// The `tls` step of a settings test's report.
fn tls_step(report: &Value) -> Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|step| step["step"] == "tls")
        .unwrap_or_else(|| panic!("no tls step: {report}"))
        .clone()
}

async fn tenant_app() -> TestApp {
    spawn_app_with(Engine::Sqlite, |s| {
        s.mail_retry_seconds = 1;
        s.smtp_timeout = 5;
        s.public_url = Some("https://app.mailroom.example".to_string());
        s.ehlo_name = Some(HelloName::parse("mx.mailroom.example").unwrap());
    })
    .await
}

/// Every certificate a relay could wrongly present: `rejectUnauthorized: false` takes each
/// (the settings test passes, mail is delivered); `true` refuses each, and the settings
/// test and the message's error say why, in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_relay_certificate_is_taken_or_refused_with_the_reason() {
    let app = tenant_app().await;
    let authority = Authority::new("Tenant Test CA");
    let cases = [
        (
            "a certificate from an authority nobody trusts",
            authority.issue(&["127.0.0.1"], false),
            Encryption::StartTls,
            "signed by an authority that is not trusted",
        ),
        (
            "a certificate for another name",
            authority.issue(&["localhost", "relay.example"], false),
            Encryption::Implicit,
            "issued for localhost, relay.example, not for 127.0.0.1",
        ),
        (
            "an expired certificate",
            authority.issue(&["127.0.0.1"], true),
            Encryption::StartTls,
            "expired on 2021-01-01",
        ),
        (
            "a self-signed certificate",
            Served::self_signed(&["127.0.0.1"]),
            Encryption::Implicit,
            "self-signed",
        ),
    ];
    for (number, (case, served, encryption, reason)) in cases.into_iter().enumerate() {
        let relay = served.serve(encryption).await;
        let implicit = encryption == Encryption::Implicit;
        // A domain each: the refused mail, retried, stays with its own relay.
        let domain = format!("case{number}.example.com");
        let from = format!("a@{domain}");
        app.active_domain(&domain).await;
        app.set_relay(&domain, relay_body(relay.port, implicit, false))
            .await;

        let report = app.relay_test(&domain).await;
        assert_eq!(report["ok"], true, "{case}, not rejected: {report}");
        let sent = app.queue(&from, "b@example.org").await;
        app.wait_for_status(&sent, "sent", Duration::from_secs(20))
            .await;
        assert!(relay.received().iter().all(|r| r.tls), "{case}");

        app.put_relay(&domain, &relay_body(relay.port, implicit, true))
            .await;
        let report = app.relay_test(&domain).await;
        assert_eq!(report["ok"], false, "{case}, rejected: {report}");
        let step = tls_step(&report);
        assert_eq!(step["ok"], false, "{case}: {report}");
        let detail = step["detail"].as_str().unwrap();
        assert!(
            detail.contains("certificate is not trusted") && detail.contains(reason),
            "{case}: {detail}"
        );
        let refused = app.queue(&from, "b@example.org").await;
        let error = app.first_error(&refused).await;
        assert!(error.contains(reason), "{case}: {error}");
        assert_eq!(relay.received().len(), 1, "{case}: mail went to it anyway");
        // Every conversation, the settings test's as the deliveries', gave the name set.
        let hellos = relay.hellos();
        assert!(
            !hellos.is_empty() && hellos.iter().all(|h| h == "mx.mailroom.example"),
            "{case}: {hellos:?}"
        );
    }
}

/// The operator's private authority is for the system relay only: a tenant's relay with a
/// certificate it signed is refused as any unknown authority's. And a relay presenting a
/// certificate with a great many names cannot fill the report with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_authority_is_not_the_tenants() {
    let dir = crate::helpers::test_dir();
    let operator = Authority::new("Operator CA");
    let ca_file = operator.pem_file(&dir);
    let app = spawn_app_with(Engine::Sqlite, |s| {
        s.smtp_ca_file = Some(ca_file);
        s.smtp_url = Some(Secret::new("smtp://127.0.0.1:9?tls=none"));
    })
    .await;
    app.active_domain("customer.com").await;
    let relay = operator
        .issue(&["127.0.0.1"], false)
        .serve(Encryption::StartTls)
        .await;
    app.set_relay("customer.com", relay_body(relay.port, false, true))
        .await;
    let report = app.relay_test("customer.com").await;
    let detail = tls_step(&report)["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("signed by an authority that is not trusted"),
        "{detail}"
    );

    let names: Vec<String> = (0..200)
        .map(|i| format!("{}{i}.relay.example", "n".repeat(50)))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let crowded = operator
        .issue(&names, false)
        .serve(Encryption::StartTls)
        .await;
    app.put_relay("customer.com", &relay_body(crowded.port, false, true))
        .await;
    let report = app.relay_test("customer.com").await;
    let detail = tls_step(&report)["detail"].as_str().unwrap().to_string();
    assert!(detail.contains(", 195 more, not for 127.0.0.1"), "{detail}");
    assert!(detail.len() < 600, "{} characters: {detail}", detail.len());
}

async fn system_app(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with(Engine::Sqlite, |s| {
        s.mail_retry_seconds = 1;
        s.smtp_timeout = 5;
        configure(s);
    })
    .await
}

/// Mail of the operator's (of no account's relay) goes through the system relay.
async fn send_through_system(app: &TestApp) -> String {
    app.queue("noreply@mailroom.test", "someone@example.org")
        .await
}

/// `?verify=false` takes a self-signed certificate; and with no EHLO name set, mailroom
/// gives its public URL's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_relay_may_accept_any_certificate() {
    let relay = Served::self_signed(&["localhost"])
        .serve(Encryption::StartTls)
        .await;
    let app = system_app(|s| {
        s.public_url = Some("https://Mail.Example.NET:8443/base/".to_string());
        s.smtp_url = Some(Secret::new(format!(
            "smtp://127.0.0.1:{}?verify=false",
            relay.port
        )));
    })
    .await;
    let sent = send_through_system(&app).await;
    app.wait_for_status(&sent, "sent", Duration::from_secs(20))
        .await;
    assert!(relay.received()[0].tls);
    assert_eq!(relay.hellos()[0], "mail.example.net");

    // Implicit TLS alike.
    let implicit = Served::self_signed(&["localhost"])
        .serve(Encryption::Implicit)
        .await;
    let app = system_app(|s| {
        s.smtp_url = Some(Secret::new(format!(
            "smtps://127.0.0.1:{}?verify=false",
            implicit.port
        )));
    })
    .await;
    let sent = send_through_system(&app).await;
    app.wait_for_status(&sent, "sent", Duration::from_secs(20))
        .await;
    assert!(implicit.received()[0].tls);
}

/// A private authority in `MAILROOM_SMTP_CA_FILE` makes its certificates trusted, by name;
/// without it the same relay is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_relay_trusts_a_private_authority_from_a_file() {
    let dir = crate::helpers::test_dir();
    let authority = Authority::new("Private CA");
    let ca_file = authority.pem_file(&dir);
    let relay = authority
        .issue(&["127.0.0.1"], false)
        .serve(Encryption::StartTls)
        .await;
    let url = format!("smtp://127.0.0.1:{}", relay.port);

    let trusting = system_app(|s| {
        s.smtp_url = Some(Secret::new(url.clone()));
        s.smtp_ca_file = Some(ca_file.clone());
        s.ehlo_name = Some(HelloName::parse("[192.0.2.25]").unwrap());
    })
    .await;
    let sent = send_through_system(&trusting).await;
    trusting
        .wait_for_status(&sent, "sent", Duration::from_secs(20))
        .await;
    assert_eq!(relay.hellos(), vec!["[192.0.2.25]", "[192.0.2.25]"]);

    let unaware = system_app(|s| s.smtp_url = Some(Secret::new(url.clone()))).await;
    let refused = send_through_system(&unaware).await;
    let error = unaware.first_error(&refused).await;
    assert!(
        error.contains(
            "certificate is not trusted: it is signed by an authority that is not trusted"
        ),
        "{error}"
    );

    // Trusted by its authority, but issued for another name: that alone is the reason.
    let misnamed = authority
        .issue(&["relay.internal.example"], false)
        .serve(Encryption::Implicit)
        .await;
    let app = system_app(|s| {
        s.smtp_url = Some(Secret::new(format!("smtps://127.0.0.1:{}", misnamed.port)));
        s.smtp_ca_file = Some(ca_file.clone());
    })
    .await;
    let refused = send_through_system(&app).await;
    let error = app.first_error(&refused).await;
    assert!(
        error.ends_with(
            "the certificate is not trusted: it is issued for relay.internal.example, not for 127.0.0.1"
        ),
        "{error}"
    );
    assert_eq!(relay.received().len(), 1);
    assert!(misnamed.received().is_empty());

    // The relay's own self-signed certificate in the file, marked as an authority as
    // `openssl req -x509` makes it: trusted as it is.
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let own = params.self_signed(&key).unwrap();
    let own_file = dir.path().join("relay-own.pem");
    std::fs::write(&own_file, own.pem()).unwrap();
    let pinned = Served::new(own.der().clone(), &key)
        .serve(Encryption::StartTls)
        .await;
    let app = system_app(|s| {
        s.smtp_url = Some(Secret::new(format!("smtp://127.0.0.1:{}", pinned.port)));
        s.smtp_ca_file = Some(own_file);
    })
    .await;
    let sent = send_through_system(&app).await;
    app.wait_for_status(&sent, "sent", Duration::from_secs(20))
        .await;
    assert!(pinned.received()[0].tls);
}

/// A mistake in the system relay's TLS settings or in the EHLO name stops the start with
/// a message naming it, and never shows the relay's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_ehlo_mistakes_stop_the_start() {
    let dir = crate::helpers::test_dir();
    let not_pem = dir.path().join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let password = "s3cret-relay-pass";
    crate::helpers::record_secret(password);
    let with_url = |url: &str, ca_file: Option<std::path::PathBuf>| Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        smtp_url: Some(Secret::new(url)),
        smtp_ca_file: ca_file,
        ..Settings::default()
    };
    let cases = [
        (
            with_url(
                &format!("smtp://u:{password}@relay.example?verify=no"),
                None,
            ),
            "verify must be true or false",
        ),
        (
            with_url(
                &format!("smtp://u:{password}@relay.example?verfy=false"),
                None,
            ),
            "unknown option `verfy`",
        ),
        (
            with_url("smtp://relay.example", Some(dir.path().join("missing.pem"))),
            "MAILROOM_SMTP_CA_FILE",
        ),
        (
            with_url("smtp://relay.example", Some(not_pem.clone())),
            "holds no PEM certificate",
        ),
    ];
    for (settings, expected) in cases {
        let error = match Application::build(&settings).await {
            Ok(_) => panic!("started despite {expected}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains(password), "{error}");
    }

    for bad in [
        "localhost",
        "mx example.com",
        "[not-an-address]",
        "mx.example.com\r\nRSET",
    ] {
        let loaded = Settings::load(None, [("MAILROOM_EHLO_NAME".to_string(), bad.to_string())]);
        let error = format!("{:#}", loaded.unwrap_err());
        assert!(error.contains("ehlo_name"), "{bad:?}: {error}");
    }
}
