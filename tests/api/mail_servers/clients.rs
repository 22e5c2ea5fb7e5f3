//! The two mail clients the test plays: an SMTP client that shows every reply code (for
//! the refusals), with STARTTLS and AUTH PLAIN, and an IMAP client that reads a mailbox.
//! Every read has a timeout: a hang fails at once, with the mail host's logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

use super::host::Logs;

const PATIENCE: Duration = Duration::from_secs(15);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection from its own loopback address: Dovecot slows down repeated failed
/// logins from one address, and some of the test's logins fail on purpose.
async fn connect(port: u16) -> TcpStream {
    static CLIENTS: AtomicU8 = AtomicU8::new(2);
    let client = CLIENTS.fetch_add(1, Ordering::Relaxed).max(2);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 1, client], 0).into()).unwrap();
    socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
}

pub struct Smtp {
    io: BufReader<Box<dyn Io>>,
    logs: Logs,
}

/// A reply: its code and its text (every line).
pub type Reply = (u16, String);

impl Smtp {
    /// Connects and reads the greeting, then says EHLO.
    pub async fn connect(port: u16, logs: &Logs) -> Smtp {
        let stream: Box<dyn Io> = Box::new(connect(port).await);
        let mut smtp = Smtp {
            io: BufReader::new(stream),
            logs: logs.clone(),
        };
        let greeting = smtp.reply().await;
        assert_eq!(greeting.0, 220, "{greeting:?}{}", smtp.logs);
        smtp.ehlo().await;
        smtp
    }

    pub async fn ehlo(&mut self) -> Reply {
        let reply = self.command("EHLO client.example.org").await;
        assert_eq!(reply.0, 250, "{reply:?}{}", self.logs);
        reply
    }

    async fn reply(&mut self) -> Reply {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(PATIENCE, self.io.read_line(&mut line)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("no SMTP reply ({other:?}) after {text:?}{}", self.logs),
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                let code = line[..3].parse().unwrap();
                return (code, text);
            }
        }
    }

    pub async fn command(&mut self, line: &str) -> Reply {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    /// STARTTLS, trusting only the mail host's certificate, then EHLO again.
    pub async fn starttls(mut self, certificate: &[u8]) -> Smtp {
        let reply = self.command("STARTTLS").await;
        assert_eq!(reply.0, 220, "{reply:?}{}", self.logs);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                certificate.to_vec(),
            ))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let plain = self.io.into_inner();
        let tls = TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), plain)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake: {e}{}", self.logs));
        let stream: Box<dyn Io> = Box::new(tls);
        let mut smtp = Smtp {
            io: BufReader::new(stream),
            logs: self.logs,
        };
        smtp.ehlo().await;
        smtp
    }

    pub async fn auth(&mut self, user: &str, password: &str) -> Reply {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.command(&format!("AUTH PLAIN {token}")).await
    }

    /// MAIL FROM (with the message's size, as MTAs declare it) and one RCPT TO; answers
    /// the RCPT's reply, where Postfix gives its verdicts.
    pub async fn envelope(&mut self, from: &str, to: &str, size: usize) -> Reply {
        let mail = self
            .command(&format!("MAIL FROM:<{from}> SIZE={size}"))
            .await;
        if mail.0 != 250 {
            return mail;
        }
        self.command(&format!("RCPT TO:<{to}>")).await
    }

    /// Sends `message` from `from` to `to`; panics unless every step is accepted.
    pub async fn send(&mut self, from: &str, to: &str, message: &str) {
        let rcpt = self.envelope(from, to, message.len()).await;
        assert_eq!(rcpt.0, 250, "RCPT TO:<{to}> {rcpt:?}{}", self.logs);
        let data = self.command("DATA").await;
        assert_eq!(data.0, 354, "{data:?}{}", self.logs);
        self.io
            .get_mut()
            .write_all(message.as_bytes())
            .await
            .unwrap();
        let done = self.command(".").await;
        assert_eq!(done.0, 250, "{done:?}{}", self.logs);
    }
}

/// A message as a mail client writes it; `padding` lines make it as big as needed.
pub fn message(from: &str, to: &str, subject: &str, padding: usize) -> String {
    let mut text = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: Sat, 21 Nov 2026 12:00:00 +0000\r\n\
         Message-ID: <{}@client.example.org>\r\n\r\nHello from {from}.\r\n",
        mailroom::store::new_id("m")
    );
    for _ in 0..padding {
        text.push_str(&"0123456789".repeat(10));
        text.push_str("\r\n");
    }
    text
}

/// An IMAP session, logged in.
pub struct Imap {
    io: BufReader<TcpStream>,
    logs: Logs,
}

impl Imap {
    /// LOGIN as a mail client does it; `None` when the server refuses.
    pub async fn login(port: u16, user: &str, password: &str, logs: &Logs) -> Option<Imap> {
        let mut imap = Imap {
            io: BufReader::new(connect(port).await),
            logs: logs.clone(),
        };
        let (greeting, _) = imap.read_until(None).await;
        assert!(greeting.starts_with("* OK"), "{greeting}{logs}");
        let quoted = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let (status, _) = imap
            .command(&format!("LOGIN {} {}", quoted(user), quoted(password)))
            .await;
        status.starts_with("OK").then_some(imap)
    }

    /// Lines until the tagged one (or one line, untagged); literals are collected apart.
    async fn read_until(&mut self, tag: Option<&str>) -> (String, Vec<Vec<u8>>) {
        let mut literals = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(PATIENCE, self.io.read_line(&mut line)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                other => panic!("no IMAP reply ({other:?}){}", self.logs),
            }
            if let Some(size) = line
                .trim_end()
                .strip_suffix('}')
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
            {
                let mut literal = vec![0; size];
                tokio::time::timeout(PATIENCE, self.io.read_exact(&mut literal))
                    .await
                    .unwrap_or_else(|_| panic!("IMAP literal timed out{}", self.logs))
                    .unwrap();
                literals.push(literal);
                continue;
            }
            match tag {
                None => return (line, literals),
                Some(tag) => {
                    if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                        return (status.to_string(), literals);
                    }
                }
            }
        }
    }

    async fn command(&mut self, command: &str) -> (String, Vec<Vec<u8>>) {
        self.io
            .get_mut()
            .write_all(format!("t {command}\r\n").as_bytes())
            .await
            .unwrap();
        self.read_until(Some("t")).await
    }

    /// Every message in INBOX, whole.
    pub async fn inbox(&mut self) -> Vec<String> {
        let (status, _) = self.command("EXAMINE INBOX").await;
        assert!(status.starts_with("OK"), "{status}{}", self.logs);
        let (status, literals) = self.command("FETCH 1:* BODY.PEEK[]").await;
        if status.starts_with("OK") {
            literals
                .into_iter()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .collect()
        } else {
            // An empty mailbox has no message 1.
            Vec::new()
        }
    }
}
