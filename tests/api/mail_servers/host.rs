//! A throwaway mail host built from the files in deploy/ as shipped: Debian's own Postfix
//! configuration (chroot and all) plus deploy/postfix's fragments, and deploy/dovecot,
//! with only the paths, ports and users a test run needs changed. Both run in the
//! foreground, owned by the test, and stop with it.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{Engine, TestApp, free_port};

/// The user and group the test's mailboxes are stored as (Debian's `mail`, 8:8), standing
/// in for deploy/'s vmail (5000:5000), which a test machine does not have.
pub const VMAIL_ID: u32 = 8;

pub fn deploy(path: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(path),
    )
    .unwrap()
}

/// A deploy/ file with some of its `key = value` lines replaced.
pub fn with_lines(template: &str, replace: &[(&str, String)]) -> String {
    template
        .lines()
        .map(|line| {
            let key = line.split('=').next().unwrap_or("").trim();
            match replace.iter().find(|(k, _)| *k == key) {
                Some((k, v)) => {
                    let indent = &line[..line.len() - line.trim_start().len()];
                    format!("{indent}{k} = {v}")
                }
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with `from` replaced by `to`; `from` must be there, so that a change in deploy/
/// cannot leave the test silently using a path outside its own folder.
fn swap(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "deploy/ no longer has {from:?}");
    text.replace(from, to)
}

/// How the mail servers reach the database: the SQLite file, or PostgreSQL as the
/// read-only role of deploy/postgres/mail-reader.sql.
pub enum Source {
    Sqlite(PathBuf),
    Postgres {
        host: String,
        port: u16,
        dbname: String,
        password: String,
    },
}

/// The database as the mail servers read it. For PostgreSQL, the reader role is made as
/// a superuser would (step 1 of mail-reader.sql), and the script itself is run as a
/// database owner that is no superuser (step 2).
pub async fn source(app: &TestApp, engine: Engine) -> Source {
    match engine {
        Engine::Sqlite => Source::Sqlite(app.dir.path().join("mailroom.db")),
        Engine::Postgres => {
            let password = "reader-password";
            let url = url::Url::parse(&app.settings.database_url()).unwrap();
            let dbname = url.path().trim_start_matches('/').to_string();
            let owner = format!("{dbname}_owner");
            let views = "dovecot_users, postfix_domains, postfix_mailboxes, postfix_aliases, \
                         postfix_sender_logins";
            // The role is the cluster's: tests on other databases may create it at once.
            let create = format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailroom_mail') \
                 THEN CREATE ROLE mailroom_mail LOGIN PASSWORD '{password}'; END IF; END $$"
            );
            for attempt in 0..5 {
                match sqlx::raw_sql(&create).execute(&app.db.pool).await {
                    Ok(_) => break,
                    Err(_) if attempt < 4 => tokio::time::sleep(Duration::from_millis(200)).await,
                    Err(error) => panic!("{error}"),
                }
            }
            let mut conn = app.db.pool.acquire().await.unwrap();
            let hand_over = format!(
                "CREATE ROLE {owner} NOLOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public TO {owner}; \
                 ALTER VIEW dovecot_users OWNER TO {owner}; ALTER VIEW postfix_domains OWNER TO {owner}; \
                 ALTER VIEW postfix_mailboxes OWNER TO {owner}; ALTER VIEW postfix_aliases OWNER TO {owner}; \
                 ALTER VIEW postfix_sender_logins OWNER TO {owner}; REVOKE SELECT ON {views} FROM mailroom_mail"
            );
            sqlx::raw_sql(&hand_over).execute(&mut *conn).await.unwrap();
            sqlx::raw_sql(&format!("SET ROLE {owner}"))
                .execute(&mut *conn)
                .await
                .unwrap();
            let ran = sqlx::raw_sql(&deploy("postgres/mail-reader.sql"))
                .execute(&mut *conn)
                .await;
            sqlx::raw_sql("RESET ROLE")
                .execute(&mut *conn)
                .await
                .unwrap();
            ran.expect("the database owner runs deploy/postgres/mail-reader.sql");
            Source::Postgres {
                host: url.host_str().unwrap().to_string(),
                port: url.port().unwrap_or(5432),
                dbname,
                password: password.to_string(),
            }
        }
    }
}

/// The logs of the mail host, for the message of a failing assertion.
#[derive(Clone)]
pub struct Logs(Vec<PathBuf>);

impl Logs {
    /// Postfix's log so far.
    pub fn postfix(&self) -> String {
        std::fs::read_to_string(&self.0[0]).unwrap_or_default()
    }
}

impl std::fmt::Display for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for path in &self.0 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let tail: String = text
                .chars()
                .rev()
                .take(6000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            writeln!(f, "\n--- {} ---\n{tail}", path.display())?;
        }
        Ok(())
    }
}

/// A mail server's master process: stopped (SIGTERM, then SIGKILL) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct MailHost {
    // Postfix stops first: it hands mail to Dovecot.
    _postfix: Server,
    _dovecot: Server,
    /// Postfix's inbound listener ("25").
    pub smtp_port: u16,
    /// Postfix's submission listener ("587").
    pub submission_port: u16,
    pub imap_port: u16,
    /// The certificate both servers present (SANs localhost and 127.0.0.1), DER.
    pub certificate: Vec<u8>,
    pub logs: Logs,
}

/// A system user's uid and gid, from /etc/passwd.
fn system_user(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let fields: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f[0] == name)
        .unwrap_or_else(|| panic!("no user {name}"));
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn run(command: &mut Command, logs: &Logs) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}{}{logs}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn write(path: &Path, contents: &str, mode: u32, owner: Option<(u32, u32)>) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

fn wait_until(what: &str, logs: &Logs, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "{what}{logs}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl MailHost {
    /// Builds and starts the mail host in `dir` (which the mail servers' users must be
    /// able to pass through); where mail is stored comes from the database. `readers` is the group the
    /// database file is readable by, which the shipped files call mailroom-db.
    pub fn start(dir: &Path, source: &Source, readers: &str) -> MailHost {
        let (postfix_uid, postfix_gid) = system_user("postfix");
        let root = dir.join("mailhost");
        let etc = root.join("postfix");
        let queue = root.join("spool");
        let data = root.join("lib");
        let tables = root.join("tables");
        let run_dir = root.join("dovecot");
        for folder in [&root, &etc, &queue, &data, &tables, &run_dir] {
            std::fs::create_dir_all(folder).unwrap();
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::os::unix::fs::chown(&data, Some(postfix_uid), Some(postfix_gid)).unwrap();
        std::fs::set_permissions(&tables, std::fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::chown(&tables, Some(0), Some(postfix_gid)).unwrap();
        let postfix_log = root.join("postfix.log");
        let master_log = root.join("master.out");
        let dovecot_log = run_dir.join("dovecot.log");
        let logs = Logs(vec![
            postfix_log.clone(),
            master_log.clone(),
            dovecot_log.clone(),
        ]);

        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        let certificate = certified.cert.der().to_vec();
        let cert_path = root.join("fullchain.pem");
        let key_path = root.join("privkey.pem");
        write(&cert_path, &certified.cert.pem(), 0o644, None);
        write(
            &key_path,
            &certified.signing_key.serialize_pem(),
            0o600,
            None,
        );

        // Postfix: Debian's main.cf and master.cf, then deploy/'s fragments as the
        // operator guide applies them (main.cf line by line with postconf -e, master.cf
        // appended).
        std::fs::copy("/etc/postfix/main.cf", etc.join("main.cf")).unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").unwrap()
            + "\n"
            + &deploy("postfix/master.cf");
        std::fs::write(etc.join("master.cf"), master).unwrap();
        let tables_prefix = format!("{}/", tables.display());
        let main_lines: Vec<String> = deploy("postfix/main.cf")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let l = l.replace("/etc/postfix/mailroom/", &tables_prefix);
                match source {
                    Source::Sqlite(_) => l,
                    Source::Postgres { .. } => l.replace("proxy:sqlite:", "proxy:pgsql:"),
                }
            })
            .collect();
        let postconf = || {
            let mut command = Command::new("postconf");
            command.arg("-c").arg(&etc);
            command
        };
        run(postconf().arg("-e").args(&main_lines), &logs);
        for table in ["domains", "mailboxes", "aliases", "sender_logins"] {
            let contents = match source {
                Source::Sqlite(path) => with_lines(
                    &deploy(&format!("postfix/sqlite/{table}.cf")),
                    &[("dbpath", path.display().to_string())],
                ),
                Source::Postgres {
                    host,
                    port,
                    dbname,
                    password,
                } => with_lines(
                    &deploy(&format!("postfix/pgsql/{table}.cf")),
                    &[
                        ("hosts", format!("{host}:{port}")),
                        ("dbname", dbname.clone()),
                        ("password", password.clone()),
                    ],
                ),
            };
            write(
                &tables.join(format!("{table}.cf")),
                &contents,
                0o640,
                Some((0, postfix_gid)),
            );
        }
        // What a throwaway instance needs: its own folders, loopback ports, a log file
        // (there may be no syslog), a host name and the test's certificate.
        let smtp_port = free_port();
        let submission_port = free_port();
        run(
            postconf().arg("-e").args([
                format!("queue_directory = {}", queue.display()),
                format!("data_directory = {}", data.display()),
                format!("maillog_file = {}", postfix_log.display()),
                format!("maillog_file_prefixes = {}", root.display()),
                "myhostname = mail.mailroom.test".to_string(),
                "inet_interfaces = 127.0.0.1".to_string(),
                "inet_protocols = ipv4".to_string(),
                // No reverse DNS for the test's loopback clients, which a machine without
                // a resolver would wait on.
                "smtpd_peername_lookup = no".to_string(),
                format!("smtpd_tls_cert_file = {}", cert_path.display()),
                format!("smtpd_tls_key_file = {}", key_path.display()),
            ]),
            &logs,
        );
        run(
            postconf().arg("-F").args([
                format!("smtp/inet/service = 127.0.0.1:{smtp_port}"),
                format!("submission/inet/service = 127.0.0.1:{submission_port}"),
            ]),
            &logs,
        );
        // What Debian's instance script copies into the chroot.
        std::fs::create_dir_all(queue.join("etc")).unwrap();
        for file in [
            "hosts",
            "resolv.conf",
            "services",
            "nsswitch.conf",
            "localtime",
            "host.conf",
        ] {
            let _ = std::fs::copy(Path::new("/etc").join(file), queue.join("etc").join(file));
        }
        // Creates the queue's folders with Postfix's owners and modes.
        run(
            Command::new("postfix").arg("-c").arg(&etc).arg("check"),
            &logs,
        );

        // Dovecot, its sockets in this Postfix's spool.
        let sql_path = run_dir.join("dovecot-sql.conf.ext");
        let sql = match source {
            Source::Sqlite(path) => with_lines(
                &deploy("dovecot/dovecot-sql-sqlite.conf.ext"),
                &[("connect", path.display().to_string())],
            ),
            Source::Postgres {
                host,
                port,
                dbname,
                password,
            } => with_lines(
                &deploy("dovecot/dovecot-sql-pgsql.conf.ext"),
                &[(
                    "connect",
                    format!(
                        "host={host} port={port} dbname={dbname} user=mailroom_mail password={password}"
                    ),
                )],
            ),
        };
        write(&sql_path, &sql, 0o600, None);
        let imap_port = free_port();
        let mut config = deploy("dovecot/dovecot.conf");
        for (from, to) in [
            ("/var/spool/postfix/", format!("{}/", queue.display())),
            (
                "/etc/dovecot/dovecot-sql.conf.ext",
                sql_path.display().to_string(),
            ),
            (
                "/etc/mailroom/tls/fullchain.pem",
                cert_path.display().to_string(),
            ),
            (
                "/etc/mailroom/tls/privkey.pem",
                key_path.display().to_string(),
            ),
            (
                "port = 143",
                format!("address = 127.0.0.1\n    port = {imap_port}"),
            ),
            ("port = 993", "port = 0".to_string()),
            (
                "extra_groups = mailroom-db",
                format!("extra_groups = {readers}"),
            ),
        ] {
            config = swap(&config, from, &to);
        }
        // The IMAP client of the test logs in without TLS (from another loopback
        // address, which Dovecot does not count as the host itself).
        let config = with_lines(
            &config,
            &[
                ("listen", "127.0.0.1".into()),
                ("first_valid_uid", VMAIL_ID.to_string()),
                ("first_valid_gid", VMAIL_ID.to_string()),
                ("ssl", "yes".into()),
                ("disable_plaintext_auth", "no".into()),
            ],
        ) + &format!(
            "\nbase_dir = {run}/base\nstate_dir = {run}/state\nlog_path = {log}\n\
             auth_failure_delay = 0\n",
            run = run_dir.display(),
            log = dovecot_log.display(),
        );
        let config_path = run_dir.join("dovecot.conf");
        write(&config_path, &config, 0o644, None);
        let dovecot = Server(
            Command::new("dovecot")
                .arg("-F")
                .arg("-c")
                .arg(&config_path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(run_dir.join("dovecot.out")).unwrap())
                .spawn()
                .expect("start dovecot"),
        );
        let sockets =
            ["auth", "dovecot-lmtp", "quota-status"].map(|s| queue.join("private").join(s));
        let dovecot_out = run_dir.join("dovecot.out");
        wait_until(
            &format!(
                "dovecot did not start: {}",
                std::fs::read_to_string(&dovecot_out).unwrap_or_default()
            ),
            &logs,
            || {
                std::net::TcpStream::connect(("127.0.0.1", imap_port)).is_ok()
                    && sockets.iter().all(|s| s.exists())
            },
        );

        // Postfix's master in the foreground; -e makes it exit on its own should the
        // test be killed before it can stop it.
        let postfix = Server(
            Command::new("/usr/lib/postfix/sbin/master")
                // Its own process group, which it signals when told to stop, as it is
                // when started as a daemon.
                .process_group(0)
                .arg("-d")
                .arg("-c")
                .arg(&etc)
                .args(["-e", "300"])
                .stdout(std::fs::File::create(&master_log).unwrap())
                .stderr(std::fs::File::create(root.join("master.err")).unwrap())
                .spawn()
                .expect("start postfix"),
        );
        wait_until("postfix did not start", &logs, || {
            std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", submission_port)).is_ok()
        });
        MailHost {
            _postfix: postfix,
            _dovecot: dovecot,
            smtp_port,
            submission_port,
            imap_port,
            certificate,
            logs,
        }
    }
}

/// Mail is stored as the vmail stand-in, in a folder only it may enter, as
/// deploy/systemd/mailroom.tmpfiles.conf makes /var/vmail.
pub fn vmail_root(dir: &Path) -> PathBuf {
    let vmail = dir.join("vmail");
    std::fs::create_dir_all(&vmail).unwrap();
    std::fs::set_permissions(&vmail, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&vmail, Some(VMAIL_ID), Some(VMAIL_ID)).unwrap();
    vmail
}

/// The test's folders belong to root with mode 0700; the mail servers' unprivileged
/// processes must pass through them.
pub fn make_traversable(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // And so must its parents (the test artifacts' folder is 0700 too).
    for parent in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(parent).unwrap().permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o001))
                .unwrap();
        }
    }
}
