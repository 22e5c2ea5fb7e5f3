//! Where a message goes: an SMTP relay (a domain's own, or the system's), or `.eml` files.
//! The SMTP conversation runs step by step so that a failure says which step failed and
//! what the server answered — in SMTP replies only: whatever else a server sends (another
//! protocol's banner) is reported as "not an SMTP server", and a closed, filtered or silent
//! port alike as "could not connect", so that a tenant's settings test is no port scanner.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::Ehlo;
use lettre::transport::smtp::extension::ClientId;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::{CertificateError, RootCertStore};
use serde::Serialize;
use utoipa::ToSchema;

use super::destination::{self, ConnectError, Policy};
use super::pool::{self, Key, Pool, Session};
use crate::config::Settings;
use crate::types::text::escape_controls;
use crate::types::{DomainName, HelloName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    pub trust: Trust,
    pub credentials: Option<(String, String)>,
    /// Log the dialogue (never the credentials).
    pub debug: bool,
    pub limits: Limits,
}

/// Which certificates a relay may present.
#[derive(Clone)]
pub enum Trust {
    /// Any certificate, as nodemailer's `rejectUnauthorized: false` means: whatever its
    /// authority, names or dates. The connection is still encrypted, to whoever answers.
    Any,
    /// A certificate for the relay's name, valid now, that chains to one of these
    /// authorities.
    Authorities(Arc<Authorities>),
}

pub struct Authorities {
    roots: RootCertStore,
    /// The certificates of the operator's file, each trusted as it is when a relay
    /// presents it: `openssl req -x509` marks a self-signed certificate as an authority,
    /// which webpki refuses to see serve as a server's own.
    listed: Vec<CertificateDer<'static>>,
}

impl Trust {
    /// The system's authorities, read once.
    pub fn system() -> Trust {
        static SYSTEM: OnceLock<Arc<Authorities>> = OnceLock::new();
        let roots = SYSTEM.get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "cannot read a system certificate authority");
            }
            roots.add_parsable_certificates(found.certs);
            Arc::new(Authorities {
                roots,
                listed: Vec::new(),
            })
        });
        Trust::Authorities(roots.clone())
    }

    /// The system's authorities and those of a PEM file.
    pub fn with_file(path: &Path) -> anyhow::Result<Trust> {
        let shown = path.display();
        let pem = std::fs::read(path).with_context(|| format!("cannot read {shown}"))?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{shown} is not a PEM file of certificates"))?;
        if certificates.is_empty() {
            anyhow::bail!("{shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
        }
        let Trust::Authorities(system) = Trust::system() else {
            unreachable!("the system's authorities are authorities")
        };
        let mut roots = system.roots.clone();
        for certificate in &certificates {
            roots
                .add(certificate.clone())
                .with_context(|| format!("{shown} holds a certificate that cannot be used"))?;
        }
        Ok(Trust::Authorities(Arc::new(Authorities {
            roots,
            listed: certificates,
        })))
    }

    /// Which certificates it accepts, as a digest: `None` for any. The system's
    /// authorities are the same for the whole process; only the file's differ.
    pub(super) fn digest(&self) -> Option<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let Trust::Authorities(authorities) = self else {
            return None;
        };
        let mut digest = Sha256::new();
        for certificate in &authorities.listed {
            digest.update((certificate.len() as u64).to_be_bytes());
            digest.update(certificate.as_ref());
        }
        Some(digest.finalize().into())
    }
}

/// How a conversation goes: the name mailroom gives, its time limits and, for a tenant's
/// relay, where it may connect.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The name given in EHLO.
    pub hello: ClientId,
    /// The whole conversation of a settings test; a delivery's transaction, from when its
    /// connection is ready.
    pub timeout: Duration,
    /// The connection and the server's greeting (TLS included on port 465): a server that
    /// accepts and never speaks gives up its slot this soon. STARTTLS and AUTH get as long
    /// again.
    pub connect_timeout: Duration,
    /// Where a tenant's relay may connect; `None` for the operator's own relay.
    pub policy: Option<Arc<Policy>>,
}

impl Limits {
    /// The operator's relay (`MAILROOM_SMTP_URL`): it goes wherever the operator says.
    pub fn system(settings: &Settings) -> Limits {
        Limits {
            hello: hello_name(settings),
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

/// `MAILROOM_EHLO_NAME`, else the host of `MAILROOM_PUBLIC_URL`, else the machine's name.
fn hello_name(settings: &Settings) -> ClientId {
    let public_host = settings
        .public_url
        .as_deref()
        .and_then(|url| url::Url::parse(url).ok())
        .and_then(|url| url.host_str().map(str::to_string))
        .and_then(|host| HelloName::parse(host.trim_start_matches('[').trim_end_matches(']')).ok());
    let name = settings.ehlo_name.clone().or(public_host);
    match name {
        Some(HelloName::Domain(name)) => ClientId::Domain(name.to_string()),
        Some(HelloName::Address(std::net::IpAddr::V4(address))) => ClientId::Ipv4(address),
        Some(HelloName::Address(std::net::IpAddr::V6(address))) => ClientId::Ipv6(address),
        None => machine_name(),
    }
}

/// The machine's fully qualified name: its host name, with the resolver's domain when
/// the host name has no dot. Found once.
fn machine_name() -> ClientId {
    static NAME: OnceLock<ClientId> = OnceLock::new();
    NAME.get_or_init(find_machine_name).clone()
}

fn find_machine_name() -> ClientId {
    let host = ClientId::default();
    let ClientId::Domain(short) = &host else {
        return host;
    };
    if short.contains('.') {
        return host;
    }
    let domain = hickory_resolver::system_conf::read_system_conf()
        .ok()
        .and_then(|(config, _)| config.domain().map(|d| d.to_ascii()))
        .map(|d| d.trim_end_matches('.').to_string());
    match domain.and_then(|d| DomainName::parse(&format!("{short}.{d}")).ok()) {
        Some(full) => ClientId::Domain(full.to_string()),
        None => host,
    }
}

impl std::fmt::Debug for SmtpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "smtp {}:{}", self.host, self.port)
    }
}

impl SmtpTarget {
    /// The system relay of the settings, its URL read with `MAILROOM_SMTP_CA_FILE`; `None`
    /// without a URL.
    pub fn system(settings: &Settings) -> anyhow::Result<Option<SmtpTarget>> {
        let Some(url) = &settings.smtp_url else {
            return Ok(None);
        };
        let mut target = SmtpTarget::from_url(url.expose(), Limits::system(settings))?;
        if let Some(path) = &settings.smtp_ca_file {
            let trust = Trust::with_file(path).context("MAILROOM_SMTP_CA_FILE")?;
            if matches!(target.trust, Trust::Authorities(_)) {
                target.trust = trust;
            }
        }
        Ok(Some(target))
    }

    /// `smtp://[user:pass@]host[:port][?tls=starttls|none]` (STARTTLS required by
    /// default, port 587) or `smtps://[user:pass@]host[:port]` (implicit TLS, port 465);
    /// `verify=false` (with `&` or `?`) accepts any certificate. The operator's relay:
    /// `limits` has no policy.
    pub fn from_url(url: &str, limits: Limits) -> anyhow::Result<SmtpTarget> {
        let parsed = url::Url::parse(url).context("MAILROOM_SMTP_URL is not a URL")?;
        let query = |key: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        // A misspelt option would silently do nothing: none is ignored.
        if let Some((key, _)) = parsed
            .query_pairs()
            .find(|(k, _)| k != "tls" && k != "verify")
        {
            anyhow::bail!("MAILROOM_SMTP_URL: unknown option `{key}` (known: tls, verify)");
        }
        let trust = match query("verify").as_deref() {
            None | Some("true") => Trust::system(),
            Some("false") => Trust::Any,
            Some(other) => {
                anyhow::bail!("MAILROOM_SMTP_URL: verify must be true or false, not {other}")
            }
        };
        let (security, default_port) = match parsed.scheme() {
            "smtps" => (Security::Implicit, 465),
            "smtp" => match query("tls") {
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
            trust,
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

    /// Where the mail went, as tenants read it in their emails' events: the server's
    /// directories are not theirs to see.
    pub fn describe_to_tenants(&self) -> String {
        match self {
            Transport::Files(_) => "file".to_string(),
            Transport::Smtp(_) => self.describe(),
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
    /// The connection opened offers PIPELINING, as far as mailroom could read.
    pipelining: bool,
    /// Set when a write to the connection opened failed, where mailroom sees its writes.
    write_failed: Option<Arc<AtomicBool>>,
}

/// What a probe or a delivery says of a server that answered something other than SMTP.
const NOT_SMTP: &str = "not an SMTP server";

impl Conversation<'_> {
    fn new(target: &SmtpTarget) -> Conversation<'_> {
        Conversation {
            target,
            steps: Vec::new(),
            refused: false,
            pipelining: false,
            write_failed: None,
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

    /// The handshake accepts any certificate (its signatures still verified, so the server
    /// holds the certificate's key): lettre takes no verifier of ours, and mailroom judges
    /// the certificate itself right after, before anything but EHLO is said, so that a
    /// refusal can say why.
    fn tls_parameters(&self) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        TlsParameters::builder(self.target.host.clone())
            .certificate_store(CertificateStore::None)
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true)
            .build_rustls()
    }

    /// Whether the server's certificate is one the target trusts; else why not.
    fn judge_certificate(&self, connection: &AsyncSmtpConnection) -> Result<(), String> {
        let Trust::Authorities(authorities) = &self.target.trust else {
            return Ok(());
        };
        let chain: Vec<CertificateDer<'static>> = connection
            .certificate_chain()
            .map_err(|_| "the server presented no certificate".to_string())?
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        match untrusted(&chain, &self.target.host, authorities, UnixTime::now()) {
            None => Ok(()),
            Some(causes) => Err(format!("the certificate is not trusted: {causes}")),
        }
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
            Ok(Err(ConnectError::NoAddress(cause) | ConnectError::Unreachable(cause))) => {
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
        let hello = target.limits.hello.clone();
        let greeting = async {
            match target.security {
                // TLS comes before the greeting, so lettre makes this connection itself:
                // to the address just checked, never to the name again.
                Security::Implicit => {
                    let parameters = self.tls_parameters()?;
                    drop(stream);
                    let connection = AsyncSmtpConnection::connect_tokio1(
                        peer,
                        None,
                        &hello,
                        Some(parameters),
                        None,
                    )
                    .await?;
                    Ok((connection, None))
                }
                _ => {
                    let (stream, heard, write_failed) = Overheard::new(stream);
                    self.write_failed = Some(write_failed);
                    let connection =
                        AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
                            .await?;
                    Ok((
                        connection,
                        heard.lock().unwrap_or_else(|e| e.into_inner()).take(),
                    ))
                }
            }
        };
        let (mut connection, heard) = match tokio::time::timeout_at(deadline, greeting).await {
            Ok(Ok(opened)) => opened,
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
            if let Err(why) = self.judge_certificate(&connection) {
                self.record("tls", false, why);
                connection.abort().await;
                return None;
            }
            self.record("tls", true, "TLS from the first byte");
        }
        self.record("ehlo", true, connection.server_info().to_string());
        // STARTTLS and AUTH (and the EHLO between) get as long again: a connection is
        // ready, or given up, within twice `connect_timeout`.
        let deadline = tokio::time::Instant::now() + target.limits.connect_timeout;
        match tokio::time::timeout_at(deadline, self.secure(connection, peer, heard)).await {
            Ok(ready) => ready,
            Err(_) => {
                self.record(
                    "timeout",
                    false,
                    "the server stopped answering before the connection was ready",
                );
                None
            }
        }
    }

    /// STARTTLS when wanted, the EHLO that tells PIPELINING inside TLS, and AUTH.
    async fn secure(
        &mut self,
        mut connection: AsyncSmtpConnection,
        peer: std::net::SocketAddr,
        heard: Option<Vec<u8>>,
    ) -> Option<AsyncSmtpConnection> {
        let target = self.target;
        let hello = target.limits.hello.clone();
        let offered_in_clear = heard.is_some_and(|heard| offers_pipelining(&heard));
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
            let judged = match upgraded {
                Ok(()) => self.judge_certificate(&connection),
                Err(error) => Err(describe(&error)),
            };
            match judged {
                Ok(()) => self.record("tls", true, "STARTTLS"),
                Err(why) => {
                    self.record("tls", false, why);
                    connection.abort().await;
                    return None;
                }
            }
        }
        self.pipelining = match target.security {
            _ if !connection.is_encrypted() => offered_in_clear,
            // After STARTTLS, what the server said before it is forgotten (RFC 3207 §4.2),
            // and lettre, which read its reply to EHLO inside TLS, keeps no PIPELINING of
            // it: one EHLO more asks. Only where the server offered it in clear — one that
            // did not is not asked again, for a round trip per connection.
            Security::Required | Security::Opportunistic if !offered_in_clear => false,
            _ => match connection.command(Ehlo::new(hello.clone())).await {
                Ok(reply) => reply.message().any(names_pipelining),
                Err(error) => {
                    self.record("ehlo", false, describe_broken(&error));
                    connection.abort().await;
                    return None;
                }
            },
        };
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

/// A plain connection, and what the server says on it (its greeting and its reply to
/// EHLO) until the shared record is taken: lettre reads the EHLO reply but keeps only the
/// extensions it knows, and PIPELINING is not one of them.
#[derive(Debug)]
struct Overheard {
    stream: tokio::net::TcpStream,
    heard: Heard,
    /// Set when a write fails.
    write_failed: Arc<AtomicBool>,
}

/// What is kept of what a server says before EHLO is answered; more is not a reply
/// lettre takes anyway.
const OVERHEARD_BYTES: usize = 16 * 1024;

impl Overheard {
    fn new(stream: tokio::net::TcpStream) -> (Overheard, Heard, Arc<AtomicBool>) {
        let heard = Arc::new(Mutex::new(Some(Vec::new())));
        let write_failed = Arc::new(AtomicBool::new(false));
        let overheard = Overheard {
            stream,
            heard: heard.clone(),
            write_failed: write_failed.clone(),
        };
        (overheard, heard, write_failed)
    }

    /// Notes a failed write.
    fn watch<T>(&self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(_)) = &polled {
            self.write_failed.store(true, Ordering::Relaxed);
        }
        polled
    }
}

/// What a server said up to its EHLO reply, until taken.
type Heard = Arc<Mutex<Option<Vec<u8>>>>;

impl tokio::io::AsyncRead for Overheard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(heard) = heard.as_mut() {
                let new = &buf.filled()[before..];
                let room = OVERHEARD_BYTES.saturating_sub(heard.len());
                heard.extend_from_slice(&new[..new.len().min(room)]);
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Overheard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(polled)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Overheard {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

/// Whether a server's words up to its EHLO reply offer PIPELINING (a `250` line whose
/// keyword it is).
fn offers_pipelining(heard: &[u8]) -> bool {
    String::from_utf8_lossy(heard).split("\r\n").any(|line| {
        match (line.get(..3), line.get(3..4), line.get(4..)) {
            (Some("250"), Some("-" | " "), Some(rest)) => names_pipelining(rest),
            _ => false,
        }
    })
}

/// Whether a line of an EHLO reply (its text after the code) is the PIPELINING keyword.
fn names_pipelining(line: &str) -> bool {
    line.split_whitespace()
        .next()
        .is_some_and(|word| word.eq_ignore_ascii_case("PIPELINING"))
}

/// What is wrong with a server's certificate chain (its own certificate first) for
/// `host`, in words a user reads; `None` when nothing is.
fn untrusted(
    chain: &[CertificateDer<'_>],
    host: &str,
    authorities: &Authorities,
    now: UnixTime,
) -> Option<String> {
    let Some((own, intermediates)) = chain.split_first() else {
        return Some("the server presented no certificate".to_string());
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(own) else {
        return Some("the server's certificate cannot be read".to_string());
    };
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let chained = match rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &authorities.roots,
        intermediates,
        now,
        algorithms.all,
    ) {
        // Dates are checked before the authority: a listed certificate out of date
        // still says so.
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::Other(_),
        )) if authorities.listed.contains(own) => Ok(()),
        judged => judged,
    };
    let named = match ServerName::try_from(host) {
        Ok(name) => rustls::client::verify_server_name(&parsed, &name),
        Err(_) => Err(CertificateError::NotValidForName.into()),
    };
    let self_signed = webpki::EndEntityCert::try_from(own)
        .is_ok_and(|certificate| certificate.issuer() == certificate.subject());
    let mut causes = Vec::new();
    if let Err(error) = chained {
        causes.push(match error {
            rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
                not_after,
                ..
            }) => format!("it expired on {}", day(not_after)),
            rustls::Error::InvalidCertificate(CertificateError::Expired) => {
                "it has expired".to_string()
            }
            rustls::Error::InvalidCertificate(CertificateError::NotValidYetContext {
                not_before,
                ..
            }) => format!("it is not valid before {}", day(not_before)),
            rustls::Error::InvalidCertificate(CertificateError::NotValidYet) => {
                "it is not valid yet".to_string()
            }
            // A self-signed certificate has no authority but itself: webpki says "unknown
            // issuer", or "CA used as end entity" when it is marked as an authority.
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::Other(_),
            ) if self_signed => "it is self-signed".to_string(),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "it is signed by an authority that is not trusted".to_string()
            }
            other => format!("it is not valid ({other})"),
        });
    }
    if let Err(error) = named {
        let issued_for = match error {
            rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented,
                ..
            }) if !presented.is_empty() => {
                const SHOWN: usize = 5;
                let mut names = presented
                    .iter()
                    .take(SHOWN)
                    .map(|name| shown_name(name))
                    .collect::<Vec<_>>();
                if presented.len() > SHOWN {
                    names.push(format!("{} more", presented.len() - SHOWN));
                }
                format!("it is issued for {}, not for {host}", names.join(", "))
            }
            _ => format!("it is not issued for {host}"),
        };
        causes.push(issued_for);
    }
    (!causes.is_empty()).then(|| causes.join("; "))
}

/// A name a certificate presents, as webpki gives it (`DnsName("mx.example")`,
/// `IpAddress(192.0.2.1)`), the way a user writes it.
fn shown_name(presented: &str) -> String {
    let bare = presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        })
        .unwrap_or(presented);
    bare.chars().take(253).collect()
}

/// A certificate's date, as a user reads it.
fn day(time: UnixTime) -> String {
    let seconds = i64::try_from(time.as_secs()).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(moment) => moment
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .unwrap_or_else(|_| seconds.to_string()),
        Err(_) => seconds.to_string(),
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

/// What came of one recipient in a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientReply {
    /// The server took the message for this recipient: its reply to the message.
    Sent(String),
    /// The server refused this recipient (its reply to `RCPT TO`), the others aside.
    Refused(Failure),
    /// The message or the connection failed, for every recipient alike.
    Failed(Failure),
}

/// Delivers one message to several recipients in one SMTP transaction (one `MAIL FROM`,
/// a `RCPT TO` each, one `DATA`), reading each recipient's reply on its own, so that one
/// refused recipient does not hold back the others. Answers a reply per recipient, in
/// their order.
///
/// Over SMTP, the connection comes from `pool` when one of `owner`'s to the same relay is
/// kept there, and goes back to it when the transaction left it in a known state. It takes
/// at most [`longest_conversation`].
pub async fn deliver_each(
    transport: &Transport,
    pool: &Pool,
    owner: Option<&str>,
    message_id: &str,
    from: &lettre::Address,
    recipients: &[lettre::Address],
    bytes: &[u8],
) -> Vec<RecipientReply> {
    let all = |reply: RecipientReply| vec![reply; recipients.len()];
    match transport {
        Transport::Files(dir) => match write_file(dir, message_id, bytes).await {
            // The file's name only: the reply is shown to tenants, the server's paths are not
            // theirs to see.
            Ok(path) => all(RecipientReply::Sent(format!(
                "written to {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ))),
            Err(error) => all(RecipientReply::Failed(Failure::Temporary(format!(
                "cannot write the message: {error:#}"
            )))),
        },
        Transport::Smtp(target) => {
            let mut replies = all(RecipientReply::Failed(Failure::Temporary(
                "no SMTP conversation".to_string(),
            )));
            converse(target, pool, owner, from, recipients, bytes, &mut replies).await;
            replies
        }
    }
}

/// How long a kept connection may take to answer `RSET`: a live relay answers at once, and
/// a connection that went quiet while it was kept must not cost a message its time.
fn rset_timeout(limits: &Limits) -> Duration {
    limits.connect_timeout.min(Duration::from_secs(5))
}

/// The longest a delivery's conversation takes: kept connections tried with `RSET`, or a
/// new one opened (its connection and greeting, then TLS and AUTH, each within
/// `connect_timeout`), then the transaction, which has the whole `timeout` of its own.
pub fn longest_conversation(limits: &Limits) -> Duration {
    rset_timeout(limits) + limits.connect_timeout * 2 + limits.timeout
}

/// What a transaction leaves its connection fit for.
enum After {
    /// Another transaction: every reply was read, and the next use begins with RSET.
    Keep,
    /// Nothing more: it broke, the server is closing it (`421`), or its replies no longer
    /// match the commands.
    Close,
}

impl After {
    fn when(goes_on: bool) -> After {
        match goes_on {
            true => After::Keep,
            false => After::Close,
        }
    }
}

/// The reply a command takes.
#[derive(Clone, Copy)]
enum Wanted {
    /// `2xx`: RSET, MAIL FROM, RCPT TO and the message's end.
    Done,
    /// Exactly `354`: DATA.
    GoAhead,
}

/// What a command got back.
enum Answer {
    /// The reply it takes.
    Taken(lettre::transport::smtp::response::Response),
    /// A negative reply. After `421` the server closes the connection (RFC 5321 §3.8);
    /// after any other, it goes on.
    Refused(lettre::transport::smtp::Error),
    /// No reply (a broken connection), or a reply out of step: a positive one of another
    /// kind than the command takes (`354` to the message's end, `250` to DATA) says that
    /// the replies no longer match the commands — a relay that wrote one line too many —
    /// and none after it can be trusted.
    Broken(String),
}

impl Answer {
    fn of(
        result: Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error>,
        wanted: Wanted,
    ) -> Answer {
        match result {
            Ok(reply) => {
                let code = u16::from(reply.code());
                let fits = match wanted {
                    Wanted::Done => (200..300).contains(&code),
                    Wanted::GoAhead => code == 354,
                };
                match fits {
                    true => Answer::Taken(reply),
                    false => Answer::Broken(format!("an unexpected reply: {}", reply_text(&reply))),
                }
            }
            Err(error) if error.status().is_some() => Answer::Refused(error),
            Err(error) => Answer::Broken(describe_broken(&error)),
        }
    }

    fn taken(&self) -> bool {
        matches!(self, Answer::Taken(_))
    }

    /// Whether the connection serves on after it.
    fn goes_on(&self) -> bool {
        match self {
            Answer::Taken(_) => true,
            Answer::Refused(error) => answered(error),
            Answer::Broken(_) => false,
        }
    }

    fn detail(&self) -> String {
        match self {
            Answer::Taken(reply) => reply_text(reply),
            Answer::Refused(error) => describe(error),
            Answer::Broken(detail) => detail.clone(),
        }
    }

    /// Why `command` failed, for every recipient it concerned: the server's reply as
    /// `classify_at` reads it, or no reply that counts (worth another try).
    fn failure(&self, command: &str) -> Failure {
        match self {
            Answer::Refused(error) => classify_at(command, error),
            Answer::Taken(_) | Answer::Broken(_) => {
                Failure::Temporary(format!("{command}: {}", self.detail()))
            }
        }
    }
}

/// The pool's key for mail of `owner` through `target`: the owner, the relay, and a
/// digest of how the connection is made — so that no account's mail, nor mailroom's own,
/// rides a connection opened for another, or with other settings or credentials.
fn pool_key(owner: Option<&str>, target: &SmtpTarget) -> Key {
    use sha2::{Digest, Sha256};
    let mut how = Sha256::new();
    let field = |how: &mut Sha256, bytes: &[u8]| {
        how.update((bytes.len() as u64).to_be_bytes());
        how.update(bytes);
    };
    field(&mut how, format!("{:?}", target.security).as_bytes());
    field(
        &mut how,
        &target.trust.digest().map_or(Vec::new(), Vec::from),
    );
    match &target.credentials {
        Some((user, pass)) => {
            field(&mut how, user.as_bytes());
            field(&mut how, pass.as_bytes());
        }
        None => field(&mut how, b"no credentials"),
    }
    field(&mut how, target.limits.hello.to_string().as_bytes());
    field(&mut how, &[u8::from(target.limits.policy.is_some())]);
    Key {
        owner: owner.map(str::to_string),
        host: target.host.to_ascii_lowercase(),
        port: target.port,
        how: how.finalize().into(),
    }
}

/// The transaction of `deliver_each`: `replies` holds each recipient's outcome as it is
/// known, so that a timeout leaves the rest as they were set.
async fn converse(
    target: &SmtpTarget,
    pool: &Pool,
    owner: Option<&str>,
    from: &lettre::Address,
    recipients: &[lettre::Address],
    bytes: &[u8],
    replies: &mut [RecipientReply],
) {
    let key = pool_key(owner, target);
    let mut conversation = Conversation::new(target);
    let mut session = match reuse(pool, &key, &mut conversation).await {
        Some(session) => session,
        None => match conversation.open().await {
            Some(connection) => Session::new(
                connection,
                conversation.pipelining,
                conversation.write_failed.clone(),
            ),
            None => {
                let last = conversation
                    .steps
                    .last()
                    .map(|s| (s.step, s.detail.clone()));
                let (step, detail) = last.unwrap_or(("connect", "no connection".to_string()));
                let failure = match conversation.refused {
                    true => Failure::Permanent(format!("{step}: {detail}")),
                    false => classify_text(step, &detail),
                };
                fail_all(replies, failure);
                return;
            }
        },
    };
    // The transaction's time starts once the connection is ready: however long that took,
    // a slow reply to the message's end still has it all.
    let timeout = target.limits.timeout;
    fail_all(
        replies,
        Failure::Temporary(format!(
            "the SMTP conversation with {}:{} took longer than {timeout:?}",
            target.host, target.port
        )),
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let transaction = transact(
        &mut session,
        &mut conversation,
        from,
        recipients,
        bytes,
        replies,
        deadline,
    );
    match tokio::time::timeout_at(deadline, transaction).await {
        Ok(After::Keep) => {
            session.served();
            pool.keep(key, session);
        }
        Ok(After::Close) => pool::close(session),
        // In the middle of a command: what the server makes of anything more is unknown.
        Err(_) => drop(session),
    }
}

/// A kept connection of `key`, reset with `RSET` as Postfix does; one that refuses it or
/// breaks is closed and the next tried, then none. All share one short deadline: when it
/// passes, the key's other kept connections are closed too, untried. Nothing of the
/// message has been said on any of them yet: a fresh connection never sends anything
/// twice.
async fn reuse(pool: &Pool, key: &Key, conversation: &mut Conversation<'_>) -> Option<Session> {
    use lettre::transport::smtp::commands::Rset;

    let deadline = tokio::time::Instant::now() + rset_timeout(&conversation.target.limits);
    while let Some(mut session) = pool.take(key) {
        let reset = tokio::time::timeout_at(deadline, session.connection.command(Rset)).await;
        match reset.map(|reply| Answer::of(reply, Wanted::Done)) {
            Ok(Answer::Taken(_)) => {
                let detail = format!("reusing a connection to {}", conversation.destination());
                conversation.record("connect", true, detail);
                return Some(session);
            }
            Ok(answer) => {
                tracing::debug!(destination = %conversation.destination(), reply = %answer.detail(), "a kept SMTP connection did not take RSET");
                pool::close(session);
            }
            Err(_) => {
                tracing::debug!(destination = %conversation.destination(), "a kept SMTP connection did not answer RSET; the others kept for it are closed");
                drop(session);
                pool.close_key(key);
                return None;
            }
        }
    }
    None
}

fn fail_all(replies: &mut [RecipientReply], failure: Failure) {
    for reply in replies.iter_mut() {
        *reply = RecipientReply::Failed(failure.clone());
    }
}

/// Whether a failed command got a reply after which the connection goes on: any but
/// `421`, with which the server closes it (RFC 5321 §3.8), and unlike a broken connection
/// or words that are no reply.
fn answered(error: &lettre::transport::smtp::Error) -> bool {
    error.status().is_some_and(|code| u16::from(code) != 421)
}

/// A failed step in the middle of a conversation: a connection that ends without a reply
/// is said to be closed, not "not an SMTP server" (it greeted as one).
fn describe_broken(error: &lettre::transport::smtp::Error) -> String {
    if error.is_response() && error.to_string().ends_with("incomplete response") {
        return "the server closed the connection".to_string();
    }
    describe(error)
}

/// One transaction on an open connection: one command at a time, or all but the message
/// at once when the server offers PIPELINING. The message's end is answered by `deadline`,
/// or its outcome is unknown.
async fn transact(
    session: &mut Session,
    conversation: &mut Conversation<'_>,
    from: &lettre::Address,
    recipients: &[lettre::Address],
    bytes: &[u8],
    replies: &mut [RecipientReply],
    deadline: tokio::time::Instant,
) -> After {
    use lettre::transport::smtp::commands::Mail;
    use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};

    let connection = &mut session.connection;
    let info = connection.server_info();
    let mut options = Vec::new();
    let ascii = |address: &lettre::Address| AsRef::<str>::as_ref(address).is_ascii();
    let non_ascii = !ascii(from) || !recipients.iter().all(ascii);
    // Refused before a word of the transaction is said: the connection serves on.
    if non_ascii {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            let failure = Failure::Permanent(
                "send: the server does not take non-ASCII addresses (SMTPUTF8)".to_string(),
            );
            fail_all(replies, failure);
            return After::Keep;
        }
        options.push(MailParameter::SmtpUtfEight);
    }
    if !bytes.is_ascii() {
        if !info.supports_feature(Extension::EightBitMime) {
            let failure = Failure::Permanent(
                "send: the server does not take 8-bit messages (8BITMIME)".to_string(),
            );
            fail_all(replies, failure);
            return After::Keep;
        }
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let mail = Mail::new(Some(from.clone()), options);
    let message = Message { bytes, deadline };
    match session.pipelining {
        true => pipelined(session, conversation, mail, recipients, message, replies).await,
        false => stepwise(session, conversation, mail, recipients, message, replies).await,
    }
}

/// A message's bytes, and when the reply to its end must have come.
#[derive(Clone, Copy)]
struct Message<'a> {
    bytes: &'a [u8],
    deadline: tokio::time::Instant,
}

/// A command broke the transaction at recipient `index`: whoever has no final reply yet —
/// it, those after it, and those accepted (no message followed) — fails with `failure`.
fn broken_at(replies: &mut [RecipientReply], index: usize, accepted: &[usize], failure: Failure) {
    for reply in replies.iter_mut().skip(index) {
        *reply = RecipientReply::Failed(failure.clone());
    }
    for &index in accepted {
        replies[index] = RecipientReply::Failed(failure.clone());
    }
}

/// `MAIL FROM`, then each `RCPT TO`, then `DATA`, each after the reply to the one before.
async fn stepwise(
    session: &mut Session,
    conversation: &mut Conversation<'_>,
    mail: lettre::transport::smtp::commands::Mail,
    recipients: &[lettre::Address],
    message: Message<'_>,
    replies: &mut [RecipientReply],
) -> After {
    use lettre::transport::smtp::commands::{Data, Rcpt};

    let connection = &mut session.connection;
    let sender = Answer::of(connection.command(mail).await, Wanted::Done);
    if !sender.taken() {
        conversation.record("mail", false, sender.detail());
        fail_all(replies, sender.failure("MAIL FROM"));
        return After::when(sender.goes_on());
    }
    let mut accepted = Vec::new();
    for (index, recipient) in recipients.iter().enumerate() {
        let rcpt = Rcpt::new(recipient.clone(), vec![]);
        let answer = Answer::of(connection.command(rcpt).await, Wanted::Done);
        if answer.taken() {
            accepted.push(index);
            continue;
        }
        conversation.record("rcpt", false, answer.detail());
        if !answer.goes_on() {
            broken_at(replies, index, &accepted, answer.failure("RCPT TO"));
            return After::Close;
        }
        replies[index] = RecipientReply::Refused(answer.failure("RCPT TO"));
    }
    if accepted.is_empty() {
        return After::Keep;
    }
    let data = Answer::of(connection.command(Data).await, Wanted::GoAhead);
    send_message(session, conversation, data, &accepted, message, replies).await
}

/// RFC 2920: `MAIL FROM`, every `RCPT TO` and `DATA` written at once, then their replies
/// read in order — one round trip where there were as many as commands. Each recipient's
/// reply still counts on its own.
async fn pipelined(
    session: &mut Session,
    conversation: &mut Conversation<'_>,
    mail: lettre::transport::smtp::commands::Mail,
    recipients: &[lettre::Address],
    message: Message<'_>,
    replies: &mut [RecipientReply],
) -> After {
    use lettre::transport::smtp::commands::{Data, Rcpt};

    let mut commands = mail.to_string();
    for recipient in recipients {
        commands.push_str(&Rcpt::new(recipient.clone(), vec![]).to_string());
    }
    commands.push_str(&Data.to_string());
    let connection = &mut session.connection;
    // lettre writes the lot as one command and reads the first reply, MAIL FROM's.
    let sender = Answer::of(connection.command(commands).await, Wanted::Done);
    if !sender.goes_on() {
        conversation.record("mail", false, sender.detail());
        fail_all(replies, sender.failure("MAIL FROM"));
        return After::Close;
    }
    let mut accepted = Vec::new();
    for index in 0..recipients.len() {
        let answer = Answer::of(connection.read_response().await, Wanted::Done);
        if answer.taken() {
            accepted.push(index);
            continue;
        }
        conversation.record("rcpt", false, answer.detail());
        if !answer.goes_on() {
            broken_at(replies, index, &accepted, answer.failure("RCPT TO"));
            if !sender.taken() {
                fail_all(replies, sender.failure("MAIL FROM"));
            }
            return After::Close;
        }
        replies[index] = RecipientReply::Refused(answer.failure("RCPT TO"));
    }
    let data = Answer::of(connection.read_response().await, Wanted::GoAhead);
    if !sender.taken() {
        // The recipients' replies followed a refused sender (`503`s, say): none of them
        // counts.
        conversation.record("mail", false, sender.detail());
        fail_all(replies, sender.failure("MAIL FROM"));
        return end_without_message(session, data).await;
    }
    if accepted.is_empty() {
        return end_without_message(session, data).await;
    }
    send_message(session, conversation, data, &accepted, message, replies).await
}

/// After a pipelined `DATA` that must carry nothing (no recipient accepted): the server
/// refuses it, as RFC 2920 §3.1 asks (`554 no valid recipients`); one that invites the
/// message anyway gets it ended at once, empty.
async fn end_without_message(session: &mut Session, data: Answer) -> After {
    match data {
        Answer::Taken(_) => {
            let ended = session.connection.command(".\r\n").await;
            After::when(Answer::of(ended, Wanted::Done).goes_on())
        }
        refused => After::when(refused.goes_on()),
    }
}

/// The message, after the reply to `DATA`; its reply counts for every recipient
/// accepted.
async fn send_message(
    session: &mut Session,
    conversation: &mut Conversation<'_>,
    data: Answer,
    accepted: &[usize],
    message: Message<'_>,
    replies: &mut [RecipientReply],
) -> After {
    let fail = |replies: &mut [RecipientReply], failure: Failure| {
        for &index in accepted {
            replies[index] = RecipientReply::Failed(failure.clone());
        }
    };
    if !data.taken() {
        conversation.record("send", false, data.detail());
        fail(replies, data.failure("DATA"));
        return After::when(data.goes_on());
    }
    let sent = session.connection.message(message.bytes);
    let answer = match tokio::time::timeout_at(message.deadline, sent).await {
        Ok(result) => Answer::of(result, Wanted::Done),
        Err(_) => Answer::Broken("no reply to the message in time".to_string()),
    };
    let after = After::when(answer.goes_on());
    match answer {
        Answer::Taken(response) => {
            let reply = reply_text(&response);
            conversation.record("send", true, reply.clone());
            for &index in accepted {
                replies[index] = RecipientReply::Sent(reply.clone());
            }
        }
        Answer::Refused(_) => {
            conversation.record("send", false, answer.detail());
            fail(replies, answer.failure("DATA"));
        }
        // No reply after the message was written to its end: the server may have taken it
        // and failed to say so. Tried again, it may arrive twice (as with Postfix); the
        // detail says so.
        Answer::Broken(detail) => {
            let write_failed = session
                .write_failed
                .as_ref()
                .is_some_and(|failed| failed.load(Ordering::Relaxed));
            let detail = match write_failed {
                true => detail,
                false => {
                    tracing::warn!(destination = %conversation.destination(), %detail, "no reply to a message's end: it may be delivered more than once");
                    format!("{detail}; the message may have been delivered")
                }
            };
            conversation.record("send", false, detail.clone());
            fail(replies, Failure::Temporary(format!("DATA: {detail}")));
        }
    }
    after
}

/// A failed command's reply, prefixed with the command.
fn classify_at(command: &str, error: &lettre::transport::smtp::Error) -> Failure {
    match classify(error) {
        Failure::Permanent(detail) => Failure::Permanent(format!("{command}: {detail}")),
        Failure::Temporary(detail) => Failure::Temporary(format!("{command}: {detail}")),
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

    fn pooled(user: Option<(&str, &str)>, trust: Trust) -> SmtpTarget {
        SmtpTarget {
            host: "Relay.Example".to_string(),
            port: 587,
            security: Security::Required,
            trust,
            credentials: user.map(|(u, p)| (u.to_string(), p.to_string())),
            debug: false,
            limits: Limits {
                hello: ClientId::Domain("mx.mailroom.example".to_string()),
                timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(5),
                policy: None,
            },
        }
    }

    #[test]
    fn a_connection_is_shared_only_by_the_same_sender_and_relay_settings() {
        let alice = pooled(Some(("alice", "secret-one")), Trust::system());
        let key = pool_key(Some("acc_1"), &alice);
        assert!(key == pool_key(Some("acc_1"), &alice.clone()));
        assert!(key != pool_key(Some("acc_2"), &alice), "another account");
        assert!(key != pool_key(None, &alice), "mailroom's own mail");
        let other_password = pooled(Some(("alice", "secret-two")), Trust::system());
        assert!(key != pool_key(Some("acc_1"), &other_password));
        // The user's name and the password do not run into each other.
        let shifted = pooled(Some(("alicesecret-", "one")), Trust::system());
        assert!(key != pool_key(Some("acc_1"), &shifted));
        let anonymous = pooled(None, Trust::system());
        assert!(key != pool_key(Some("acc_1"), &anonymous));
        let any_certificate = pooled(Some(("alice", "secret-one")), Trust::Any);
        assert!(key != pool_key(Some("acc_1"), &any_certificate));
        for change in [
            |t: &mut SmtpTarget| t.port = 465,
            |t: &mut SmtpTarget| t.host = "other.example".into(),
            |t: &mut SmtpTarget| t.security = Security::Opportunistic,
            |t: &mut SmtpTarget| t.limits.hello = ClientId::Domain("other.example".to_string()),
        ] {
            let mut other = alice.clone();
            change(&mut other);
            assert!(key != pool_key(Some("acc_1"), &other));
        }
        let shown = format!("{key:?}");
        assert_eq!(shown, "acc_1 to relay.example:587");
        assert!(!shown.contains("secret"));
    }

    #[test]
    fn system_relay_urls_are_understood() {
        let timeout = Limits {
            hello: ClientId::Domain("mailroom.example".to_string()),
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
        assert!(matches!(implicit.trust, Trust::Authorities(_)));
        let unverified =
            SmtpTarget::from_url("smtps://relay.example?verify=false", timeout.clone()).unwrap();
        assert!(matches!(unverified.trust, Trust::Any));
        let both =
            SmtpTarget::from_url("smtp://relay.example?tls=none&verify=true", timeout.clone())
                .unwrap();
        assert!(matches!(both.trust, Trust::Authorities(_)));
        assert!(SmtpTarget::from_url("http://relay.example", timeout.clone()).is_err());
        assert!(SmtpTarget::from_url("smtp://relay.example?tls=maybe", timeout.clone()).is_err());
        assert!(SmtpTarget::from_url("smtp://relay.example?verify=no", timeout.clone()).is_err());
        assert!(SmtpTarget::from_url("smtp://relay.example?verfy=false", timeout).is_err());
    }

    #[test]
    fn pipelining_is_read_from_the_reply_to_ehlo() {
        let offered =
            b"220 mx.example ESMTP\r\n250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n";
        assert!(offers_pipelining(offered));
        assert!(offers_pipelining(b"220 mx\r\n250-mx\r\n250 pipelining\r\n"));
        // In the greeting, or as part of another keyword, it is not offered.
        let not = b"220 mx PIPELINING\r\n250-mx.example\r\n250-XPIPELINING\r\n250 SIZE\r\n";
        assert!(!offers_pipelining(not));
        assert!(!offers_pipelining(b""));
    }

    #[test]
    fn the_hello_name_is_the_setting_else_the_public_host() {
        let named = |ehlo: Option<&str>, public: Option<&str>| {
            let settings = Settings {
                ehlo_name: ehlo.map(|name| HelloName::parse(name).unwrap()),
                public_url: public.map(str::to_string),
                ..Settings::default()
            };
            hello_name(&settings).to_string()
        };
        assert_eq!(
            named(Some("mx.example.com"), Some("https://app.example.com")),
            "mx.example.com"
        );
        assert_eq!(
            named(None, Some("https://App.Example.com:8443/x")),
            "app.example.com"
        );
        assert_eq!(named(None, Some("http://192.0.2.7:8080")), "[192.0.2.7]");
        assert_eq!(
            named(None, Some("http://[2001:db8::7]/")),
            "[IPv6:2001:db8::7]"
        );
        assert_eq!(named(None, None), machine_name().to_string());
    }

    fn authority(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        (certificate, rcgen::Issuer::new(params, key))
    }

    fn leaf(
        names: &[&str],
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        expired: bool,
    ) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.signed_by(&key, issuer).unwrap().der().clone()
    }

    #[test]
    fn an_untrusted_certificate_is_explained() {
        let (ca, issuer) = authority("Private CA");
        let (_, stranger) = authority("Stranger CA");
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let authorities = Authorities {
            roots,
            listed: Vec::new(),
        };
        let judge = |chain: &[CertificateDer<'_>], host: &str| {
            untrusted(chain, host, &authorities, UnixTime::now())
        };

        assert_eq!(
            judge(&[leaf(&["relay.example"], &issuer, false)], "relay.example"),
            None
        );
        assert_eq!(
            judge(&[leaf(&["127.0.0.1"], &issuer, false)], "127.0.0.1"),
            None
        );
        assert_eq!(
            judge(
                &[leaf(&["*.relays.example"], &issuer, false)],
                "mx.relays.example"
            ),
            None
        );
        assert_eq!(
            judge(
                &[leaf(&["localhost", "mx.example"], &issuer, false)],
                "127.0.0.1"
            )
            .unwrap(),
            "it is issued for localhost, mx.example, not for 127.0.0.1"
        );
        assert_eq!(
            judge(
                &[leaf(&["relay.example"], &stranger, false)],
                "relay.example"
            )
            .unwrap(),
            "it is signed by an authority that is not trusted"
        );
        assert_eq!(
            judge(&[leaf(&["192.0.2.1"], &issuer, false)], "relay.example").unwrap(),
            "it is issued for 192.0.2.1, not for relay.example"
        );
        assert_eq!(
            judge(&[leaf(&["relay.example"], &issuer, true)], "relay.example").unwrap(),
            "it expired on 2021-01-01 00:00 UTC"
        );
        let own = rcgen::generate_simple_self_signed(vec!["relay.example".into()]).unwrap();
        assert_eq!(
            judge(&[own.cert.der().clone()], "relay.example").unwrap(),
            "it is self-signed"
        );
        // A self-signed certificate marked as an authority, as `openssl req -x509` makes.
        assert_eq!(
            judge(&[ca.der().clone()], "relay.example").unwrap(),
            "it is self-signed; it is not issued for relay.example"
        );
        assert_eq!(
            judge(&[], "relay.example").unwrap(),
            "the server presented no certificate"
        );
    }
}
