//! One HTTP POST to a webhook endpoint, over a connection mailroom makes itself: to an
//! address the destination policy checked after resolving the name (so that a name that
//! resolves elsewhere a moment later gains nothing), with TLS that trusts the system's
//! authorities only, no redirects followed, and at most the first KiB of the reply read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use url::{Host, Url};

use crate::mail::destination::{self, ConnectError, Policy, WEBHOOK_RULE_SHORT};
use crate::types::text::escape_controls;

/// Bytes of a reply's body kept (and read: the rest is never asked for).
pub const REPLY_KEPT: usize = 1024;

/// What the endpoint answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// At most the first `REPLY_KEPT` bytes of the body.
    pub body: Vec<u8>,
}

/// Connections kept open to endpoints between deliveries, by webhook and URL, so that an
/// endpoint that answers quickly is not connected to (and shaken hands with, over TLS)
/// once per event. A connection goes back only after a whole reply of at most
/// `REPLY_KEPT` bytes, and is dropped after `IDLE_FOR`.
#[derive(Default)]
pub struct Connections {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

/// An open connection between requests, with the task that drives it.
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    driver: AbortOnDrop,
    since: Instant,
}

/// How long a connection may wait for the next request.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// Connections kept per endpoint: more are closed after their reply.
const IDLE_PER_ENDPOINT: usize = 16;

impl Connections {
    fn take(&self, key: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = idle.get_mut(key)?;
        while let Some(connection) = waiting.pop() {
            if connection.since.elapsed() < IDLE_FOR && !connection.sender.is_closed() {
                return Some(connection);
            }
        }
        idle.remove(key);
        None
    }

    fn put(&self, key: &str, sender: SendRequest<Full<Bytes>>, driver: AbortOnDrop) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Endpoints not posted to for a while lose their connections here.
        idle.retain(|_, waiting| {
            waiting.retain(|c| c.since.elapsed() < IDLE_FOR && !c.sender.is_closed());
            !waiting.is_empty()
        });
        let waiting = idle.entry(key.to_string()).or_default();
        if waiting.len() < IDLE_PER_ENDPOINT {
            waiting.push(Idle {
                sender,
                driver,
                since: Instant::now(),
            });
        }
    }
}

/// POSTs `body` with `headers` to `url`, on a connection kept in `connections` under `key`
/// when there is one (`None`: a connection of its own); answers the reply, or why none
/// came in words a tenant reads. The caller bounds the time it takes.
pub async fn post(
    url: &Url,
    policy: &Policy,
    headers: &[(&str, String)],
    body: Vec<u8>,
    connections: Option<(&Connections, &str)>,
) -> Result<Reply, String> {
    let body = Bytes::from(body);
    if let Some((connections, key)) = connections
        && let Some(mut kept) = connections.take(key)
    {
        // When the endpoint closed the kept connection as the request went, it goes again
        // on a new one (a receiver may see it twice, as it may on any retry).
        if let Ok((reply, reusable)) =
            exchange(&mut kept.sender, request(url, headers, body.clone())?).await
        {
            if reusable {
                connections.put(key, kept.sender, kept.driver);
            }
            return Ok(reply);
        }
    }
    let (mut sender, driver) = open(url, policy).await?;
    let (reply, reusable) = exchange(&mut sender, request(url, headers, body)?).await?;
    if reusable && let Some((connections, key)) = connections {
        connections.put(key, sender, driver);
    }
    Ok(reply)
}

/// Opens an HTTP/1.1 connection to the URL's host, over TLS for `https`.
async fn open(
    url: &Url,
    policy: &Policy,
) -> Result<(SendRequest<Full<Bytes>>, AbortOnDrop), String> {
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => return Err(format!("{other}:// is not http:// or https://")),
    };
    // An IPv6 address without its brackets, as it parses.
    let host = match url.host() {
        Some(Host::Domain(name)) => name.to_string(),
        Some(Host::Ipv4(ip)) => ip.to_string(),
        Some(Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("the URL has no host".to_string()),
    };
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let allowed = |address| policy.allows_webhook(address, https);
    let connected = destination::connect_where(&host, port, allowed, WEBHOOK_RULE_SHORT).await;
    let (stream, _) = connected.map_err(|error| match error {
        // A name that does not resolve and one that resolves outside the rule read
        // alike, so that tenants cannot learn which internal names exist.
        ConnectError::Refused(_) | ConnectError::NoAddress(_) => {
            tracing::debug!(%host, ?error, "no webhook address");
            format!("not sent to {host}:{port}: it has no address {WEBHOOK_RULE_SHORT}")
        }
        // The cause is for the operator's log: tenants' probes must not tell a closed
        // port from a filtered one.
        ConnectError::Unreachable(cause) => {
            tracing::debug!(%cause, "no webhook connection");
            format!("could not connect to {host}:{port}")
        }
    })?;
    // A POST carries its body in one write or two: Nagle would hold the second back.
    let _ = stream.set_nodelay(true);
    if https {
        let name = ServerName::try_from(host.clone())
            .map_err(|_| format!("{host} is not a name TLS can check a certificate for"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, stream)
            .await
            .map_err(|error| tls_failure(&error))?;
        handshake(tls).await
    } else {
        handshake(stream).await
    }
}

async fn handshake<S>(stream: S) -> Result<(SendRequest<Full<Bytes>>, AbortOnDrop), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("the connection failed: {error}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, AbortOnDrop(driver)))
}

fn request(
    url: &Url,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let path = &url[url::Position::BeforePath..url::Position::AfterQuery];
    // The port is in the URL only when it is not the scheme's own.
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let mut builder = hyper::Request::post(if path.is_empty() { "/" } else { path })
        .header(hyper::header::HOST, host);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    builder
        .body(Full::new(body))
        .map_err(|error| format!("cannot build the request: {error}"))
}

/// Sends the request and reads the status and the first KiB of the body; answers too
/// whether the connection may carry another request (the whole reply was read).
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(Reply, bool), String> {
    sender
        .ready()
        .await
        .map_err(|error| format!("the connection failed: {error}"))?;
    let response = sender.send_request(request).await.map_err(|error| {
        match error.is_incomplete_message() || error.is_canceled() {
            true => "the endpoint closed the connection without an answer".to_string(),
            false => format!("no answer: {error}"),
        }
    })?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut kept = Vec::new();
    let mut whole = false;
    while kept.len() <= REPLY_KEPT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = REPLY_KEPT + 1 - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            None => {
                whole = true;
                break;
            }
            // The status came: a body cut short does not undo it.
            Some(Err(_)) => break,
        }
    }
    // The rest of a longer body is never read: that connection goes.
    kept.truncate(REPLY_KEPT);
    Ok((Reply { status, body: kept }, whole))
}

/// A connection's driver, stopped with the connection.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The client's TLS settings: the system's authorities, built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG.get_or_init(build_tls_config).clone()
}

fn build_tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "cannot read a system certificate authority");
    }
    roots.add_parsable_certificates(found.certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| format!("no certificate authorities to trust: {error}"))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("cannot set up TLS: {error}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Readable(verifier)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The standard verifier, whose refusals say what is wrong in words a user reads.
#[derive(Debug)]
struct Readable(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for Readable {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|error| rustls::Error::General(untrusted(&error, end_entity, server_name)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a certificate is refused.
fn untrusted(error: &rustls::Error, own: &CertificateDer<'_>, name: &ServerName<'_>) -> String {
    let self_signed = webpki::EndEntityCert::try_from(own)
        .is_ok_and(|certificate| certificate.issuer() == certificate.subject());
    let why = match error {
        rustls::Error::InvalidCertificate(error) => match error {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "it has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "it is not valid yet".to_string()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("it is not issued for {}", name.to_str())
            }
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::Other(_)
                if self_signed =>
            {
                "it is self-signed".to_string()
            }
            CertificateError::UnknownIssuer => {
                "it is signed by an authority that is not trusted".to_string()
            }
            other => format!("it is not valid ({other:?})"),
        },
        other => format!("it cannot be checked ({other})"),
    };
    format!("the certificate is not trusted: {why}")
}

/// A failed handshake in words: the certificate's refusal as `Readable` put it, or the
/// TLS library's account.
fn tls_failure(error: &std::io::Error) -> String {
    let cause = match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::General(why)) => why.clone(),
        Some(other) => other.to_string(),
        None => error.to_string(),
    };
    escape_controls(&format!("TLS failed: {cause}"))
}
