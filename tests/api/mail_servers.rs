//! Dovecot and Postfix, from Debian's packages, configured from `deploy/` and reading
//! mailroom's database: what the API does is what the mail servers see.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::types::DomainName;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::both_engines;
use crate::helpers::{Engine, TestApp, free_port, spawn_app_with};

both_engines!(dovecot_and_postfix_serve_what_the_api_says);

/// Whether `program` is installed; without it the test is skipped, unless
/// `MAILROOM_TEST_REQUIRE_EXTERNAL=1` makes that a failure.
fn installed(program: &str) -> bool {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
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

fn deploy(path: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(path),
    )
    .unwrap()
}

/// A deploy/ file with some of its `key = value` lines replaced.
fn with_lines(template: &str, replace: &[(&str, String)]) -> String {
    template
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            match replace.iter().find(|(k, _)| *k == key) {
                Some((k, v)) => format!("{k} = {v}"),
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How the mail servers reach the database: the SQLite file, or PostgreSQL as the
/// read-only role of deploy/postgres/mail-reader.sql.
enum Source {
    Sqlite(PathBuf),
    Postgres {
        host: String,
        port: u16,
        dbname: String,
        user: String,
        password: String,
    },
}

async fn source(app: &TestApp, engine: Engine) -> Source {
    match engine {
        Engine::Sqlite => Source::Sqlite(app.dir.path().join("mailroom.db")),
        Engine::Postgres => {
            let password = "reader-password";
            let script =
                deploy("postgres/mail-reader.sql").replace(":password", &format!("'{password}'"));
            let script: String = script
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n");
            // The role is the cluster's: tests on other databases may create it at once.
            for attempt in 0..5 {
                match sqlx::raw_sql(&script).execute(&app.db.pool).await {
                    Ok(_) => break,
                    Err(_) if attempt < 4 => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(error) => panic!("{error}"),
                }
            }
            let url = url::Url::parse(&app.settings.database_url()).unwrap();
            Source::Postgres {
                host: url.host_str().unwrap().to_string(),
                port: url.port().unwrap_or(5432),
                dbname: url.path().trim_start_matches('/').to_string(),
                user: "mailroom_mail".to_string(),
                password: password.to_string(),
            }
        }
    }
}

struct Dovecot {
    child: Child,
    port: u16,
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dovecot {
    fn start(dir: &Path, source: &Source) -> Dovecot {
        let run = dir.join("dovecot");
        std::fs::create_dir_all(&run).unwrap();
        make_traversable(dir);
        let sql = match source {
            Source::Sqlite(path) => with_lines(
                &deploy("dovecot/dovecot-sql-sqlite.conf.ext"),
                &[("connect", path.display().to_string())],
            ),
            Source::Postgres {
                host,
                port,
                dbname,
                user,
                password,
            } => with_lines(
                &deploy("dovecot/dovecot-sql-pgsql.conf.ext"),
                &[(
                    "connect",
                    format!(
                        "host={host} port={port} dbname={dbname} user={user} password={password}"
                    ),
                )],
            ),
        };
        let sql_path = run.join("dovecot-sql.conf.ext");
        std::fs::write(&sql_path, sql).unwrap();
        let port = free_port();
        // deploy/dovecot/dovecot.conf with what a throwaway, unprivileged test run needs.
        let config = with_lines(
            &deploy("dovecot/dovecot.conf"),
            &[
                ("protocols", "imap".into()),
                ("listen", "127.0.0.1".into()),
                ("first_valid_uid", "8".into()),
                ("first_valid_gid", "8".into()),
                ("args", sql_path.display().to_string()),
                ("ssl", "no".into()),
            ],
        );
        let config: String = config
            .lines()
            .filter(|l| !l.starts_with("ssl_cert") && !l.starts_with("ssl_key"))
            .collect::<Vec<_>>()
            .join("\n");
        let config = config.split("service lmtp").next().unwrap().to_string()
            + &format!(
                "\nbase_dir = {run}/base\nstate_dir = {run}/state\nlog_path = {run}/dovecot.log\n\
                 disable_plaintext_auth = no\nauth_mechanisms = plain login\nauth_failure_delay = 0\n\
                 service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
                 service auth-worker {{\n  user = root\n}}\n",
                run = run.display()
            );
        let config_path = run.join("dovecot.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not start: {}",
                std::fs::read_to_string(run.join("dovecot.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dovecot { child, port }
    }

    /// IMAP LOGIN, as a mail client does it. Each login comes from another loopback
    /// address, as Dovecot slows down repeated failures from one address.
    async fn login(&self, user: &str, password: &str) -> bool {
        static CLIENTS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);
        let client = CLIENTS
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .max(2);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 1, client], 0).into()).unwrap();
        let stream = socket
            .connect(([127, 0, 0, 1], self.port).into())
            .await
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut greeting = String::new();
        reader.read_line(&mut greeting).await.unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let command = format!("a1 LOGIN {} {}\r\n", quoted(user), quoted(password));
        reader
            .get_mut()
            .write_all(command.as_bytes())
            .await
            .unwrap();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap() == 0 {
                return false;
            }
            if let Some(result) = line.strip_prefix("a1 ") {
                let ok = result.starts_with("OK");
                let _ = reader.get_mut().write_all(b"a2 LOGOUT\r\n").await;
                return ok;
            }
        }
    }
}

/// The test's temporary folders belong to root with mode 0700; Dovecot's unprivileged
/// processes must pass through them.
fn make_traversable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `postmap -q KEY TABLE` with a table from deploy/postfix; `None` when not found.
fn postmap(dir: &Path, source: &Source, table: &str, key: &str) -> Option<String> {
    let (prefix, contents) = match source {
        Source::Sqlite(path) => (
            "sqlite",
            with_lines(
                &deploy(&format!("postfix/sqlite/{table}.cf")),
                &[("dbpath", path.display().to_string())],
            ),
        ),
        Source::Postgres {
            host,
            port,
            dbname,
            user,
            password,
        } => (
            "pgsql",
            with_lines(
                &deploy(&format!("postfix/pgsql/{table}.cf")),
                &[
                    ("hosts", format!("{host}:{port}")),
                    ("dbname", dbname.clone()),
                    ("user", user.clone()),
                    ("password", password.clone()),
                ],
            ),
        ),
    };
    let path = dir.join(format!("postfix-{table}.cf"));
    std::fs::write(&path, contents).unwrap();
    let output = Command::new("postmap")
        .arg("-q")
        .arg(key)
        .arg(format!("{prefix}:{}", path.display()))
        .output()
        .unwrap();
    match output.status.code() {
        Some(0) => Some(String::from_utf8(output.stdout).unwrap().trim().to_string()),
        Some(1) => None,
        _ => panic!(
            "postmap failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

async fn dovecot_and_postfix_serve_what_the_api_says(engine: Engine) {
    if !installed("dovecot") || !installed("postmap") {
        return;
    }
    let vmail = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(vmail.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let vmail_root = vmail.path().display().to_string();
    let app = spawn_app_with(engine, |s| {
        s.vmail_root = vmail_root;
        s.vmail_uid = 8;
        s.vmail_gid = 8;
    })
    .await;
    app.active_domain("customer.com").await;
    let created = app.create_mailbox(json!({"domain": "customer.com", "local_part": "support", "user_id": "u1", "quota_mb": 100})).await;
    let id = created["account"]["id"].as_i64().unwrap();
    let password = created["password"].as_str().unwrap().to_string();
    let source = source(&app, engine).await;
    let dovecot = Dovecot::start(app.dir.path(), &source);

    assert!(
        dovecot.login("support@customer.com", &password).await,
        "the returned password logs in"
    );
    assert!(
        dovecot.login("Support@Customer.com", &password).await,
        "addresses are case-insensitive"
    );
    assert!(
        !dovecot
            .login("support@customer.com", "not-the-password")
            .await
    );
    assert!(!dovecot.login("nobody@customer.com", &password).await);

    let set_status = |status: &str| {
        app.api(Method::PUT, &format!("/v2/email-accounts/{id}"))
            .json(&json!({"status": status}))
    };
    assert_eq!(set_status("disabled").send().await.unwrap().status(), 200);
    assert!(
        !dovecot.login("support@customer.com", &password).await,
        "disabled"
    );
    assert_eq!(set_status("active").send().await.unwrap().status(), 200);
    assert!(
        dovecot.login("support@customer.com", &password).await,
        "enabled again"
    );

    let reset: Value = app
        .api(
            Method::POST,
            &format!("/v2/email-accounts/{id}/password/reset"),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_password = reset["password"].as_str().unwrap();
    assert!(
        !dovecot.login("support@customer.com", &password).await,
        "the old password stops working"
    );
    assert!(
        dovecot.login("support@customer.com", new_password).await,
        "the new one works"
    );

    // Postfix's lookups, through the deploy/ tables.
    let dir = app.dir.path();
    assert_eq!(
        postmap(dir, &source, "domains", "customer.com").as_deref(),
        Some("customer.com")
    );
    assert_eq!(postmap(dir, &source, "domains", "elsewhere.org"), None);
    assert_eq!(
        postmap(dir, &source, "mailboxes", "support@customer.com").as_deref(),
        Some("customer.com/support/")
    );
    assert_eq!(
        postmap(dir, &source, "mailboxes", "nobody@customer.com"),
        None
    );
    assert_eq!(
        postmap(dir, &source, "aliases", "support@customer.com").as_deref(),
        Some("support@customer.com")
    );
    let (home, quota): (String, Option<String>) =
        sqlx::query_as("SELECT home, quota_rule FROM dovecot_users")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        home,
        format!("{}/customer.com/support", vmail.path().display())
    );
    assert_eq!(quota.as_deref(), Some("*:storage=100M"));

    // A domain that stops being active takes its mailboxes out of service.
    let name = DomainName::parse("customer.com").unwrap();
    set_status_by_operator(&app.db, &name, None, DomainStatus::Suspended)
        .await
        .unwrap();
    assert!(
        !dovecot.login("support@customer.com", new_password).await,
        "the domain is suspended"
    );
    assert_eq!(
        postmap(dir, &source, "mailboxes", "support@customer.com"),
        None
    );
    set_status_by_operator(&app.db, &name, None, DomainStatus::Active)
        .await
        .unwrap();
    assert!(dovecot.login("support@customer.com", new_password).await);

    let deleted = app
        .api(Method::POST, "/v2/email-accounts/delete")
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    assert!(
        !dovecot.login("support@customer.com", new_password).await,
        "deleted"
    );
    assert_eq!(
        postmap(dir, &source, "aliases", "support@customer.com"),
        None
    );
}
