//! DKIM signing (RFC 6376, and RFC 8463 for Ed25519): relaxed/relaxed canonicalization,
//! each signature prepended to the message. A message may carry two signatures, RSA and
//! Ed25519, over the same header fields: receivers that know Ed25519 check both, the
//! others the RSA one.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use sha2::{Digest, Sha256};

/// Headers signed once more than they appear ("oversigned", RFC 6376 §8.15): whoever
/// replays the message cannot add a second From or Subject, nor a Cc or Reply-To it had
/// not, without breaking the signature.
const OVERSIGNED: [&str; 9] = [
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSA-2048, `rsa-sha256`: what every verifier knows.
    Rsa,
    /// Ed25519, `ed25519-sha256` (RFC 8463): short keys, fast signatures.
    Ed25519,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    pub fn parse(value: &str) -> anyhow::Result<Algorithm> {
        match value {
            "rsa" => Ok(Algorithm::Rsa),
            "ed25519" => Ok(Algorithm::Ed25519),
            other => anyhow::bail!("unknown DKIM key algorithm {other}"),
        }
    }

    /// The `a=` of a signature.
    fn signature_tag(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa-sha256",
            Algorithm::Ed25519 => "ed25519-sha256",
        }
    }
}

/// A private key ready to sign.
pub enum Signer {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    /// Opens a PKCS#8 DER private key. Costly for RSA (ring checks the key): callers keep
    /// what they opened.
    pub fn open(algorithm: Algorithm, der: &[u8]) -> anyhow::Result<Signer> {
        Ok(match algorithm {
            Algorithm::Rsa => {
                Signer::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|e| anyhow::anyhow!("{e}"))?)
            }
            Algorithm::Ed25519 => Signer::Ed25519(
                Ed25519KeyPair::from_pkcs8(der).map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Signer::Rsa(_) => Algorithm::Rsa,
            Signer::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    fn sign(&self, data: &[u8]) -> anyhow::Result<Vec<u8>> {
        match self {
            Signer::Rsa(key) => {
                let mut signature = vec![0; key.public().modulus_len()];
                key.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    data,
                    &mut signature,
                )
                .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                Ok(signature)
            }
            // RFC 8463 §3: PureEdDSA over the SHA-256 of what RSA would sign.
            Signer::Ed25519(key) => Ok(key.sign(&Sha256::digest(data)).as_ref().to_vec()),
        }
    }
}

/// Runs `work` (composing and signing a message) on one of the signing threads, one per
/// core: an RSA signature holds a core for most of a millisecond, which must never be one
/// of the async runtime's threads, and more signing threads than cores would only make
/// each message wait longer. The threads take the next message from a queue as soon as
/// they finish one, so that with messages waiting a core never idles between signatures,
/// and always the same threads sign, their caches warm.
pub async fn on_signing_threads<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    static QUEUE: OnceLock<mpsc::Sender<SigningWork>> = OnceLock::new();
    let (done, result) = tokio::sync::oneshot::channel();
    QUEUE
        .get_or_init(start_signing_threads)
        .send(Box::new(move || {
            let _ = done.send(work());
        }))
        .map_err(|_| anyhow::anyhow!("the signing threads have stopped"))?;
    result
        .await
        .map_err(|_| anyhow::anyhow!("composing or signing a message failed"))
}

type SigningWork = Box<dyn FnOnce() + Send>;

fn start_signing_threads() -> mpsc::Sender<SigningWork> {
    let (queue, waiting) = mpsc::channel::<SigningWork>();
    let waiting = Arc::new(Mutex::new(waiting));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for _ in 0..cores {
        let waiting = waiting.clone();
        std::thread::Builder::new()
            .name("dkim-signer".into())
            .spawn(move || {
                loop {
                    let next = match waiting.lock() {
                        Ok(waiting) => waiting.recv(),
                        Err(_) => return,
                    };
                    let Ok(work) = next else { return };
                    // A panic in one message's work fails that message (its sender is
                    // dropped), not the thread.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(work));
                }
            })
            .expect("cannot start a signing thread");
    }
    queue
}

/// Answers `message` with a `DKIM-Signature` header in front of it for each of `signers`
/// (selector and key), in their order, signing every header field the message has (custom
/// ones included) and oversigning the ones that say who and what. No signature covers
/// another: each verifies on its own.
pub fn sign(
    message: &[u8],
    domain: &str,
    signers: &[(&str, &Signer)],
    now_secs: u64,
) -> anyhow::Result<Vec<u8>> {
    let (head, body) = split(message);
    let fields = header_fields(head);
    let mut names: Vec<String> = Vec::new();
    for (name, _) in &fields {
        let name = name.to_ascii_lowercase();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    for name in OVERSIGNED {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    // Each name as many times as the message has it, and once more when oversigned.
    let mut listed: Vec<&str> = Vec::new();
    for name in &names {
        let present = fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count();
        let extra = usize::from(OVERSIGNED.contains(&name.as_str()));
        listed.extend(std::iter::repeat_n(name.as_str(), present + extra));
    }
    // Instances of a name are taken from the bottom up; one asked for beyond those the
    // message has is hashed as nothing (RFC 6376 §5.4.2).
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let signed: Vec<&(String, String)> = listed
        .iter()
        .filter_map(|name| {
            let skip = taken.entry(name).or_default();
            let found = fields
                .iter()
                .rev()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .nth(*skip);
            *skip += 1;
            found
        })
        .collect();
    let body_hash = STANDARD.encode(Sha256::digest(relaxed_body(body)));
    // Folded, so that no line passes 998 octets however many headers are signed; the
    // signature covers the folded text as receivers canonicalize it.
    let h = listed
        .chunks(8)
        .map(|names| names.join(":"))
        .collect::<Vec<_>>()
        .join(":\r\n\t");
    let mut fields_hashed = String::new();
    for (name, value) in &signed {
        fields_hashed.push_str(&relaxed_header(name, value));
        fields_hashed.push_str("\r\n");
    }
    let mut out = Vec::with_capacity(message.len() + 600 * signers.len());
    for (selector, signer) in signers {
        let a = signer.algorithm().signature_tag();
        let unsigned = format!(
            "v=1; a={a}; c=relaxed/relaxed; d={domain}; s={selector}; t={now_secs};\r\n\th={h};\r\n\tbh={body_hash};\r\n\tb="
        );
        let mut hashed = fields_hashed.clone();
        hashed.push_str(&relaxed_header("DKIM-Signature", &unsigned));
        let signature = signer
            .sign(hashed.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot sign with the DKIM key of {domain}: {e}"))?;
        out.extend_from_slice(
            format!(
                "DKIM-Signature: {unsigned}{}\r\n",
                STANDARD.encode(signature)
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(message);
    Ok(out)
}

fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (&message[..end + 2], &message[end + 4..]),
        None => (message, &[]),
    }
}

/// Header fields as (name, value with its folding), in order.
fn header_fields(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push_str("\r\n");
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim_end().to_string(), value.to_string()));
        }
    }
    fields
}

/// `name:value` with the name lowercased, the value unfolded, runs of white space made one
/// space, and white space at both ends removed.
fn relaxed_header(name: &str, value: &str) -> String {
    let unfolded = value.replace("\r\n", "");
    format!(
        "{}:{}",
        name.trim().to_ascii_lowercase(),
        collapse(&unfolded).trim()
    )
}

fn collapse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c == ' ' || c == '\t' {
            in_space = true;
        } else {
            if in_space {
                out.push(' ');
            }
            in_space = false;
            out.push(c);
        }
    }
    if in_space {
        out.push(' ');
    }
    out
}

/// Each line with runs of white space (SP, HTAB) made one space and none at its end; no
/// empty lines at the end; a final CRLF unless the body is empty. Worked on bytes in one
/// pass: bodies carry megabytes of attachments, and are not necessarily UTF-8.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut line = Vec::new();
    let mut empty_lines = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let (raw, tail) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(end) => (&rest[..end], &rest[end + 2..]),
            None => (rest, &[][..]),
        };
        rest = tail;
        line.clear();
        let mut in_space = false;
        for &byte in raw {
            if byte == b' ' || byte == b'\t' {
                in_space = true;
            } else {
                if in_space {
                    line.push(b' ');
                }
                in_space = false;
                line.push(byte);
            }
        }
        if line.is_empty() {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            out.extend_from_slice(b"\r\n");
        }
        empty_lines = 0;
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_follow_rfc_6376() {
        // The examples of RFC 6376, section 3.4.5.
        assert_eq!(relaxed_header("A", " X\r\n"), "a:X");
        assert_eq!(relaxed_header("B ", " Y\t\r\n\tZ  \r\n"), "b:Y Z");
        assert_eq!(relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"a\r\n\r\n \r\nb"), b"a\r\n\r\n\r\nb\r\n");
        // Only SP and HTAB are white space; other bytes, UTF-8 or not, stay as they are.
        assert_eq!(
            relaxed_body(b"x\xa0\r\n\xff\xfe \t\r\n"),
            b"x\xa0\r\n\xff\xfe\r\n"
        );
    }

    #[test]
    fn signing_prepends_a_header_naming_what_it_covers() {
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let key = Signer::open(Algorithm::Rsa, key.to_pkcs8_der().unwrap().as_bytes()).unwrap();
        let message = b"From: a@customer.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
        let signed = sign(message, "customer.com", &[("sel", &key)], 1).unwrap();
        let signed = String::from_utf8(signed).unwrap();
        let first = signed.lines().next().unwrap();
        assert!(first.starts_with(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=customer.com; s=sel;"
        ));
        // Each present header once more than it appears, and the absent ones that say
        // who and what once: none can be added after signing.
        let unfolded = signed.replace("\r\n\t", " ");
        assert!(
            unfolded.contains(
                " h=from:from:to:to:subject:subject:cc:reply-to: date:message-id:mime-version:content-type;"
            ),
            "{unfolded}"
        );
        assert!(signed.lines().all(|line| line.len() <= 998));
        assert!(signed.ends_with("\r\n\r\nbody\r\n"));
    }

    #[test]
    fn a_second_signature_is_ed25519_over_the_same_fields() {
        use ring::signature::KeyPair;
        use rsa::pkcs8::EncodePrivateKey;
        let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let rsa = Signer::open(Algorithm::Rsa, rsa.to_pkcs8_der().unwrap().as_bytes()).unwrap();
        let der = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let ed = Signer::open(Algorithm::Ed25519, der.as_ref()).unwrap();
        let message = b"From: a@customer.com\r\nSubject: hi\r\n\r\nbody\r\n";
        let signed = sign(message, "customer.com", &[("one", &rsa), ("two", &ed)], 7).unwrap();
        let signed = String::from_utf8(signed).unwrap();
        let (first, rest) = signed.split_once("\r\nDKIM-Signature: ").unwrap();
        assert!(
            first.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"),
            "{first}"
        );
        assert!(rest.starts_with("v=1; a=ed25519-sha256;"), "{rest}");
        let tag = |header: &str, name: &str| {
            let unfolded = header.replace("\r\n\t", " ");
            let start = unfolded.find(&format!(" {name}=")).unwrap() + name.len() + 2;
            unfolded[start..]
                .split(';')
                .next()
                .unwrap()
                .trim()
                .to_string()
        };
        let second = rest.split("\r\nFrom:").next().unwrap();
        assert_eq!(tag(first, "h"), tag(second, "h"));
        assert_eq!(tag(first, "bh"), tag(second, "bh"));
        // The Ed25519 signature is of the SHA-256 of the canonical fields and its own
        // header with an empty b= (RFC 8463 §3).
        let b = tag(second, "b").replace([' ', '\t', '\r', '\n'], "");
        let unsigned = second[..second.rfind("b=").unwrap() + 2].to_string();
        let hashed = format!(
            "from:a@customer.com\r\nsubject:hi\r\n{}",
            relaxed_header("DKIM-Signature", &unsigned)
        );
        let Signer::Ed25519(pair) = &ed else {
            unreachable!()
        };
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ED25519,
            pair.public_key().as_ref(),
        );
        public
            .verify(
                &Sha256::digest(hashed.as_bytes()),
                &STANDARD.decode(b).unwrap(),
            )
            .expect("the Ed25519 signature verifies");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signing_runs_on_at_most_one_thread_per_core() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let work = (0..12).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(on_signing_threads(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
            }))
        });
        // Meanwhile the runtime's own threads stay free to answer.
        let answered = tokio::spawn(async { 42 });
        for done in work.collect::<Vec<_>>() {
            done.await.unwrap().unwrap();
        }
        assert_eq!(answered.await.unwrap(), 42);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert!(most.load(Ordering::SeqCst) <= cores);
        assert!(most.load(Ordering::SeqCst) >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_signing_fails_that_message_and_keeps_every_thread() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..cores * 2 {
            let failed = on_signing_threads(|| -> u8 { panic!("a broken message") }).await;
            assert!(failed.is_err());
        }
        // As many messages as cores are signed at the same time: no thread was lost.
        let together = Arc::new(AtomicUsize::new(0));
        let work = (0..cores).map(|_| {
            let together = together.clone();
            tokio::spawn(on_signing_threads(move || {
                together.fetch_add(1, Ordering::SeqCst);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while together.load(Ordering::SeqCst) < cores {
                    if std::time::Instant::now() > deadline {
                        return false;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                true
            }))
        });
        for done in work.collect::<Vec<_>>() {
            assert!(
                done.await.unwrap().unwrap(),
                "fewer signing threads than cores"
            );
        }
    }
}
