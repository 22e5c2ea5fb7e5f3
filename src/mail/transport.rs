//! Where a message goes: an SMTP relay (a domain's own, or the system's), or `.eml` files.
//! The SMTP conversation runs step by step so that a failure says which step failed and
//! what the server answered — in SMTP replies only: whatever else a server sends (another
//! protocol's banner) is reported as "not an SMTP server", and a closed, filtered or silent
//! port alike as "could not connect", so that a tenant's settings test is no port scanner.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use serde::Serialize;
use utoipa::ToSchema;

use super::destination::{self, ConnectError, Policy};
use crate::config::Settings;
use crate::types::text::escape_controls;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No TLS at all.
    None,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// STARTTLS, and fail when the server does not offer it.
    Required,
    /// TLS from the first byte (port 465).
    Implicit,
}

#[derive(Clone)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub accept_invalid_certs: bool,
    pub credentials: Option<(String, String)>,
    /// Log the dialogue (never the credentials).
    pub debug: bool,
    pub limits: Limits,
}

/// How far a conversation may go: its time limits and, for a tenant's relay, where it may
/// connect.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The whole conversation.
    pub timeout: Duration,
    /// The connection and the server's greeting (TLS included on port 465): a server that
    /// accepts and never speaks gives up its slot this soon.
    pub connect_timeout: Duration,
    /// Where a tenant's relay may connect; `None` for the operator's own relay.
    pub policy: Option<Arc<Policy>>,
}

impl Limits {
    /// The operator's relay (`MAILROOM_SMTP_URL`): it goes wherever the operator says.
    pub fn system(settings: &Settings) -> Limits {
        Limits {
            timeout: Duration::from_secs(settings.smtp_timeout.max(1)),
            connect_timeout: Duration::from_secs(settings.smtp_connect_timeout.max(1)),
            policy: None,
        }
    }

    /// A tenant's relay: only where the destination policy lets it.
    pub fn tenant(settings: &Settings, policy: &Arc<Policy>) -> Limits {
        Limits {
            policy: Some(policy.clone()),
            ..Limits::system(settings)
        }
    }
}

impl std::fmt::Debug for SmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "smtp {}:{}", self.host, self.port)
    }
}

impl SmtpTarget {
    /// `smtp://[user:pass@]host[:port][?tls=starttls|none]` (STARTTLS required by
    /// default, port 587) or `smtps://[user:pass@]host[:port]` (implicit TLS, port 465).
    /// The operator's relay: `limits` has no policy.
    pub fn from_url(url: &str, limits: Limits) -> anyhow::Result<SmtpTarget> {
        let parsed = url::Url::parse(url).context("MAILROOM_SMTP_URL is not a URL")?;
        let (security, default_port) = match parsed.scheme() {
            "smtps" => (Security::Implicit, 465),
            "smtp" => match parsed
                .query_pairs()
                .find(|(k, _)| k == "tls")
                .map(|(_, v)| v.into_owned())
            {
                None => (Security::Required, 587),
                Some(v) if v == "starttls" => (Security::Required, 587),
                Some(v) if v == "none" => (Security::None, 25),
                Some(other) => {
                    anyhow::bail!("MAILROOM_SMTP_URL: tls must be starttls or none, not {other}")
                }
            },
            other => anyhow::bail!(
                "MAILROOM_SMTP_URL must start with smtp:// or smtps://, not {other}://"
            ),
        };
        let host = parsed
            .host_str()
            .context("MAILROOM_SMTP_URL has no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let decode = |s: &str| {
            percent_decode(s)
                .context("MAILROOM_SMTP_URL: the user or password is not valid percent-encoding")
        };
        let credentials = match parsed.username() {
            "" => None,
            user => Some((decode(user)?, decode(parsed.password().unwrap_or(""))?)),
        };
        Ok(SmtpTarget {
            host,
            port: parsed.port().unwrap_or(default_port),
            security,
            accept_invalid_certs: false,
            credentials,
            debug: false,
            limits,
        })
    }
}

fn percent_decode(value: &str) -> anyhow::Result<String> {
    Ok(percent_encoding::percent_decode_str(value)
        .decode_utf8()?
        .into_owned())
}

#[derive(Debug, Clone)]
pub enum Transport {
    Smtp(SmtpTarget),
    /// The embedded default: each message becomes an `.eml` file in this folder.
    Files(PathBuf),
}

impl Transport {
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp(target) => format!("smtp://{}:{}", target.host, target.port),
            Transport::Files(dir) => format!("file://{}", dir.display()),
        }
    }
}

/// Why a message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth another try later: no connection, a timeout, a 4xx reply.
    Temporary(String),
    /// Not worth another try: a 5xx reply, or a destination tenants' relays may not reach.
    Permanent(String),
}

/// One step of an SMTP conversation, as reported by the settings test.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Step {
    /// `connect`, `tls`, `ehlo`, `auth` or `send`; `timeout` when the server stopped
    /// answering in the middle.
    pub step: &'static str,
    pub ok: bool,
    /// What happened: the server's SMTP reply (code and text) where it answered one;
    /// "not an SMTP server" when it answered something else; "could not connect" alike
    /// for a port that is closed, filtered or silent.
    pub detail: String,
}

struct Conversation<'a> {
    target: &'a SmtpTarget,
    steps: Vec<Step>,
    /// The policy refused the destination: trying again changes nothing.
    refused: bool,
}

/// What a probe or a delivery says of a server that answered something other than SMTP.
const NOT_SMTP: &str = "not an SMTP server";

impl Conversation<'_> {
    fn new(target: &SmtpTarget) -> Conversation<'_> {
        Conversation {
            target,
            steps: Vec::new(),
            refused: false,
        }
    }

    fn record(&mut self, step: &'static str, ok: bool, detail: impl Into<String>) {
        // A relay's reply is the relay's text: spelled out, it cannot forge log lines.
        let detail = escape_controls(&detail.into());
        if self.target.debug {
            tracing::info!(target: "mailroom::smtp", host = %self.target.host, port = self.target.port, step, ok, %detail, "smtp dialogue");
        }
        self.steps.push(Step { step, ok, detail });
    }

    fn tls_parameters(&self) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        TlsParameters::builder(self.target.host.clone())
            .dangerous_accept_invalid_certs(self.target.accept_invalid_certs)
            .build_rustls()
    }

    fn destination(&self) -> String {
        format!("{}:{}", self.target.host, self.target.port)
    }

    /// No connection, for whatever reason the network gave: the reason goes to the
    /// operator's log, the report says only this.
    fn unreachable(&mut self, cause: &str) {
        tracing::debug!(destination = %self.destination(), cause = %escape_controls(cause), "no SMTP connection");
        let detail = format!("could not connect to {}", self.destination());
        self.record("connect", false, detail);
    }

    /// Connects, secures and authenticates; `None` when a step failed (recorded).
    async fn open(&mut self) -> Option<AsyncSmtpConnection> {
        let target = self.target;
        // The connection and the greeting share one short deadline of their own.
        let deadline = tokio::time::Instant::now() + target.limits.connect_timeout;
        let policy = target.limits.policy.as_deref();
        let connected = tokio::time::timeout_at(
            deadline,
            destination::connect(&target.host, target.port, policy),
        )
        .await;
        let (stream, peer) = match connected {
            Ok(Ok(connected)) => connected,
            Ok(Err(ConnectError::Refused(rule))) => {
                self.refused = true;
                let detail = format!("could not connect to {}: {rule}", self.destination());
                self.record("connect", false, detail);
                return None;
            }
            Ok(Err(ConnectError::Unreachable(cause))) => {
                self.unreachable(&cause);
                return None;
            }
            Err(_) => {
                self.unreachable("no connection in time");
                return None;
            }
        };
        // SMTP writes small commands and waits for each reply: without this, Nagle's
        // algorithm and delayed ACKs hold many of them back for 40 ms.
        let _ = stream.set_nodelay(true);
        let hello = ClientId::default();
        let greeting = async {
            match target.security {
                // TLS comes before the greeting, so lettre makes this connection itself:
                // to the address just checked, never to the name again.
                Security::Implicit => {
                    let parameters = self.tls_parameters()?;
                    drop(stream);
                    AsyncSmtpConnection::connect_tokio1(peer, None, &hello, Some(parameters), None)
                        .await
                }
                _ => AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello).await,
            }
        };
        let mut connection = match tokio::time::timeout_at(deadline, greeting).await {
            Ok(Ok(connection)) => connection,
            // A port that accepts and never speaks reads like one that is closed.
            Err(_) => {
                self.unreachable("no greeting in time");
                return None;
            }
            Ok(Err(error)) => {
                self.record(
                    "connect",
                    true,
                    format!("connected to {}", self.destination()),
                );
                let step = if target.security == Security::Implicit && tls_cause(&error).is_some() {
                    "tls"
                } else {
                    "ehlo"
                };
                self.record(step, false, describe(&error));
                return None;
            }
        };
        self.record(
            "connect",
            true,
            format!("connected to {}", self.destination()),
        );
        if target.security == Security::Implicit {
            self.record("tls", true, "TLS from the first byte");
        }
        self.record("ehlo", true, connection.server_info().to_string());
        let wants_starttls = match target.security {
            Security::Required => true,
            Security::Opportunistic => connection.can_starttls(),
            Security::None | Security::Implicit => false,
        };
        if wants_starttls {
            let upgraded = match self.tls_parameters() {
                Ok(parameters) => connection.starttls(parameters, &hello).await,
                Err(error) => Err(error),
            };
            match upgraded {
                Ok(()) => self.record("tls", true, "STARTTLS"),
                Err(error) => {
                    self.record("tls", false, describe(&error));
                    connection.abort().await;
                    return None;
                }
            }
        }
        if let Some((user, pass)) = &target.credentials {
            // A password never travels in clear, whatever the settings say; loopback
            // never leaves the machine.
            if !connection.is_encrypted() && !peer.ip().to_canonical().is_loopback() {
                self.record(
                    "auth",
                    false,
                    "not sent: the connection is not encrypted (the server offered no STARTTLS), \
                     and a password is never sent in clear",
                );
                connection.abort().await;
                return None;
            }
            let credentials = Credentials::new(user.clone(), pass.clone());
            match connection
                .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .await
            {
                Ok(response) => self.record("auth", true, reply_text(&response)),
                Err(error) => {
                    self.record("auth", false, describe(&error));
                    connection.abort().await;
                    return None;
                }
            }
        }
        Some(connection)
    }
}

fn reply_text(response: &lettre::transport::smtp::response::Response) -> String {
    let lines: Vec<&str> = response.message().collect();
    escape_controls(&format!("{} {}", response.code(), lines.join(" ")))
}

/// A failed step in words that carry nothing but SMTP replies: a negative reply as
/// parsed (code and text), the TLS library's account of a failed handshake, our own
/// client's complaint — and for anything else a server sent, [`NOT_SMTP`], never its bytes.
fn describe(error: &lettre::transport::smtp::Error) -> String {
    if error.status().is_some() {
        // "permanent error (550): …" — `classify_text` reads the severity from it.
        return escape_controls(&error.to_string());
    }
    if error.is_response() {
        // Whatever could not be parsed as a reply: another protocol's banner, say.
        return NOT_SMTP.to_string();
    }
    if let Some(cause) = tls_cause(error) {
        return escape_controls(&format!("TLS failed: {cause}"));
    }
    if error.is_client() {
        return escape_controls(&error.to_string());
    }
    if error.is_timeout() {
        return "the server stopped answering".to_string();
    }
    "the server closed the connection".to_string()
}

/// The TLS library's words when a handshake failed (rustls reports through an I/O error
/// of kind `InvalidData`).
fn tls_cause(error: &lettre::transport::smtp::Error) -> Option<String> {
    if error.is_tls() {
        return Some(error.to_string());
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return Some(io.to_string());
        }
        source = cause.source();
    }
    None
}

/// Runs the conversation up to authentication and quits: the settings test. The whole
/// conversation has the target's time limit: a server that greets and then falls silent
/// cannot hold the request (nor its connection) open.
pub async fn probe(target: &SmtpTarget) -> Vec<Step> {
    let mut conversation = Conversation::new(target);
    let timeout = target.limits.timeout;
    let finished = tokio::time::timeout(timeout, async {
        if let Some(mut connection) = conversation.open().await {
            let _ = connection.quit().await;
        }
    })
    .await;
    if finished.is_err() {
        conversation.record(
            "timeout",
            false,
            format!("the server stopped answering; gave up after {timeout:?}"),
        );
    }
    conversation.steps
}

/// Delivers one message; answers the server's reply, or why it failed.
pub async fn deliver(
    transport: &Transport,
    message_id: &str,
    envelope: &Envelope,
    bytes: &[u8],
) -> Result<String, Failure> {
    match transport {
        Transport::Files(dir) => write_file(dir, message_id, bytes)
            .await
            .map(|path| format!("written to {}", path.display()))
            .map_err(|error| Failure::Temporary(format!("cannot write the message: {error:#}"))),
        Transport::Smtp(target) => {
            let delivery = async {
                let mut conversation = Conversation::new(target);
                let Some(mut connection) = conversation.open().await else {
                    let last = conversation
                        .steps
                        .last()
                        .map(|s| (s.step, s.detail.clone()));
                    let (step, detail) = last.unwrap_or(("connect", "no connection".to_string()));
                    if conversation.refused {
                        return Err(Failure::Permanent(format!("{step}: {detail}")));
                    }
                    return Err(classify_text(step, &detail));
                };
                let sent = connection.send(envelope, bytes).await;
                let _ = connection.quit().await;
                match sent {
                    Ok(response) => {
                        let reply = reply_text(&response);
                        conversation.record("send", true, reply.clone());
                        Ok(reply)
                    }
                    Err(error) => {
                        conversation.record("send", false, describe(&error));
                        Err(classify(&error))
                    }
                }
            };
            let timeout = target.limits.timeout;
            match tokio::time::timeout(timeout, delivery).await {
                Ok(result) => result,
                Err(_) => Err(Failure::Temporary(format!(
                    "the SMTP conversation with {}:{} took longer than {timeout:?}",
                    target.host, target.port
                ))),
            }
        }
    }
}

fn classify(error: &lettre::transport::smtp::Error) -> Failure {
    if error.is_permanent() {
        Failure::Permanent(describe(error))
    } else {
        Failure::Temporary(describe(error))
    }
}

/// A failed step as recorded: a 5xx reply is permanent, anything else may pass later.
fn classify_text(step: &str, detail: &str) -> Failure {
    let text = format!("{step}: {detail}");
    if detail.starts_with("permanent error") {
        Failure::Permanent(text)
    } else {
        Failure::Temporary(text)
    }
}

async fn write_file(
    dir: &std::path::Path,
    message_id: &str,
    bytes: &[u8],
) -> anyhow::Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await?;
    let name: String = message_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let path = dir.join(format!("{name}.eml"));
    let partial = dir.join(format!(".{name}.eml.partial"));
    // Mail carries links and codes: readable by mailroom's user only, whatever the umask.
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&partial).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    tokio::fs::rename(&partial, &path).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_relay_urls_are_understood() {
        let timeout = Limits {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            policy: None,
        };
        let plain =
            SmtpTarget::from_url("smtp://relay.example:2525?tls=none", timeout.clone()).unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.security),
            ("relay.example", 2525, Security::None)
        );
        assert!(plain.credentials.is_none());
        let submission =
            SmtpTarget::from_url("smtp://u%40x:p%2Fw@relay.example", timeout.clone()).unwrap();
        assert_eq!(
            (submission.port, submission.security),
            (587, Security::Required)
        );
        assert_eq!(
            submission.credentials,
            Some(("u@x".to_string(), "p/w".to_string()))
        );
        let implicit = SmtpTarget::from_url("smtps://relay.example", timeout.clone()).unwrap();
        assert_eq!(
            (implicit.port, implicit.security),
            (465, Security::Implicit)
        );
        assert!(SmtpTarget::from_url("http://relay.example", timeout.clone()).is_err());
        assert!(SmtpTarget::from_url("smtp://relay.example?tls=maybe", timeout).is_err());
    }
}
