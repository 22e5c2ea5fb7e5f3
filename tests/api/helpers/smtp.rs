//! An SMTP server on loopback that a test controls: plain, STARTTLS or TLS from the first
//! byte (with a freshly generated certificate), with or without AUTH (one user or several),
//! with or without PIPELINING, and with scripted replies, a stall at DATA, faults (a
//! connection dropped, a `421`, a reply of its own, one reply too many or none at all at
//! a chosen step), and a record of what it received and on which connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    Plain,
    StartTls,
    /// TLS from the first byte.
    Implicit,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// The user that authenticated, if any.
    pub user: Option<String>,
    /// Whether the message came over TLS.
    pub tls: bool,
    /// The connection it came on, counted from 1 in the order they were accepted.
    pub session: usize,
}

impl Received {
    /// A header's value, unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let mut lines = self.data.lines().take_while(|l| !l.trim_end().is_empty());
        let first = lines.find(|l| l.to_ascii_lowercase().starts_with(&prefix))?;
        let mut value = first[prefix.len()..].trim().to_string();
        for continuation in lines.take_while(|l| l.starts_with([' ', '\t'])) {
            value.push(' ');
            value.push_str(continuation.trim());
        }
        Some(value)
    }

    /// The message quoted-printable decoded: its text as a reader sees it.
    pub fn text(&self) -> String {
        let unfolded = self.data.replace("=\r\n", "");
        let mut out = Vec::new();
        let bytes = unfolded.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit()
            {
                out.push(u8::from_str_radix(&unfolded[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[derive(Default)]
struct Script {
    received: Vec<Received>,
    /// Replies to the next DATA, in order; then `250`.
    replies: VecDeque<String>,
    stall: bool,
    /// Senders whose messages are answered only after the delay.
    slow: Vec<(String, Duration)>,
    data_started: usize,
    /// Every AUTH tried, right or wrong: (user, password, over TLS).
    auth_attempts: Vec<(String, String, bool)>,
    /// The name after each EHLO or HELO.
    hellos: Vec<String>,
    /// Recipients whose RCPT TO is answered with the reply every time.
    refused: Vec<(String, String)>,
    /// Recipients whose next RCPT TO is answered with the reply, once.
    deferred: Vec<(String, String)>,
    /// Every MAIL FROM accepted: one per transaction.
    transactions: usize,
    /// Whether EHLO offers PIPELINING.
    pipelining: bool,
    /// Users accepted besides the one the server started with.
    users: Vec<(String, String)>,
    faults: Vec<(At, usize, Fault)>,
    /// How many times each step was reached, over all connections.
    reached: Vec<(At, usize)>,
    /// Connections accepted.
    sessions: usize,
    /// Connections open now.
    open: usize,
    /// Transactions whose MAIL FROM came in one read with their DATA.
    pipelined: usize,
    /// What clients said on a connection after it was answered `421` (QUIT aside).
    after_421: Vec<String>,
}

/// A step of a transaction where a fault may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Mail,
    Rcpt,
    /// The DATA command.
    Data,
    /// The message after DATA's `354`, and the reply to its end.
    Message,
    Rset,
}

/// What the server does at a step instead of its usual answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Closes the connection without a reply; at `Message`, after the message's first
    /// line, before its end.
    Drop,
    /// At `Message` only: reads the message to its end and keeps it, as a relay that
    /// queued it does, then closes the connection without a reply.
    DropAfterEnd,
    /// Answers `421 4.3.2 Service shutting down` (at `Message`, to the message's end, which
    /// is not kept); then answers `421` to whatever a client still says, and records it.
    Closing,
    /// Answers this reply instead (at `Message`, to the message's end; it is kept only
    /// when the reply is `2xx`).
    Reply(&'static str),
    /// Answers as usual, then writes one reply line more: `250 2.0.0 one reply too many`.
    ExtraReply,
    /// Never answers, and keeps the connection open.
    Stall,
}

#[derive(Clone)]
pub struct TestSmtp {
    pub port: u16,
    script: Arc<Mutex<Script>>,
}

struct Config {
    tls: Encryption,
    auth: Option<(String, String)>,
    acceptor: TlsAcceptor,
    script: Arc<Mutex<Script>>,
}

fn acceptor() -> TlsAcceptor {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    acceptor_with(vec![certified.cert.der().clone()], key)
}

/// Presents `chain` (the server's own certificate first), whatever it is.
fn acceptor_with(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

impl TestSmtp {
    pub async fn start(tls: Encryption, auth: Option<(&str, &str)>) -> TestSmtp {
        Self::start_on(0, tls, auth).await
    }

    pub async fn start_on(port: u16, tls: Encryption, auth: Option<(&str, &str)>) -> TestSmtp {
        Self::start_at(([127, 0, 0, 1], port).into(), tls, auth).await
    }

    /// A server on loopback presenting `chain` and its `key` for TLS.
    pub async fn start_with_certificate(
        tls: Encryption,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> TestSmtp {
        let address = ([127, 0, 0, 1], 0).into();
        Self::start_serving(address, tls, None, acceptor_with(chain, key)).await
    }

    /// A server on `address`, such as one of the machine's own non-loopback addresses.
    pub async fn start_at(
        address: std::net::SocketAddr,
        tls: Encryption,
        auth: Option<(&str, &str)>,
    ) -> TestSmtp {
        Self::start_serving(address, tls, auth, acceptor()).await
    }

    async fn start_serving(
        address: std::net::SocketAddr,
        tls: Encryption,
        auth: Option<(&str, &str)>,
        acceptor: TlsAcceptor,
    ) -> TestSmtp {
        let listener = TcpListener::bind(address).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(Script::default()));
        let config = Arc::new(Config {
            tls,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            acceptor,
            script: script.clone(),
        });
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let config = config.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &config).await;
                });
            }
        });
        TestSmtp { port, script }
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// The name a client gave after each EHLO or HELO, in order.
    pub fn hellos(&self) -> Vec<String> {
        self.script.lock().unwrap().hellos.clone()
    }

    /// Every AUTH a client tried: (user, password, whether over TLS).
    pub fn auth_attempts(&self) -> Vec<(String, String, bool)> {
        self.script.lock().unwrap().auth_attempts.clone()
    }

    /// The next DATA is answered with `reply` (such as `451 4.3.0 try later`).
    pub fn reply_next(&self, reply: &str) {
        self.script
            .lock()
            .unwrap()
            .replies
            .push_back(reply.to_string());
    }

    /// Every RCPT TO for `address` is answered with `reply` (such as `550 5.1.1 no such user`).
    pub fn refuse(&self, address: &str, reply: &str) {
        let mut script = self.script.lock().unwrap();
        script
            .refused
            .push((address.to_string(), reply.to_string()));
    }

    /// The next RCPT TO for `address` is answered with `reply` (such as `451 4.2.1 later`);
    /// the ones after are accepted.
    pub fn defer_once(&self, address: &str, reply: &str) {
        let mut script = self.script.lock().unwrap();
        script
            .deferred
            .push((address.to_string(), reply.to_string()));
    }

    /// EHLO offers PIPELINING from now on.
    pub fn offer_pipelining(&self) {
        self.script.lock().unwrap().pipelining = true;
    }

    /// AUTH accepts `user` with `pass` too.
    pub fn add_user(&self, user: &str, pass: &str) {
        let mut script = self.script.lock().unwrap();
        script.users.push((user.to_string(), pass.to_string()));
    }

    /// The `nth` time (from 1, over all connections) a client reaches `at`, the server
    /// does `fault` instead of answering.
    pub fn fault(&self, at: At, nth: usize, fault: Fault) {
        self.script.lock().unwrap().faults.push((at, nth, fault));
    }

    /// How many connections clients opened.
    pub fn sessions(&self) -> usize {
        self.script.lock().unwrap().sessions
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        self.script.lock().unwrap().open
    }

    /// How many transactions came pipelined: MAIL FROM, RCPT TO and DATA in one read.
    pub fn pipelined(&self) -> usize {
        self.script.lock().unwrap().pipelined
    }

    /// What clients said on connections after a `421` (QUIT aside): nothing, from a client
    /// that closes such a connection.
    pub fn after_421(&self) -> Vec<String> {
        self.script.lock().unwrap().after_421.clone()
    }

    /// How many transactions (accepted MAIL FROMs) clients began.
    pub fn transactions(&self) -> usize {
        self.script.lock().unwrap().transactions
    }

    /// While on, DATA is read but never answered.
    pub fn stall(&self, on: bool) {
        self.script.lock().unwrap().stall = on;
    }

    /// Each message MAIL FROM `from` is answered `delay` after its DATA.
    pub fn slow_for(&self, from: &str, delay: Duration) {
        let mut script = self.script.lock().unwrap();
        script.slow.push((from.to_string(), delay));
    }

    /// How many messages have started (reached DATA), answered or not.
    pub fn data_started(&self) -> usize {
        self.script.lock().unwrap().data_started
    }

    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} messages arrived",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The newest email to `to` (its only recipient) once `count` emails came.
    pub async fn newest_to(&self, to: &str, count: usize) -> Received {
        self.wait_for(count, Duration::from_secs(20))
            .await
            .into_iter()
            .rev()
            .find(|r| r.to == vec![to.to_string()])
            .unwrap_or_else(|| panic!("no email to {to}"))
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn serve(stream: TcpStream, config: &Config) -> std::io::Result<()> {
    let id = {
        let mut script = config.script.lock().unwrap();
        script.sessions += 1;
        script.open += 1;
        script.sessions
    };
    let served = serve_session(stream, config, id).await;
    config.script.lock().unwrap().open -= 1;
    served
}

async fn serve_session(stream: TcpStream, config: &Config, id: usize) -> std::io::Result<()> {
    match config.tls {
        Encryption::Implicit => {
            let tls = config.acceptor.accept(stream).await?;
            session(Box::new(tls), config, id, true, true).await
        }
        Encryption::Plain | Encryption::StartTls => {
            session(Box::new(stream), config, id, false, true).await
        }
    }
}

/// Counts a step reached; answers the fault set for this time, if any.
fn reached(config: &Config, at: At) -> Option<Fault> {
    let mut script = config.script.lock().unwrap();
    let count = match script.reached.iter_mut().find(|(a, _)| *a == at) {
        Some((_, count)) => {
            *count += 1;
            *count
        }
        None => {
            script.reached.push((at, 1));
            1
        }
    };
    let fault = script
        .faults
        .iter()
        .find(|(a, n, _)| *a == at && *n == count);
    fault.map(|(_, _, fault)| *fault)
}

const CLOSING: &str = "421 4.3.2 Service shutting down";
const EXTRA: &str = "250 2.0.0 one reply too many";

/// One SMTP session (connection `id`); after STARTTLS it goes on over TLS.
fn session<'a>(
    stream: Box<dyn Io + 'a>,
    config: &'a Config,
    id: usize,
    tls: bool,
    greet: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + 'a>> {
    Box::pin(async move {
        let mut reader = BufReader::new(stream);
        if greet {
            reader
                .get_mut()
                .write_all(b"220 test.local ESMTP\r\n")
                .await?;
        }
        let (mut from, mut to, mut user) = (String::new(), Vec::new(), None::<String>);
        // Whether a MAIL FROM was accepted since the last RSET or message.
        let mut in_transaction = false;
        let mut closing = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let command = line.trim_end().to_string();
            let upper = command.to_ascii_uppercase();
            if closing && upper != "QUIT" {
                config.script.lock().unwrap().after_421.push(command);
                let answer = format!("{CLOSING}\r\n");
                reader.get_mut().write_all(answer.as_bytes()).await?;
                continue;
            }
            let at = match upper.split_whitespace().next().unwrap_or("") {
                "MAIL" => Some(At::Mail),
                "RCPT" => Some(At::Rcpt),
                "DATA" => Some(At::Data),
                "RSET" => Some(At::Rset),
                _ => None,
            };
            let fault = at.and_then(|at| reached(config, at));
            match fault {
                Some(Fault::Drop) => return Ok(()),
                Some(Fault::Stall) => std::future::pending::<()>().await,
                Some(Fault::Closing) => {
                    closing = true;
                    let answer = format!("{CLOSING}\r\n");
                    reader.get_mut().write_all(answer.as_bytes()).await?;
                    continue;
                }
                Some(Fault::Reply(reply)) => {
                    let answer = format!("{reply}\r\n");
                    reader.get_mut().write_all(answer.as_bytes()).await?;
                    continue;
                }
                _ => {}
            }
            let extra = fault == Some(Fault::ExtraReply);
            let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                let name = command.get(5..).unwrap_or("").trim().to_string();
                config.script.lock().unwrap().hellos.push(name);
                let mut lines = vec!["250-test.local".to_string()];
                if config.tls == Encryption::StartTls && !tls {
                    lines.push("250-STARTTLS".into());
                }
                if config.auth.is_some() {
                    lines.push("250-AUTH PLAIN LOGIN".into());
                }
                if config.script.lock().unwrap().pipelining {
                    lines.push("250-PIPELINING".into());
                }
                lines.push("250 8BITMIME".into());
                lines.join("\r\n")
            } else if upper == "STARTTLS" && config.tls == Encryption::StartTls && !tls {
                reader
                    .get_mut()
                    .write_all(b"220 2.0.0 go ahead\r\n")
                    .await?;
                let plain = reader.into_inner();
                let tls_stream = config.acceptor.accept(Unboxed(plain)).await?;
                return session(Box::new(tls_stream), config, id, true, false).await;
            } else if upper.starts_with("AUTH PLAIN") {
                let initial = command.split_whitespace().nth(2).map(str::to_string);
                let encoded = match initial {
                    Some(value) => value,
                    None => {
                        reader.get_mut().write_all(b"334 \r\n").await?;
                        let mut next = String::new();
                        reader.read_line(&mut next).await?;
                        next.trim().to_string()
                    }
                };
                let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap_or_default())
                    .unwrap_or_default();
                let mut parts = decoded.split('\0').skip(1);
                let (u, p) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                check_auth(config, u, p, tls, &mut user)
            } else if upper.starts_with("AUTH LOGIN") {
                reader.get_mut().write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                let mut u = String::new();
                reader.read_line(&mut u).await?;
                reader.get_mut().write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                let mut p = String::new();
                reader.read_line(&mut p).await?;
                let decode = |s: &str| {
                    String::from_utf8(STANDARD.decode(s.trim()).unwrap_or_default())
                        .unwrap_or_default()
                };
                check_auth(config, &decode(&u), &decode(&p), tls, &mut user)
            } else if upper.starts_with("MAIL FROM:") {
                if config.auth.is_some() && user.is_none() {
                    "530 5.7.0 Authentication required".into()
                } else {
                    from = command[10..]
                        .trim()
                        .trim_matches(['<', '>'])
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    to.clear();
                    in_transaction = true;
                    let mut script = config.script.lock().unwrap();
                    script.transactions += 1;
                    if String::from_utf8_lossy(reader.buffer())
                        .to_ascii_uppercase()
                        .contains("DATA\r\n")
                    {
                        script.pipelined += 1;
                    }
                    "250 2.1.0 ok".into()
                }
            } else if (upper.starts_with("RCPT TO:") || upper == "DATA") && !in_transaction {
                "503 5.5.1 Error: need MAIL command".into()
            } else if upper.starts_with("RCPT TO:") {
                let address = command[8..].trim().trim_matches(['<', '>']).to_string();
                let mut script = config.script.lock().unwrap();
                let refused = script.refused.iter().find(|(a, _)| *a == address);
                if let Some((_, reply)) = refused {
                    reply.clone()
                } else if let Some(i) = script.deferred.iter().position(|(a, _)| *a == address) {
                    script.deferred.remove(i).1
                } else {
                    to.push(address);
                    "250 2.1.5 ok".into()
                }
            } else if upper == "DATA" && to.is_empty() {
                // RFC 5321 §3.3, and what a pipelining client counts on (RFC 2920 §3.1).
                "554 5.5.1 Error: no valid recipients".into()
            } else if upper == "DATA" {
                let extra = if extra {
                    format!("\r\n{EXTRA}")
                } else {
                    String::new()
                };
                let go_ahead = format!("354 go ahead{extra}\r\n");
                reader.get_mut().write_all(go_ahead.as_bytes()).await?;
                let fault = reached(config, At::Message);
                in_transaction = false;
                let mut data = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if fault == Some(Fault::Drop) {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(
                        line.strip_prefix('.')
                            .filter(|_| line.starts_with(".."))
                            .unwrap_or(&line),
                    );
                }
                let (stall, scripted, slow) = {
                    let mut script = config.script.lock().unwrap();
                    script.data_started += 1;
                    let slow = script.slow.iter().find(|(f, _)| *f == from).map(|s| s.1);
                    (
                        script.stall,
                        if script.stall {
                            None
                        } else {
                            script.replies.pop_front()
                        },
                        slow,
                    )
                };
                if stall || fault == Some(Fault::Stall) {
                    std::future::pending::<()>().await;
                }
                if let Some(delay) = slow {
                    tokio::time::sleep(delay).await;
                }
                if fault == Some(Fault::Closing) {
                    closing = true;
                    CLOSING.to_string()
                } else {
                    let reply = match fault {
                        Some(Fault::Reply(reply)) => reply.to_string(),
                        _ => scripted.unwrap_or_else(|| "250 2.0.0 queued".to_string()),
                    };
                    let kept = reply.starts_with('2') || fault == Some(Fault::DropAfterEnd);
                    if kept {
                        config.script.lock().unwrap().received.push(Received {
                            from: from.clone(),
                            to: to.clone(),
                            data,
                            user: user.clone(),
                            tls,
                            session: id,
                        });
                    }
                    if fault == Some(Fault::DropAfterEnd) {
                        return Ok(());
                    }
                    if fault == Some(Fault::ExtraReply) {
                        format!("{reply}\r\n{EXTRA}")
                    } else {
                        reply
                    }
                }
            } else if upper == "RSET" {
                from.clear();
                to.clear();
                in_transaction = false;
                "250 2.0.0 ok".into()
            } else if upper == "NOOP" {
                "250 2.0.0 ok".into()
            } else if upper == "QUIT" {
                reader.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            } else {
                "502 5.5.2 command not recognised".into()
            };
            let reply = match extra && at != Some(At::Data) {
                true => format!("{reply}\r\n{EXTRA}"),
                false => reply,
            };
            reader
                .get_mut()
                .write_all(format!("{reply}\r\n").as_bytes())
                .await?;
        }
    })
}

fn check_auth(
    config: &Config,
    user: &str,
    pass: &str,
    tls: bool,
    authed: &mut Option<String>,
) -> String {
    config
        .script
        .lock()
        .unwrap()
        .auth_attempts
        .push((user.to_string(), pass.to_string(), tls));
    let known = {
        let script = config.script.lock().unwrap();
        let mut users = config.auth.iter().chain(&script.users);
        users.any(|(u, p)| u == user && p == pass)
    };
    match known {
        true => {
            *authed = Some(user.to_string());
            "235 2.7.0 Authentication successful".into()
        }
        false => "535 5.7.8 Authentication credentials invalid".into(),
    }
}

/// A boxed stream handed to the TLS acceptor.
struct Unboxed<'a>(Box<dyn Io + 'a>);

impl AsyncRead for Unboxed<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Unboxed<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
