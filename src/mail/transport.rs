//! Where a message goes: an SMTP relay (a domain's own, or the system's), or `.eml` files.
//! The SMTP conversation runs step by step so that a failure says which step failed and
//! what the server answered.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use serde::Serialize;
use utoipa::ToSchema;

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
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "smtp {}:{}", self.host, self.port)
    }
}

impl SmtpTarget {
    /// `smtp://[user:pass@]host[:port][?tls=starttls|none]` (STARTTLS required by
    /// default, port 587) or `smtps://[user:pass@]host[:port]` (implicit TLS, port 465).
    pub fn from_url(url: &str, timeout: Duration) -> anyhow::Result<SmtpTarget> {
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
            timeout,
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
    /// Not worth another try: a 5xx reply.
    Permanent(String),
}

/// One step of an SMTP conversation, as reported by the settings test.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Step {
    /// `connect`, `tls`, `ehlo`, `auth` or `send`.
    pub step: &'static str,
    pub ok: bool,
    /// What happened, in the server's own words where it answered.
    pub detail: String,
}

struct Conversation<'a> {
    target: &'a SmtpTarget,
    steps: Vec<Step>,
}

impl Conversation<'_> {
    fn record(&mut self, step: &'static str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
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

    /// Connects, secures and authenticates; `None` when a step failed (recorded).
    async fn open(&mut self) -> Option<AsyncSmtpConnection> {
        let target = self.target;
        let address = (target.host.as_str(), target.port);
        let stream =
            match tokio::time::timeout(target.timeout, tokio::net::TcpStream::connect(address))
                .await
            {
                Ok(Ok(stream)) => {
                    // SMTP writes small commands and waits for each reply: without this, Nagle's
                    // algorithm and delayed ACKs hold many of them back for 40 ms.
                    let _ = stream.set_nodelay(true);
                    self.record(
                        "connect",
                        true,
                        format!("connected to {}:{}", target.host, target.port),
                    );
                    stream
                }
                Ok(Err(error)) => {
                    self.record(
                        "connect",
                        false,
                        format!("cannot connect to {}:{}: {error}", target.host, target.port),
                    );
                    return None;
                }
                Err(_) => {
                    self.record(
                        "connect",
                        false,
                        format!(
                            "no connection to {}:{} within {:?}",
                            target.host, target.port, target.timeout
                        ),
                    );
                    return None;
                }
            };
        let implicit = match target.security {
            Security::Implicit => match self.tls_parameters() {
                Ok(parameters) => Some(parameters),
                Err(error) => {
                    self.record("tls", false, error.to_string());
                    return None;
                }
            },
            _ => None,
        };
        let hello = ClientId::default();
        // lettre bounds the TCP connect only: a server that accepts and never greets
        // must not hold the conversation (or the settings test) forever.
        let greeting = async {
            match implicit {
                // TLS comes before the greeting, so lettre makes this connection itself.
                Some(parameters) => {
                    drop(stream);
                    AsyncSmtpConnection::connect_tokio1(
                        address,
                        Some(target.timeout),
                        &hello,
                        Some(parameters),
                        None,
                    )
                    .await
                }
                None => AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello).await,
            }
        };
        let connected = tokio::time::timeout(target.timeout, greeting).await;
        let mut connection = match connected {
            Ok(Ok(connection)) => connection,
            Err(_) => {
                self.record(
                    "ehlo",
                    false,
                    format!("no greeting within {:?}", target.timeout),
                );
                return None;
            }
            Ok(Err(error)) => {
                let step = if error.is_tls() { "tls" } else { "ehlo" };
                self.record(step, false, error.to_string());
                return None;
            }
        };
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
                    self.record("tls", false, error.to_string());
                    connection.abort().await;
                    return None;
                }
            }
        }
        if let Some((user, pass)) = &target.credentials {
            let credentials = Credentials::new(user.clone(), pass.clone());
            match connection
                .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .await
            {
                Ok(response) => self.record("auth", true, reply_text(&response)),
                Err(error) => {
                    self.record("auth", false, error.to_string());
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
    format!("{} {}", response.code(), lines.join(" "))
}

/// Runs the conversation up to authentication and quits: the settings test.
pub async fn probe(target: &SmtpTarget) -> Vec<Step> {
    let mut conversation = Conversation {
        target,
        steps: Vec::new(),
    };
    if let Some(mut connection) = conversation.open().await {
        let _ = connection.quit().await;
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
                let mut conversation = Conversation {
                    target,
                    steps: Vec::new(),
                };
                let Some(mut connection) = conversation.open().await else {
                    let last = conversation
                        .steps
                        .last()
                        .map(|s| (s.step, s.detail.clone()));
                    let (step, detail) = last.unwrap_or(("connect", "no connection".to_string()));
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
                        conversation.record("send", false, error.to_string());
                        Err(classify(&error))
                    }
                }
            };
            match tokio::time::timeout(target.timeout, delivery).await {
                Ok(result) => result,
                Err(_) => Err(Failure::Temporary(format!(
                    "the SMTP conversation with {}:{} took longer than {:?}",
                    target.host, target.port, target.timeout
                ))),
            }
        }
    }
}

fn classify(error: &lettre::transport::smtp::Error) -> Failure {
    if error.is_permanent() {
        Failure::Permanent(error.to_string())
    } else {
        Failure::Temporary(error.to_string())
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
    tokio::fs::write(&partial, bytes).await?;
    tokio::fs::rename(&partial, &path).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_relay_urls_are_understood() {
        let timeout = Duration::from_secs(5);
        let plain = SmtpTarget::from_url("smtp://relay.example:2525?tls=none", timeout).unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.security),
            ("relay.example", 2525, Security::None)
        );
        assert!(plain.credentials.is_none());
        let submission = SmtpTarget::from_url("smtp://u%40x:p%2Fw@relay.example", timeout).unwrap();
        assert_eq!(
            (submission.port, submission.security),
            (587, Security::Required)
        );
        assert_eq!(
            submission.credentials,
            Some(("u@x".to_string(), "p/w".to_string()))
        );
        let implicit = SmtpTarget::from_url("smtps://relay.example", timeout).unwrap();
        assert_eq!(
            (implicit.port, implicit.security),
            (465, Security::Implicit)
        );
        assert!(SmtpTarget::from_url("http://relay.example", timeout).is_err());
        assert!(SmtpTarget::from_url("smtp://relay.example?tls=maybe", timeout).is_err());
    }
}
