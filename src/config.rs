//! Typed settings: defaults < `mailroom.toml` < `MAILROOM_*` environment variables.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::types::HelloName;

use crate::types::EmailAddress;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Where mailroom keeps its files (the SQLite database by default).
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; default: `{data_dir}/mailroom.db`.
    pub database_url: Option<Secret>,
    /// The group (name or number) whose members may read the SQLite database: the mail
    /// servers' lookups. Unset: the file is mailroom's user's alone.
    pub database_group: Option<String>,
    /// The base of links in emails; never taken from a request's Host header.
    pub public_url: Option<String>,
    /// A tracing filter such as `info` or `mailroom=debug,info`.
    pub log: String,
    /// The master key (64 hex digits) that encrypts secrets at rest; default: a key file
    /// generated in the data dir on first start.
    pub secret_key: Option<Secret>,
    /// The zone mailroom's DNS server answers for, where DKIM CNAMEs point.
    pub dkim_zone: String,
    /// Where mailroom's DNS server listens (UDP and TCP); off when unset.
    pub dns_listen: Option<SocketAddr>,
    /// The resolvers used to check domains (`ip:port`, comma-separated); default: the system's.
    #[serde(deserialize_with = "socket_list")]
    pub dns_nameservers: Vec<SocketAddr>,
    /// Seconds before the first background check of a pending domain (doubling after).
    #[serde(deserialize_with = "number")]
    pub dns_check_interval: u64,
    /// The name the advised SPF record includes; default: `spf.{dkim_zone}`, which
    /// mailroom's DNS server answers from `spf_ips` and `spf_upstream`. A name outside the
    /// zone is the operator's to publish.
    pub spf_include: Option<String>,
    /// Addresses or networks mail leaves from (`192.0.2.10`, `2001:db8::/48`;
    /// comma-separated), published as `ip4:`/`ip6:` in the SPF record at `spf_include`.
    #[serde(deserialize_with = "string_list")]
    pub spf_ips: Vec<String>,
    /// Domains whose SPF records the record at `spf_include` includes (an upstream relay
    /// provider's, such as `_spf.relay.example`; comma-separated).
    #[serde(deserialize_with = "string_list")]
    pub spf_upstream: Vec<String>,
    /// The address the advised DMARC record sends aggregate reports to; none when unset.
    #[serde(deserialize_with = "report_address")]
    pub dmarc_rua: Option<EmailAddress>,
    /// The addresses `ns.{dkim_zone}` answers (comma-separated): the addresses mailroom's
    /// DNS server is reached at, and the glue the parent zone delegates with.
    #[serde(deserialize_with = "ip_list")]
    pub dns_ns_addresses: Vec<IpAddr>,
    /// The host the advisory MX record names; no MX record is advised when unset.
    pub mx_host: Option<String>,
    /// The system relay (`smtp://user:pass@host:port?tls=starttls|none`, `smtps://…`,
    /// `&verify=false` to accept any certificate); without it, mail with no relay of its
    /// own is written to `{data_dir}/mail/`.
    pub smtp_url: Option<Secret>,
    /// PEM certificates of authorities the system relay's certificate may chain to,
    /// besides the system's (a private CA, or the relay's own self-signed certificate).
    pub smtp_ca_file: Option<PathBuf>,
    /// The name mailroom gives in EHLO (a domain name or an address literal); default:
    /// the host of `public_url`, else the machine's fully qualified name.
    pub ehlo_name: Option<HelloName>,
    /// The From of mail that has no sender of its own.
    pub mail_from: String,
    /// Seconds an SMTP conversation may take before it counts as a temporary failure.
    #[serde(deserialize_with = "number")]
    pub smtp_timeout: u64,
    /// Seconds to connect to a relay and receive its greeting (TLS included on port 465):
    /// a relay that accepts and never speaks gives up its delivery slot this soon.
    #[serde(deserialize_with = "number")]
    pub smtp_connect_timeout: u64,
    /// Deliveries at once of one account's mail (through its own relays or the system
    /// relay), on each instance: the rest of it waits its turn (queued, not failed) while
    /// others' goes on.
    #[serde(deserialize_with = "number")]
    pub relay_concurrency: u64,
    /// Address ranges (`10.0.0.0/8`, `fd00::/8`; comma-separated) that tenants' relays may
    /// reach on any port, besides public addresses on ports 25, 465, 587 and 2525.
    #[serde(deserialize_with = "string_list")]
    pub destination_allow: Vec<String>,
    /// Seconds before the first retry of a temporary failure (doubling after, with jitter).
    #[serde(deserialize_with = "number")]
    pub mail_retry_seconds: u64,
    /// Hours an email's body (text, HTML, attachments) is kept at most; it is deleted
    /// sooner, once every recipient is final. Statuses and events stay.
    #[serde(deserialize_with = "number")]
    pub body_retention_hours: u64,
    /// Where the mail servers keep mailboxes (`home` in `dovecot_users`).
    pub vmail_root: String,
    /// The system user and group the mail servers store mail as.
    #[serde(deserialize_with = "number")]
    pub vmail_uid: u64,
    #[serde(deserialize_with = "number")]
    pub vmail_gid: u64,
    /// Connections the HTTP API serves at once; more wait until one closes.
    #[serde(deserialize_with = "number")]
    pub max_connections: u64,
    /// Seconds a client has to send a request's headers, counted from when the connection
    /// opens or the previous response was sent (so an idle connection closes after it too).
    #[serde(deserialize_with = "number")]
    pub http_header_timeout: u64,
    /// Seconds a connection may wait for its next byte while a request body is read or a
    /// response written.
    #[serde(deserialize_with = "number")]
    pub http_idle_timeout: u64,
    /// Domains one account may have.
    #[serde(deserialize_with = "number")]
    pub max_domains_per_account: u64,
    /// New domains that may wait for DKIM key generation while every key thread is busy;
    /// more are refused with 503 and `Retry-After`.
    #[serde(deserialize_with = "number")]
    pub keygen_queue: u64,
    /// Answers per second mailroom's DNS server sends over UDP to one source network (a
    /// /24, or a /56 in IPv6); beyond it answers are truncated, so that clients ask again
    /// over TCP. 0: no limit.
    #[serde(deserialize_with = "number")]
    pub dns_rate_limit: u64,
    /// Emails one account may send through `POST /v2/emails` per minute (a batch counts
    /// each of its emails); beyond it the API answers 429 with `Retry-After`. 0: no limit.
    #[serde(deserialize_with = "number")]
    pub send_rate_per_minute: u64,
    /// Bytes of sealed bodies one account's emails may hold while they wait (scheduled or
    /// being retried); an email that would pass it is refused with 429
    /// `held_bytes_exceeded`. 0: no limit.
    #[serde(deserialize_with = "number")]
    pub held_bytes_per_account: u64,
    /// Addresses one account's suppression list may hold; see the README for what
    /// happens to bounces past it. 0: no limit.
    #[serde(deserialize_with = "number")]
    pub suppressions_per_account: u64,
    /// Where `GET /metrics` (Prometheus text, unauthenticated) is served, apart from the
    /// API; off when unset. Only the operator's monitoring should reach it.
    pub metrics_listen: Option<SocketAddr>,
    /// Days the account's event log (`GET /v2/events`, and each email's history) keeps
    /// an event; one still being delivered to a webhook stays until that ends.
    #[serde(deserialize_with = "number")]
    pub event_retention_days: u64,
    /// Deliveries one webhook endpoint may have under way at once on each instance, so
    /// that a slow endpoint holds up only its own.
    #[serde(deserialize_with = "number")]
    pub webhook_concurrency: u64,
    /// Consecutive failed deliveries (over at least 24 hours) after which an endpoint is
    /// disabled. 0: never.
    #[serde(deserialize_with = "number")]
    pub webhook_disable_after_failures: u64,
    /// Webhooks one account may have. 0: no limit.
    #[serde(deserialize_with = "number")]
    pub webhooks_per_account: u64,
    /// Days a DKIM key signs before it is rotated. 0: only on request.
    #[serde(deserialize_with = "number")]
    pub dkim_rotate_days: u64,
    /// Seconds between publishing a rotation's new key and signing with it: longer than
    /// the TXT's TTL, so that no resolver still holds the selector's old record.
    #[serde(deserialize_with = "number")]
    pub dkim_switch_after_seconds: u64,
    /// Hours a replaced key stays published, so that mail it signed still verifies.
    #[serde(deserialize_with = "number")]
    pub dkim_retire_after_hours: u64,
    /// Whether each message gets an Ed25519 signature beside the RSA one.
    #[serde(deserialize_with = "flag")]
    pub dkim_ed25519: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("mailroom-data"),
            database_url: None,
            database_group: None,
            public_url: None,
            log: "info".to_string(),
            secret_key: None,
            dkim_zone: "dkim.mailroom.test".to_string(),
            dns_listen: None,
            dns_nameservers: Vec::new(),
            dns_check_interval: 300,
            spf_include: None,
            spf_ips: Vec::new(),
            spf_upstream: Vec::new(),
            dmarc_rua: None,
            dns_ns_addresses: Vec::new(),
            mx_host: None,
            smtp_url: None,
            smtp_ca_file: None,
            ehlo_name: None,
            mail_from: "noreply@mailroom.test".to_string(),
            smtp_timeout: 60,
            smtp_connect_timeout: 10,
            relay_concurrency: 4,
            destination_allow: Vec::new(),
            mail_retry_seconds: 30,
            body_retention_hours: 72,
            vmail_root: "/var/vmail".to_string(),
            vmail_uid: 5000,
            vmail_gid: 5000,
            max_connections: 1024,
            http_header_timeout: 10,
            http_idle_timeout: 30,
            max_domains_per_account: 100,
            keygen_queue: 16,
            dns_rate_limit: 20,
            send_rate_per_minute: 1000,
            held_bytes_per_account: 1024 * 1024 * 1024,
            suppressions_per_account: 100_000,
            metrics_listen: None,
            event_retention_days: 30,
            webhook_concurrency: 4,
            webhook_disable_after_failures: 50,
            webhooks_per_account: 20,
            dkim_rotate_days: 180,
            dkim_switch_after_seconds: 3600,
            dkim_retire_after_hours: 168,
            dkim_ed25519: true,
        }
    }
}

/// Settings as loaded, with the keys that matched no setting.
#[derive(Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub unknown_keys: Vec<String>,
}

impl Settings {
    /// Reads the optional file (`path`, else `./mailroom.toml` when present), then the
    /// `MAILROOM_*` variables of `env` on top.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Loaded> {
        let mut table = match path {
            Some(path) => read_table(path)?,
            None if Path::new("mailroom.toml").exists() => read_table(Path::new("mailroom.toml"))?,
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(name) = key.strip_prefix("MAILROOM_") else {
                continue;
            };
            // Variables that steer the CLI or the test suite, not settings.
            if name == "CONFIG" || name.starts_with("TEST_") {
                continue;
            }
            table.insert(name.to_ascii_lowercase(), toml::Value::String(value));
        }
        let mut unknown_keys = Vec::new();
        let settings: Settings =
            serde_ignored::deserialize(table, |path| unknown_keys.push(path.to_string()))
                .context("invalid settings")?;
        Ok(Loaded {
            settings,
            unknown_keys,
        })
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_string(),
            None => format!("sqlite://{}", self.data_dir.join("mailroom.db").display()),
        }
    }

    /// The name tenants' SPF records should include, when there is one that authorises
    /// something: `spf_include` as set, else `spf.{dkim_zone}` once `spf_ips` or
    /// `spf_upstream` give it content. An include of an empty or missing record would
    /// break the tenant's SPF, so without either nothing is advised.
    pub fn spf_include(&self) -> Option<String> {
        match &self.spf_include {
            Some(name) => Some(name.trim().trim_end_matches('.').to_ascii_lowercase()),
            None if self.spf_ips.is_empty() && self.spf_upstream.is_empty() => None,
            None => Some(format!(
                "spf.{}",
                self.dkim_zone.trim_end_matches('.').to_ascii_lowercase()
            )),
        }
    }

    pub fn public_url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{bound}"),
        }
    }
}

/// A number, from TOML or from the text of an environment variable.
fn number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(u64),
        Text(String),
    }
    match NumberOrText::deserialize(deserializer)? {
        NumberOrText::Number(n) => Ok(n),
        NumberOrText::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a whole number"))),
    }
}

/// `true` or `false`, from TOML or from the text of an environment variable.
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum FlagOrText {
        Flag(bool),
        Text(String),
    }
    match FlagOrText::deserialize(deserializer)? {
        FlagOrText::Flag(flag) => Ok(flag),
        FlagOrText::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "`{text}` is neither true nor false"
            ))),
        },
    }
}

/// `ip:port` addresses, as a TOML array or comma-separated text.
fn socket_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<SocketAddr>, D::Error> {
    string_list(deserializer)?
        .iter()
        .map(|item| {
            item.parse().map_err(|_| {
                serde::de::Error::custom(format!("`{item}` is not an ip:port address"))
            })
        })
        .collect()
}

/// IP addresses, as a TOML array or comma-separated text.
fn ip_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpAddr>, D::Error> {
    string_list(deserializer)?
        .iter()
        .map(|item| {
            item.parse()
                .map_err(|_| serde::de::Error::custom(format!("`{item}` is not an IP address")))
        })
        .collect()
}

/// An address that can stand in a DMARC `rua=mailto:` URI as it is: `,` `!` `;` and `%`
/// mean something there, so the local part keeps to letters, digits and `.` `_` `+` `-`.
fn report_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<EmailAddress>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let address = EmailAddress::parse(&text).map_err(serde::de::Error::custom)?;
    if !address
        .local()
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
    {
        return Err(serde::de::Error::custom(format!(
            "`{address}`: a report address may hold only letters, digits and . _ + - before the @"
        )));
    }
    Ok(Some(address))
}

/// Words, as a TOML array or comma-separated text.
fn string_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    let items = match ListOrText::deserialize(deserializer)? {
        ListOrText::List(items) => items,
        ListOrText::Text(text) => text.split(',').map(str::to_string).collect(),
    };
    Ok(items
        .iter()
        .map(|item| item.trim().to_string())
        .filter(|item| !item.is_empty())
        .collect())
}

fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the settings file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid TOML in {}", path.display()))
}

/// A setting that must never reach a log: its `Debug` form is redacted.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"[redacted]\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mailroom.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nlog = \"debug\"\n").unwrap();
        let loaded =
            Settings::load(Some(&file), env(&[("MAILROOM_LISTEN", "127.0.0.1:9100")])).unwrap();
        assert_eq!(loaded.settings.listen.port(), 9100);
        assert_eq!(loaded.settings.log, "debug");
        assert_eq!(loaded.settings.data_dir, PathBuf::from("mailroom-data"));
    }

    #[test]
    fn unknown_keys_are_reported_from_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mailroom.toml");
        std::fs::write(&file, "lsiten = \"127.0.0.1:9000\"\n").unwrap();
        let loaded = Settings::load(
            Some(&file),
            env(&[("MAILROOM_DATABSE_URL", "x"), ("MAILROOM_TEST_X", "y")]),
        )
        .unwrap();
        let mut unknown = loaded.unknown_keys;
        unknown.sort();
        assert_eq!(unknown, vec!["databse_url", "lsiten"]);
    }

    #[test]
    fn flags_come_from_text_or_toml() {
        let load = |value: &str| {
            Settings::load(None, env(&[("MAILROOM_DKIM_ED25519", value)])).map(|l| l.settings)
        };
        assert!(!load("false").unwrap().dkim_ed25519);
        assert!(!load(" OFF ").unwrap().dkim_ed25519);
        assert!(load("1").unwrap().dkim_ed25519);
        let error = format!("{:#}", load("maybe").unwrap_err());
        assert!(
            error.contains("`maybe` is neither true nor false"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mailroom.toml");
        std::fs::write(&file, "dkim_ed25519 = false\n").unwrap();
        let loaded = Settings::load(Some(&file), env(&[])).unwrap();
        assert!(!loaded.settings.dkim_ed25519);
        assert!(Settings::default().dkim_ed25519);
    }

    #[test]
    fn numbers_and_lists_come_from_text_or_toml() {
        let loaded = Settings::load(
            None,
            env(&[
                ("MAILROOM_DNS_CHECK_INTERVAL", "15"),
                ("MAILROOM_DNS_NAMESERVERS", "127.0.0.1:53, [::1]:5353"),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.settings.dns_check_interval, 15);
        assert_eq!(loaded.settings.dns_nameservers.len(), 2);
        let loaded = Settings::load(
            None,
            env(&[("MAILROOM_DESTINATION_ALLOW", "127.0.0.0/8, ::1/128,")]),
        )
        .unwrap();
        assert_eq!(
            loaded.settings.destination_allow,
            vec!["127.0.0.0/8", "::1/128"]
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mailroom.toml");
        std::fs::write(
            &file,
            "dns_check_interval = 60\ndns_nameservers = [\"127.0.0.1:53\"]\n",
        )
        .unwrap();
        let loaded = Settings::load(Some(&file), Vec::new()).unwrap();
        assert_eq!(loaded.settings.dns_check_interval, 60);
        assert_eq!(loaded.settings.dns_nameservers.len(), 1);

        let error =
            Settings::load(None, env(&[("MAILROOM_DNS_CHECK_INTERVAL", "soon")])).unwrap_err();
        assert!(format!("{error:#}").contains("soon"), "{error:#}");
    }

    #[test]
    fn report_and_name_server_addresses_are_parsed() {
        let loaded = Settings::load(
            None,
            env(&[
                ("MAILROOM_DMARC_RUA", "dmarc-reports@Operator.Example"),
                ("MAILROOM_DNS_NS_ADDRESSES", "192.0.2.53, 2001:db8::53"),
            ]),
        )
        .unwrap();
        let rua = loaded.settings.dmarc_rua.unwrap();
        assert_eq!(rua.to_string(), "dmarc-reports@operator.example");
        assert_eq!(loaded.settings.dns_ns_addresses.len(), 2);
        // What would change the meaning of a DMARC record or its URI list is refused.
        for rua in [
            "a;p=reject@x.example",
            "a,b@x.example",
            "a!10m@x.example",
            "a%b@x.example",
            "nobody",
        ] {
            let error = Settings::load(None, env(&[("MAILROOM_DMARC_RUA", rua)])).unwrap_err();
            assert!(format!("{error:#}").contains("invalid"), "{rua}: {error:#}");
        }
        let error =
            Settings::load(None, env(&[("MAILROOM_DNS_NS_ADDRESSES", "ns.example")])).unwrap_err();
        assert!(format!("{error:#}").contains("ns.example"), "{error:#}");
    }

    #[test]
    fn a_malformed_value_is_an_error_naming_it() {
        let error = Settings::load(None, env(&[("MAILROOM_LISTEN", "nowhere")])).unwrap_err();
        assert!(format!("{error:#}").contains("invalid"), "{error:#}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let loaded = Settings::load(
            None,
            env(&[("MAILROOM_DATABASE_URL", "postgres://u:hunter2@db/mailroom")]),
        )
        .unwrap();
        let shown = format!("{:?}", loaded.settings);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
