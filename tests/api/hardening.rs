//! Small hardenings: files holding secrets are private whatever the umask, and a verified
//! sender address is told so (409) before any resend limit (429) is counted.

use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::json;

use crate::both_engines;
use crate::helpers::dns::TestDns;
use crate::helpers::{Engine, ServerProcess, error_code, spawn_app_with_relay, test_dir};

both_engines!(resending_to_a_verified_address_is_409_before_any_429);

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    metadata.permissions().mode() & 0o777
}

#[test]
fn secret_files_are_created_private_whatever_the_umask() {
    let dir = test_dir();
    let data = dir.path().join("data");
    let database = format!("sqlite://{}", data.join("mailroom.db").display());
    let env = [("MAILROOM_DATA_DIR", data.to_str().unwrap())];
    let server = ServerProcess::serve_after("umask 000", &dir, &database, &env);

    // The database and its WAL files hold password hashes; the key file opens every
    // sealed secret.
    for file in [
        "mailroom.db",
        "mailroom.db-wal",
        "mailroom.db-shm",
        "secret.key",
    ] {
        let mode = mode(&data.join(file));
        assert_eq!(mode, 0o600, "{file} is {mode:o}");
    }

    // Mail written to files (no relay) carries links and codes.
    let sent = Command::new("sh")
        .arg("-c")
        .arg("umask 000\nexec \"$0\" send-test-email --to someone@example.org")
        .arg(env!("CARGO_BIN_EXE_mailroom"))
        .current_dir(dir.path())
        .env("MAILROOM_DATA_DIR", &data)
        .env("MAILROOM_DATABASE_URL", &database)
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let mail: Vec<_> = std::fs::read_dir(data.join("mail"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "eml"))
        .collect();
    assert_eq!(mail.len(), 1, "{mail:?}");
    let mode = mode(&mail[0]);
    assert_eq!(mode, 0o600, "{} is {mode:o}", mail[0].display());
    drop(server);
}

/// The mail servers' lookups run as their own users: the group the operator names may read
/// the database, and the files SQLite makes again later stay in it.
#[test]
fn the_database_group_may_read_the_database_and_no_one_else() {
    use std::os::unix::fs::MetadataExt;
    let dir = test_dir();
    let data = dir.path().join("data");
    let database = format!("sqlite://{}", data.join("mailroom.db").display());
    // Debian's `mail` group; any group but root's would do.
    let env = [
        ("MAILROOM_DATA_DIR", data.to_str().unwrap()),
        ("MAILROOM_DATABASE_GROUP", "mail"),
    ];
    let server = ServerProcess::serve_after("umask 000", &dir, &database, &env);
    let metadata = |path: &Path| std::fs::metadata(path).unwrap();
    assert_eq!(metadata(&data).mode() & 0o7777, 0o2750);
    assert_eq!(metadata(&data).gid(), 8);
    for file in ["mailroom.db", "mailroom.db-wal", "mailroom.db-shm"] {
        let found = metadata(&data.join(file));
        assert_eq!(
            found.mode() & 0o777,
            0o640,
            "{file} is {:o}",
            found.mode() & 0o777
        );
        assert_eq!(found.gid(), 8, "{file}");
    }
    assert_eq!(
        mode(&data.join("secret.key")),
        0o600,
        "the key stays private"
    );
    drop(server);

    let unknown = Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .arg("migrate")
        .current_dir(dir.path())
        .env("MAILROOM_DATA_DIR", &data)
        .env("MAILROOM_DATABASE_URL", &database)
        .env("MAILROOM_DATABASE_GROUP", "no-such-group")
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no group no-such-group"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

async fn resending_to_a_verified_address_is_409_before_any_429(engine: Engine) {
    let dns = TestDns::start().await;
    let (app, relay) = spawn_app_with_relay(engine, |s| {
        s.dns_nameservers = vec![dns.address];
    })
    .await;
    let organization = format!("/v1/organizations/{}/email-address", app.admin.entity_id);
    for (sent, path, email) in [
        (1, "/v1/email-address", "billing@customer.com"),
        (2, organization.as_str(), "sales@customer.com"),
    ] {
        app.add_sender(path, email).await;
        let (_link, code) = relay.verification_link_and_code(email, sent).await;
        let verified = app
            .api(Method::POST, &format!("{path}/verify"))
            .json(&json!({"code": code}))
            .send()
            .await
            .unwrap();
        assert_eq!(verified.status(), 200, "{path}");

        // Within a minute of the last email, a resend to a pending address is 429; to a
        // verified one there is nothing to resend.
        let resend = app
            .api(Method::POST, &format!("{path}/resend-verification"))
            .send()
            .await
            .unwrap();
        assert!(!resend.headers().contains_key("retry-after"), "{path}");
        assert_eq!(
            error_code(resend, 409).await["code"],
            "already_verified",
            "{path}"
        );
    }
}
