//! A whole mail host from deploy/ as shipped — Debian's Postfix (chrooted as Debian runs
//! it) and Dovecot, reading mailroom's database — driven end to end: what the API does is
//! what mail clients and other mail servers see.

mod clients;
mod host;
mod units;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mailroom::config::Secret;
use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::types::DomainName;
use reqwest::Method;
use serde_json::{Value, json};

use crate::both_engines;
use crate::helpers::dns::TestDns;
use crate::helpers::judges::{dkim_verifies, importable};
use crate::helpers::smtp::{Encryption, TestSmtp};
use crate::helpers::{Engine, TestApp, record_secret, spawn_app_with};
use clients::{Imap, Smtp, message};
use host::{Logs, MailHost, make_traversable, source, vmail_root};

both_engines!(the_mail_host_from_deploy_serves_what_the_api_says);

/// Whether `program` is installed; without it the test is skipped, unless
/// `MAILROOM_TEST_REQUIRE_EXTERNAL=1` makes that a failure.
fn installed(program: &str) -> bool {
    let found = [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/lib/dovecot",
        "/usr/lib/postfix/sbin",
    ]
    .iter()
    .any(|dir| Path::new(dir).join(program).exists());
    if !found {
        assert!(
            std::env::var("MAILROOM_TEST_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "MAILROOM_TEST_REQUIRE_EXTERNAL=1 but {program} is not installed"
        );
        eprintln!("skipped: {program} is not installed");
    }
    found
}

/// A mailbox the test made: its id, address and password.
struct Mailbox {
    id: i64,
    address: String,
    password: String,
}

async fn create_mailbox(app: &TestApp, local_part: &str, user_id: &str) -> Mailbox {
    let created = app
        .create_mailbox(
            json!({"domain": "customer.com", "local_part": local_part, "user_id": user_id}),
        )
        .await;
    let password = created["password"].as_str().unwrap().to_string();
    record_secret(&password);
    Mailbox {
        id: created["account"]["id"].as_i64().unwrap(),
        address: created["account"]["address"].as_str().unwrap().to_string(),
        password,
    }
}

async fn update_mailbox(app: &TestApp, mailbox: &Mailbox, body: Value) {
    let response = app
        .api(Method::PUT, &format!("/v2/email-accounts/{}", mailbox.id))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

impl MailHost {
    async fn login(&self, user: &str, password: &str) -> Option<Imap> {
        Imap::login(self.imap_port, user, password, &self.logs).await
    }

    async fn inbox(&self, mailbox: &Mailbox) -> Vec<String> {
        let mut imap = self
            .login(&mailbox.address, &mailbox.password)
            .await
            .unwrap_or_else(|| panic!("{} cannot log in{}", mailbox.address, self.logs));
        imap.inbox().await
    }

    /// Waits until `mailbox` holds a message containing `needle`; answers it.
    async fn wait_for_mail(&self, mailbox: &Mailbox, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(found) = self
                .inbox(mailbox)
                .await
                .into_iter()
                .find(|m| m.contains(needle))
            {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no mail with {needle:?} for {}{}",
                mailbox.address,
                self.logs
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn inbound(&self) -> Smtp {
        Smtp::connect(self.smtp_port, &self.logs).await
    }

    /// A submission session, after STARTTLS.
    async fn submission(&self) -> Smtp {
        Smtp::connect(self.submission_port, &self.logs)
            .await
            .starttls(&self.certificate)
            .await
    }
}

fn maildirs(vmail: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(vmail.join("customer.com"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn messages_in(maildir: &Path) -> usize {
    ["new", "cur"]
        .iter()
        .map(|sub| {
            std::fs::read_dir(maildir.join("Maildir").join(sub))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

async fn the_mail_host_from_deploy_serves_what_the_api_says(engine: Engine) {
    if !["dovecot", "postfix", "lmtp", "quota-status"]
        .iter()
        .all(|p| installed(p))
        || !importable("dkim")
        || !importable("dns.message")
    {
        return;
    }
    // 1. A domain proven through DNS; two mailboxes through the API. mailroom's own mail
    // (sender verification) goes to a relay of the test's until the domain has its own.
    let dns = TestDns::start().await;
    let system_relay = TestSmtp::start(Encryption::Plain, None).await;
    let dir = crate::helpers::test_dir();
    make_traversable(dir.path());
    // Delivered mail carries invitation links by design: it stays out of the artifacts
    // that are scanned for secrets, unlike the mail servers' logs.
    let mail_store = tempfile::tempdir().unwrap();
    make_traversable(mail_store.path());
    let vmail = vmail_root(mail_store.path());
    let vmail_setting = vmail.display().to_string();
    let app = spawn_app_with(engine, |s| {
        s.dns_nameservers = vec![dns.address];
        s.dns_listen = Some("127.0.0.1:0".parse().unwrap());
        s.smtp_url = Some(Secret::new(format!(
            "smtp://127.0.0.1:{}?tls=none",
            system_relay.port
        )));
        s.mail_from = "noreply@mailroom.example".into();
        s.vmail_root = vmail_setting;
        s.vmail_uid = host::VMAIL_ID.into();
        s.vmail_gid = host::VMAIL_ID.into();
    })
    .await;
    // What `mailroom serve` does at start with MAILROOM_DATABASE_GROUP. deploy/ makes the
    // group mailroom-db; Postfix's own group stands in for it here.
    mailroom::store::share_with_group(
        &app.settings.database_url(),
        "postfix",
        &app.settings.data_dir,
    )
    .unwrap();
    let domain = app.add_domain("customer.com").await;
    dns.publish(&domain);
    assert_eq!(app.verify_domain("customer.com").await["status"], "active");
    let alice = create_mailbox(&app, "alice", "u-alice").await;
    let mut bob = create_mailbox(&app, "bob", "u-bob").await;

    let source = source(&app, engine).await;
    let host = MailHost::start(dir.path(), &source, "postfix");
    let logs: &Logs = &host.logs;

    // 2. Inbound on "25": mail for a mailbox lands in its Maildir and reads back over IMAP.
    let mut inbound = host.inbound().await;
    inbound
        .send(
            "friend@example.org",
            &alice.address,
            &message("friend@example.org", &alice.address, "inbound one", 0),
        )
        .await;
    let received = host.wait_for_mail(&alice, "Subject: inbound one").await;
    assert!(received.contains("Hello from friend@example.org."));
    let alice_dir = vmail.join("customer.com").join(
        maildirs(&vmail)
            .into_iter()
            .find(|d| d.starts_with("alice"))
            .unwrap(),
    );
    assert_eq!(messages_in(&alice_dir), 1, "{}", alice_dir.display());
    assert!(
        host.login("Alice@Customer.com", &alice.password)
            .await
            .is_some(),
        "addresses are case-insensitive"
    );
    assert!(
        host.login(&alice.address, "not-the-password")
            .await
            .is_none()
    );
    // Unknown recipients are refused at RCPT; other domains are not relayed, loopback
    // included.
    let unknown = inbound
        .envelope("friend@example.org", "nobody@customer.com", 100)
        .await;
    assert_eq!(unknown.0, 550, "{unknown:?}");
    inbound.command("RSET").await;
    let relay = inbound
        .envelope("friend@example.org", "someone@example.net", 100)
        .await;
    assert!(
        relay.0 >= 500 && relay.1.contains("Relay access denied"),
        "{relay:?}"
    );
    inbound.command("RSET").await;
    // The inbound port offers no login at all.
    let auth = inbound.auth(&bob.address, &bob.password).await;
    assert!(auth.0 >= 500, "{auth:?}");
    drop(inbound);

    // A disabled mailbox can no longer log in nor receive; enabled, it can again.
    update_mailbox(&app, &bob, json!({"status": "disabled"})).await;
    assert!(host.login(&bob.address, &bob.password).await.is_none());
    let mut inbound = host.inbound().await;
    let to_disabled = inbound
        .envelope("friend@example.org", &bob.address, 100)
        .await;
    assert_eq!(to_disabled.0, 550, "{to_disabled:?}");
    drop(inbound);
    let mut submission = host.submission().await;
    let auth = submission.auth(&bob.address, &bob.password).await;
    assert_eq!(auth.0, 535, "a disabled mailbox cannot send: {auth:?}");
    drop(submission);
    update_mailbox(&app, &bob, json!({"status": "active"})).await;
    assert!(host.login(&bob.address, &bob.password).await.is_some());

    // A new password replaces the old one at once.
    let reset: Value = app
        .api(
            Method::POST,
            &format!("/v2/email-accounts/{}/password/reset", bob.id),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_password = std::mem::replace(
        &mut bob.password,
        reset["password"].as_str().unwrap().to_string(),
    );
    record_secret(&bob.password);
    assert!(host.login(&bob.address, &old_password).await.is_none());
    assert!(host.login(&bob.address, &bob.password).await.is_some());

    // A domain a tenant added but has not proven (anyone's, perhaps) takes no mail here;
    // a suspended domain's mailboxes neither receive nor log in.
    app.add_domain("victim.example").await;
    let mut inbound = host.inbound().await;
    let unproven = inbound
        .envelope("friend@example.org", "ceo@victim.example", 100)
        .await;
    assert!(unproven.0 >= 500, "{unproven:?}");
    inbound.command("RSET").await;
    let customer = DomainName::parse("customer.com").unwrap();
    set_status_by_operator(
        &app.db,
        &app.settings,
        &customer,
        None,
        DomainStatus::Suspended,
    )
    .await
    .unwrap();
    let suspended = inbound
        .envelope("friend@example.org", &alice.address, 100)
        .await;
    assert!(suspended.0 >= 500, "{suspended:?}");
    inbound.command("RSET").await;
    assert!(host.login(&alice.address, &alice.password).await.is_none());
    set_status_by_operator(
        &app.db,
        &app.settings,
        &customer,
        None,
        DomainStatus::Active,
    )
    .await
    .unwrap();
    assert!(host.login(&alice.address, &alice.password).await.is_some());
    drop(inbound);

    // 3. Submission on "587": TLS first, then a login, then only one's own address.
    let mut plain = Smtp::connect(host.submission_port, logs).await;
    let ehlo = plain.ehlo().await;
    assert!(
        !ehlo.1.contains("AUTH"),
        "no AUTH offered before TLS: {ehlo:?}"
    );
    let early = plain.auth(&bob.address, &bob.password).await;
    assert!(early.0 >= 500, "AUTH before STARTTLS: {early:?}");
    let early = plain.envelope(&bob.address, &alice.address, 100).await;
    assert_eq!(early.0, 530, "mail before STARTTLS: {early:?}");
    drop(plain);

    let mut anonymous = host.submission().await;
    let refused = anonymous
        .envelope("someone@example.org", "someone@example.net", 100)
        .await;
    assert!(refused.0 >= 500, "unauthenticated relay: {refused:?}");
    drop(anonymous);

    let mut submission = host.submission().await;
    let authenticated = submission.auth(&bob.address, &bob.password).await;
    assert_eq!(authenticated.0, 235, "{authenticated:?}{logs}");
    let as_alice = submission
        .envelope(&alice.address, "someone@example.net", 100)
        .await;
    assert_eq!(as_alice.0, 553, "sending as another mailbox: {as_alice:?}");
    submission.command("RSET").await;
    let as_stranger = submission
        .envelope("ceo@example.com", "someone@example.net", 100)
        .await;
    assert_eq!(
        as_stranger.0, 553,
        "sending as an address bob does not own: {as_stranger:?}"
    );
    submission.command("RSET").await;
    let outside = submission
        .envelope(&bob.address, "someone@example.net", 100)
        .await;
    assert_eq!(outside.0, 250, "bob may send anywhere: {outside:?}");
    submission.command("RSET").await;
    submission
        .send(
            &bob.address,
            &alice.address,
            &message(&bob.address, &alice.address, "submitted", 0),
        )
        .await;
    drop(submission);
    host.wait_for_mail(&alice, "Subject: submitted").await;

    // 4. mailroom's own mail from a verified sender that is a mailbox leaves through this
    // Postfix as the domain's relay, and its DKIM signature verifies through the CNAME
    // and mailroom's DNS server.
    app.add_sender("/v1/email-address", &bob.address).await;
    let (_, code) = system_relay
        .verification_link_and_code(&bob.address, 1)
        .await;
    let verified = app
        .api(Method::POST, "/v1/email-address/verify")
        .json(&json!({"code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), 200, "{}", verified.text().await.unwrap());
    app.set_relay(
        "customer.com",
        json!({
            "provider": "smtp", "description": "Our Postfix", "from": "",
            "options": {
                "host": "127.0.0.1", "port": host.submission_port, "secure": false,
                "debug": false, "tls": {"rejectUnauthorized": false},
                "auth": {"user": bob.address, "pass": bob.password}
            }
        }),
    )
    .await;
    app.invite(&alice.address, "viewer").await;
    let invitation = host.wait_for_mail(&alice, "/invitations/accept").await;
    let header = |name: &str| {
        invitation
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(header("from").contains(&bob.address), "{invitation}");
    assert!(
        header("dkim-signature").contains("d=customer.com"),
        "{invitation}"
    );
    let postfix_log = logs.postfix();
    assert!(
        postfix_log.contains(&format!("sasl_username={}", bob.address)),
        "mailroom logged in as bob{logs}"
    );
    assert!(
        dkim_verifies(invitation.as_bytes(), dns.address, &app),
        "{invitation}"
    );
    let tampered = invitation.replacen("/invitations/accept", "/invitations/decline", 1);
    assert!(
        !dkim_verifies(tampered.as_bytes(), dns.address, &app),
        "the judge judges"
    );

    // 5. A mailbox deleted and created again at the same address starts empty; the
    // purge on the mail host then removes the old Maildir.
    let old_dirs = maildirs(&vmail);
    let deleted = app
        .api(Method::POST, "/v2/email-accounts/delete")
        .json(&json!({"id": alice.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert!(host.login(&alice.address, &alice.password).await.is_none());
    let alice = create_mailbox(&app, "alice", "u-someone-else").await;
    assert_eq!(
        host.inbox(&alice).await,
        Vec::<String>::new(),
        "no old mail"
    );
    let new_dirs = maildirs(&vmail);
    assert_eq!(new_dirs.len(), old_dirs.len() + 1, "{new_dirs:?}");
    let purge = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["admin", "purge-maildirs", "--min-age-hours", "0"])
        .env("MAILROOM_DATABASE_URL", app.settings.database_url())
        .env("MAILROOM_DATA_DIR", app.dir.path())
        .output()
        .unwrap();
    assert!(
        purge.status.success(),
        "{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    let after_purge = maildirs(&vmail);
    assert_eq!(after_purge.len(), old_dirs.len(), "{after_purge:?}");
    assert!(!alice_dir.exists(), "the old Maildir is gone");
    assert!(
        new_dirs
            .iter()
            .all(|d| after_purge.contains(d) || old_dirs.contains(d)),
        "only the deleted mailbox's Maildir went: {after_purge:?}"
    );
    assert_eq!(host.inbox(&alice).await.len(), 0);
    assert!(host.inbox(&bob).await.is_empty());

    // 6. Quota: over quota_mb, mail is refused at RCPT (552, Dovecot's quota-status);
    // raising or removing the quota lifts it.
    let mut inbound = host.inbound().await;
    for n in 0..2 {
        let big = message(
            "friend@example.org",
            &alice.address,
            &format!("big {n}"),
            6_000,
        );
        inbound
            .send("friend@example.org", &alice.address, &big)
            .await;
    }
    host.wait_for_mail(&alice, "Subject: big 1").await;
    let refused = |reply: &clients::Reply| reply.0 == 552 && reply.1.contains("5.2.2");
    for (quota, accepted) in [
        (json!(1), false),
        (json!(5), true),
        (json!(1), false),
        (Value::Null, true),
    ] {
        update_mailbox(&app, &alice, json!({"quota_mb": quota})).await;
        let reply = inbound
            .envelope("friend@example.org", &alice.address, 1000)
            .await;
        assert_eq!(!refused(&reply), accepted, "quota {quota}: {reply:?}{logs}");
        if !accepted {
            assert_eq!(reply.0, 552, "{reply:?}");
        }
        inbound.command("RSET").await;
    }
    inbound
        .send(
            "friend@example.org",
            &alice.address,
            &message("friend@example.org", &alice.address, "after the quota", 0),
        )
        .await;
    host.wait_for_mail(&alice, "Subject: after the quota").await;
}
