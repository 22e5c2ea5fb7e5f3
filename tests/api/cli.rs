//! The binary as a user runs it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::both_engines;
use crate::helpers::{
    Engine, ServerProcess, error_code, fresh_database_url, key_in, spawn_app, spawn_app_with,
};

both_engines!(
    the_first_start_prints_a_working_key_once,
    create_account_prints_json_beside_a_running_server,
    sigterm_finishes_requests_in_flight_and_exits_zero,
    the_operator_activates_and_suspends_domains,
    send_test_email_reports_what_the_relay_said,
    create_api_key_lets_a_locked_out_account_back_in,
    an_address_made_again_starts_empty_and_the_old_maildir_is_purged,
);

async fn the_first_start_prints_a_working_key_once(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(engine, &dir).await;
    let mut first = ServerProcess::serve(&dir, &database);
    let printed = first.stdout();
    let key = key_in(&printed).unwrap_or_else(|| panic!("no key printed:\n{printed}"));
    assert!(printed.contains(&format!(
        "curl -H 'Authorization: Bearer {key}' {}",
        first.address
    )));

    let entities = reqwest::Client::new()
        .get(format!("{}/entities", first.address))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(entities.status(), 200);
    first.terminate();
    assert!(first.wait_for_exit(Duration::from_secs(10)).success());

    let second = ServerProcess::serve(&dir, &database);
    assert_eq!(
        key_in(&second.stdout()),
        None,
        "a later start never prints a key"
    );
    let still = reqwest::Client::new()
        .get(format!("{}/entities", second.address))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);
}

async fn create_account_prints_json_beside_a_running_server(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(engine, &dir).await;
    let server = ServerProcess::serve(&dir, &database);

    let output = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["admin", "create-account", "--name", "Globex", "--json"])
        .current_dir(dir.path())
        .env("MAILROOM_DATABASE_URL", &database)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with(r#"{"account_id": "acc_"#), "{last}");
    let created: serde_json::Value = serde_json::from_str(last).unwrap();
    let mut fields: Vec<&String> = created.as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, vec!["account_id", "api_key", "entity_id"]);
    let (entity, key) = (
        last.find("\"entity_id\"").unwrap(),
        last.find("\"api_key\"").unwrap(),
    );
    assert!(entity < key, "fields in the documented order: {last}");
    assert!(created["account_id"].as_str().unwrap().starts_with("acc_"));
    assert!(created["entity_id"].as_str().unwrap().starts_with("ent_"));

    let entities: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/entities", server.address))
        .header("x-api-key", created["api_key"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entities["data"][0]["id"], created["entity_id"]);
    assert_eq!(entities["data"][0]["name"], "Globex");

    let refused = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["admin", "create-account", "--name", " ", "--json"])
        .current_dir(dir.path())
        .env("MAILROOM_DATABASE_URL", &database)
        .output()
        .unwrap();
    assert!(!refused.status.success());
}

async fn sigterm_finishes_requests_in_flight_and_exits_zero(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(engine, &dir).await;
    let mut server = ServerProcess::serve(&dir, &database);
    let key = key_in(&server.stdout()).unwrap();
    let host = server.address.trim_start_matches("http://").to_string();

    // A request whose body is still on its way when the signal comes.
    let body = br#"{"name": "Created during shutdown"}"#;
    let mut stream = TcpStream::connect(&host).unwrap();
    write!(
        stream,
        "POST /entities HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(200));

    server.terminate();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect(&host).is_err(),
        "no new connections after SIGTERM"
    );

    stream.write_all(&body[10..]).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("Created during shutdown"));
    assert!(server.wait_for_exit(Duration::from_secs(10)).success());
}

async fn the_operator_activates_and_suspends_domains(engine: Engine) {
    let app = spawn_app(engine).await;
    app.add_domain("internal.example").await;
    let admin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .arg("admin")
            .args(args)
            .current_dir(app.dir.path())
            .env("MAILROOM_DATABASE_URL", app.settings.database_url())
            .output()
            .unwrap()
    };
    let status = || async {
        let got: serde_json::Value = app
            .api(reqwest::Method::GET, "/v2/domains/internal.example")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        got["domain"]["status"].as_str().unwrap().to_string()
    };

    let activated = admin(&["activate-domain", "Internal.Example"]);
    assert!(
        activated.status.success(),
        "{}",
        String::from_utf8_lossy(&activated.stderr)
    );
    assert_eq!(status().await, "active");
    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM domain_events ORDER BY at")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(reasons.last().unwrap(), "activated by the operator");

    let suspended = admin(&["suspend-domain", "internal.example"]);
    assert!(suspended.status.success());
    assert_eq!(status().await, "suspended");
    let verify = app
        .api(reqwest::Method::POST, "/v2/domains/internal.example/verify")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(verify, 409).await["code"], "domain_suspended");

    let unknown = admin(&["activate-domain", "nobody.example"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no account has added"));
}

async fn send_test_email_reports_what_the_relay_said(engine: Engine) {
    use crate::helpers::smtp::{Encryption, TestSmtp};
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(engine, &dir).await;
    let relay = TestSmtp::start(Encryption::Plain, None).await;
    let send = |to: &str| {
        Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .args(["send-test-email", "--to", to])
            .current_dir(dir.path())
            .env("MAILROOM_DATABASE_URL", &database)
            .env(
                "MAILROOM_SMTP_URL",
                format!("smtp://127.0.0.1:{}?tls=none", relay.port),
            )
            .env("MAILROOM_MAIL_FROM", "ops@mailroom.example")
            .output()
            .unwrap()
    };
    let sent = send("someone@example.org");
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        String::from_utf8_lossy(&sent.stdout).contains("250"),
        "the relay's reply is shown"
    );
    let received = relay.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].from, "ops@mailroom.example");
    assert_eq!(received[0].to, vec!["someone@example.org"]);

    relay.reply_next("550 5.1.1 no such user");
    let refused = send("nobody@example.org");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no such user"));
    let invalid = send("not-an-address");
    assert!(!invalid.status.success());
}

async fn create_api_key_lets_a_locked_out_account_back_in(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(engine, &dir).await;
    let server = ServerProcess::serve(&dir, &database);
    let key = key_in(&server.stdout()).unwrap();
    let client = reqwest::Client::new();
    let get = |path: &str, key: &str| {
        client
            .get(format!("{}{path}", server.address))
            .bearer_auth(key)
            .send()
    };
    let entities: serde_json::Value = get("/entities", &key).await.unwrap().json().await.unwrap();
    let account = entities["data"][0]["account_id"]
        .as_str()
        .unwrap()
        .to_string();
    let keys: serde_json::Value = get("/api-keys", &key).await.unwrap().json().await.unwrap();
    let deleted = client
        .delete(format!(
            "{}/api-keys/{}",
            server.address,
            keys["data"][0]["id"].as_str().unwrap()
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    error_code(get("/entities", &key).await.unwrap(), 401).await;

    let create = |account: &str| {
        Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .args(["admin", "create-api-key", "--account", account])
            .current_dir(dir.path())
            .env("MAILROOM_DATABASE_URL", &database)
            .output()
            .unwrap()
    };
    let output = create(&account);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let new_key = key_in(&String::from_utf8(output.stdout).unwrap()).unwrap();
    crate::helpers::record_secret(&new_key);
    let keys: serde_json::Value = get("/api-keys", &new_key)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["data"][0]["role"], "admin");
    assert_eq!(
        keys["data"][0]["entity_id"],
        serde_json::Value::Null,
        "for the whole account"
    );
    assert_eq!(keys["data"][0]["created_by"], "cli");
    assert!(!create("acc_000000000000000000000000").status.success());
}

async fn an_address_made_again_starts_empty_and_the_old_maildir_is_purged(engine: Engine) {
    let vmail = tempfile::tempdir().unwrap();
    // The mail root as the mail servers are told it, and owned by their user (root here).
    let root = vmail.path().join("vmail");
    let app = spawn_app_with(engine, |s| {
        s.vmail_root = root.display().to_string();
        s.vmail_uid = 0;
    })
    .await;
    app.active_domain("customer.com").await;
    let home = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT home FROM dovecot_users WHERE \"user\" = 'support@customer.com'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
    };
    let create = |local_part: &str| {
        app.create_mailbox(serde_json::json!({"domain": "customer.com", "local_part": local_part}))
    };
    let delete = |id: i64| {
        let app = &app;
        async move {
            let deleted = app
                .api(reqwest::Method::POST, "/v2/email-accounts/delete")
                .json(&serde_json::json!({"id": id}))
                .send()
                .await
                .unwrap();
            assert_eq!(deleted.status(), 200);
        }
    };
    let id = |created: serde_json::Value| created["account"]["id"].as_i64().unwrap();

    let first = id(create("support").await);
    let first_home = std::path::PathBuf::from(home().await);
    assert_eq!(
        first_home,
        root.join(format!("customer.com/support@{first}"))
    );
    // What the mail server stored for the first owner.
    std::fs::create_dir_all(first_home.join("Maildir/cur")).unwrap();
    std::fs::write(first_home.join("Maildir/cur/1.eml"), "Subject: private").unwrap();
    // Another of the domain's mailboxes, deleted without ever receiving mail; and one
    // whose folder someone replaced by a link to elsewhere.
    let never_used = id(create("sales").await);
    let linked = id(create("billing").await);
    let elsewhere = vmail.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keep"), "not mail").unwrap();
    std::os::unix::fs::symlink(
        &elsewhere,
        root.join(format!("customer.com/billing@{linked}")),
    )
    .unwrap();
    for deleted in [never_used, linked, first] {
        delete(deleted).await;
    }

    let second = id(create("support").await);
    let second_home = std::path::PathBuf::from(home().await);
    assert_eq!(
        second_home,
        root.join(format!("customer.com/support@{second}"))
    );
    std::fs::create_dir_all(second_home.join("Maildir/new")).unwrap();

    let purge = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .args(["admin", "purge-maildirs"])
            .args(args)
            .current_dir(app.dir.path())
            .env("MAILROOM_DATABASE_URL", app.settings.database_url())
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        (output.status.success(), format!("{stdout}{stderr}"))
    };
    let (_, recent) = purge(&[]);
    assert!(
        recent.contains("0 deleted mailboxes"),
        "a day's grace: {recent}"
    );

    let (ok, listed) = purge(&["--min-age-hours", "0", "--dry-run"]);
    assert!(
        listed.contains(&format!("would remove {}", first_home.display())),
        "{listed}"
    );
    assert!(!ok, "the linked folder is reported: {listed}");
    assert!(first_home.exists(), "a dry run removes nothing");

    let (ok, purged) = purge(&["--min-age-hours", "0"]);
    assert!(!ok, "{purged}");
    assert!(
        purged.contains("3 deleted mailboxes' Maildirs, 1 kept"),
        "{purged}"
    );
    assert!(purged.contains("nothing on disk at"), "{purged}");
    assert!(
        purged.contains("billing@customer.com: it is a symbolic link"),
        "{purged}"
    );
    assert!(!first_home.exists(), "the deleted mailbox's mail is gone");
    assert!(elsewhere.join("keep").exists(), "a link is never followed");
    assert!(
        second_home.join("Maildir/new").exists(),
        "the live one is untouched"
    );
    let (_, again) = purge(&["--min-age-hours", "0"]);
    assert!(
        again.contains("1 deleted mailboxes' Maildirs, 1 kept"),
        "only the kept one stays listed: {again}"
    );

    // On a machine without the mail (no root, or not the mail user's), nothing is forgotten.
    std::fs::remove_file(root.join(format!("customer.com/billing@{linked}"))).unwrap();
    std::os::unix::fs::chown(&root, Some(8), None).unwrap();
    let (ok, refused) = purge(&["--min-age-hours", "0"]);
    assert!(
        !ok && refused.contains("does not belong to the mail user"),
        "{refused}"
    );
    std::fs::rename(&root, vmail.path().join("moved")).unwrap();
    let (ok, refused) = purge(&["--min-age-hours", "0"]);
    assert!(
        !ok && refused.contains("run this on the mail host"),
        "{refused}"
    );
    let listed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deleted_maildirs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(listed, 1);
}
