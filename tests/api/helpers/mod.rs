//! The harness: `spawn_app` runs the real server on port 0 with a fresh database of the
//! chosen engine, and `TestApp` carries what the tests do with it (the per-resource
//! helpers are in this folder's files, one per area); `ServerProcess` runs the built
//! binary for what only a process can show.

pub mod browser;
pub mod dns;
pub mod domains;
pub mod invitations;
pub mod judges;
pub mod mail;
pub mod mailboxes;
pub mod receiver;
pub mod senders;
pub mod smtp;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailroom::Application;
use mailroom::config::{Secret, Settings};
use mailroom::store::Db;
use mailroom::tenancy::accounts::{NewAccount, create_account};
use reqwest::Method;
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(Engine)` once per engine: `sqlite` always, `postgres` when
/// `MAILROOM_TEST_POSTGRES_URL` is set (and fails without it under
/// `MAILROOM_TEST_REQUIRE_EXTERNAL`).
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Engine::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::helpers::postgres_url().is_some() {
                    super::$name($crate::helpers::Engine::Postgres).await
                }
            }
        }
    )*};
}

/// Where the tests leave their databases, server logs and the secrets they used, for the
/// scan that follows the suite in CI (`MAILROOM_TEST_ARTIFACTS`); nowhere when unset.
pub fn artifacts() -> Option<std::path::PathBuf> {
    std::env::var_os("MAILROOM_TEST_ARTIFACTS").map(std::path::PathBuf::from)
}

/// A folder for one test's data: kept among the artifacts when they are collected.
pub fn test_dir() -> TempDir {
    match artifacts() {
        Some(root) => {
            std::fs::create_dir_all(&root).unwrap();
            let mut dir = tempfile::Builder::new()
                .prefix("test-")
                .tempdir_in(root)
                .unwrap();
            dir.disable_cleanup(true);
            dir
        }
        None => tempfile::tempdir().unwrap(),
    }
}

/// Notes a secret a test used (a password), which must appear in no artifact. (Short
/// ones are refused before they are used, and would match by chance.)
pub fn record_secret(secret: &str) {
    use std::io::Write;
    if secret.len() < 12 {
        return;
    }
    if let Some(root) = artifacts() {
        std::fs::create_dir_all(&root).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("secrets.txt"))
            .unwrap();
        writeln!(file, "{secret}").unwrap();
    }
}

/// With artifacts collected, the in-process servers log into them too.
fn log_into_artifacts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Some(root) = artifacts() {
            std::fs::create_dir_all(&root).unwrap();
            let file = std::fs::File::create(root.join("in-process.log")).unwrap();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "mailroom=debug,sqlx=debug,info",
                ))
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .try_init();
        }
    });
}

/// The PostgreSQL server to test against; `None` means skip.
pub fn postgres_url() -> Option<String> {
    match std::env::var("MAILROOM_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("MAILROOM_TEST_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1") => {
            panic!("MAILROOM_TEST_REQUIRE_EXTERNAL=1 but MAILROOM_TEST_POSTGRES_URL is not set")
        }
        _ => {
            eprintln!("skipped: set MAILROOM_TEST_POSTGRES_URL to run against PostgreSQL");
            None
        }
    }
}

/// A fresh, empty database of `engine`: a file in `dir`, or a new PostgreSQL database.
pub async fn fresh_database_url(engine: Engine, dir: &TempDir) -> String {
    match engine {
        Engine::Sqlite => format!("sqlite://{}", dir.path().join("mailroom.db").display()),
        Engine::Postgres => {
            let base = postgres_url().expect("PostgreSQL URL");
            let name = mailroom::store::new_id("test");
            let admin = Db::connect(&base).await.expect("connect to PostgreSQL");
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin.pool)
                .await
                .expect("create a test database");
            admin.pool.close().await;
            let mut url = url::Url::parse(&base).unwrap();
            url.set_path(&name);
            url.to_string()
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    /// mailroom's own DNS server, when the settings asked for one.
    pub dns_address: Option<std::net::SocketAddr>,
    /// Where `GET /metrics` answers, when the settings asked for it.
    pub metrics_address: Option<std::net::SocketAddr>,
    pub db: Db,
    pub client: reqwest::Client,
    /// The first account, made with the CLI's own function: its admin key is `admin.api_key`.
    pub admin: NewAccount,
    pub dir: TempDir,
}

pub async fn spawn_app(engine: Engine) -> TestApp {
    spawn_app_with(engine, |_| {}).await
}

/// `spawn_app` with settings of the test's own on top of the defaults.
pub async fn spawn_app_with(engine: Engine, configure: impl FnOnce(&mut Settings)) -> TestApp {
    log_into_artifacts();
    let dir = test_dir();
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        database_url: Some(Secret::new(fresh_database_url(engine, &dir).await)),
        dkim_zone: "dkim.mailroom.test".to_string(),
        // The tests' relays listen on loopback, which tenants' relays may not reach unless
        // the operator allows it.
        destination_allow: vec!["127.0.0.0/8".to_string(), "::1/128".to_string()],
        ..Settings::default()
    };
    configure(&mut settings);
    let app = Application::build(&settings).await.expect("build the app");
    let dns_address = app.dns_address();
    let metrics_address = app.metrics_address();
    let db = app.db().clone();
    let address = format!("http://{}", app.address());
    tokio::spawn(app.run(std::future::pending()));
    let admin = create_account(&db, "Acme").await.unwrap();
    TestApp {
        address,
        settings,
        dns_address,
        metrics_address,
        db,
        client: reqwest::Client::new(),
        admin,
        dir,
    }
}

/// `spawn_app_with`, the system relay being a plain SMTP server of the test's.
pub async fn spawn_app_with_relay(
    engine: Engine,
    configure: impl FnOnce(&mut Settings),
) -> (TestApp, smtp::TestSmtp) {
    let relay = smtp::TestSmtp::start(smtp::Encryption::Plain, None).await;
    let app = spawn_app_with(engine, |s| {
        s.smtp_url = Some(Secret::new(format!(
            "smtp://127.0.0.1:{}?tls=none",
            relay.port
        )));
        configure(s);
    })
    .await;
    (app, relay)
}

impl TestApp {
    /// Moves the app's clock forward by `by`: every rule that depends on time (the
    /// server's, its background workers', and the tests' reads of `db.now()`) sees it.
    pub async fn advance_clock(&self, by: Duration) {
        // Time passes once the emails being sent are recorded (5 s at most, for tests that
        // stall a relay on purpose): a jump past a live lease would hand the email to a
        // second attempt, as if the instance sending it had died.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let sending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM emails WHERE status = 'sending'")
                    .fetch_one(&self.db.pool)
                    .await
                    .unwrap();
            if sending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.db.clock.advance(by);
    }

    /// A GET with the admin key that must answer 200; answers the JSON body.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = self.api(Method::GET, path).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    /// A request with the admin key as a bearer token.
    pub fn api(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.with_key(&self.admin.api_key, method, path)
    }

    pub fn with_key(&self, key: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(key)
    }

    /// Another mailroom instance on the same database, as behind a load balancer, with
    /// connections of its own and the same clock (`advance_clock` moves both).
    pub async fn another_instance(&self) -> String {
        let mut db = Db::connect(&self.settings.database_url()).await.unwrap();
        db.clock = self.db.clock.clone();
        let app = Application::with_db(&self.settings, db)
            .await
            .expect("build a second app");
        let address = format!("http://{}", app.address());
        tokio::spawn(app.run(std::future::pending()));
        address
    }

    /// A second, unrelated account in the same database.
    pub async fn other_account(&self) -> NewAccount {
        create_account(&self.db, "Other").await.unwrap()
    }

    /// Creates an entity in the admin's account and answers its id.
    pub async fn create_entity(&self, name: &str) -> String {
        let response = self
            .api(Method::POST, "/entities")
            .json(&serde_json::json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let entity: serde_json::Value = response.json().await.unwrap();
        entity["id"].as_str().unwrap().to_string()
    }

    /// Creates an API key through the API and answers its secret.
    pub async fn create_key(&self, body: serde_json::Value) -> String {
        let response = self
            .api(Method::POST, "/api-keys")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let key: serde_json::Value = response.json().await.unwrap();
        key["api_key"].as_str().unwrap().to_string()
    }
}

/// Asserts the API's error shape and answers its `code`.
pub async fn error_code(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert!(response.headers().contains_key("x-request-id"));
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    let error = &body["error"];
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    error.clone()
}

/// The `mailroom` binary, run as a user would, with its stdout collected line by line.
pub struct ServerProcess {
    child: Child,
    pub address: String,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn serve(dir: &TempDir, database_url: &str) -> ServerProcess {
        Self::serve_with(dir, database_url, &[])
    }

    /// `mailroom serve` with more settings in its environment; its log is appended to
    /// `serve.log` in `dir`.
    pub fn serve_with(dir: &TempDir, database_url: &str, env: &[(&str, &str)]) -> ServerProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mailroom"));
        command.arg("serve");
        Self::start(command, dir, database_url, env)
    }

    /// `serve_with`, started by `sh` after the shell commands `prelude` (such as
    /// `umask 000` or `ulimit -Sn 256`), whose effect the server inherits.
    pub fn serve_after(
        prelude: &str,
        dir: &TempDir,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude}\nexec \"$0\" serve"))
            .arg(env!("CARGO_BIN_EXE_mailroom"));
        Self::start(command, dir, database_url, env)
    }

    fn start(
        mut command: Command,
        dir: &TempDir,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> ServerProcess {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("serve.log"))
            .unwrap();
        let mut child = command
            .current_dir(dir.path())
            .env("MAILROOM_LISTEN", format!("127.0.0.1:{port}"))
            .env("MAILROOM_DATABASE_URL", database_url)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start mailroom serve");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let server = ServerProcess {
            child,
            address: format!("http://127.0.0.1:{port}"),
            stdout,
        };
        server.wait_until_ready();
        server
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if answers_ready(&self.address) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mailroom did not become ready");
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL: the process dies wherever it is.
    pub fn kill_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM, the signal a service manager stops a service with.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_for_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mailroom did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `GET /readyz` answers 200, asked over a plain socket.
fn answers_ready(address: &str) -> bool {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://");
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// The `token=` of a link an email carried.
pub fn token_of(link: &str) -> String {
    link.split("token=")
        .nth(1)
        .unwrap()
        .split(['"', '&'])
        .next()
        .unwrap()
        .to_string()
}

/// The API key printed on a first start.
pub fn key_in(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|word| word.starts_with("mrk_") && word.len() == 68)
        .map(str::to_string)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
