//! DKIM signing (RFC 6376): rsa-sha256 with relaxed/relaxed canonicalization, the
//! signature prepended to the message.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
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

/// Answers `message` with a `DKIM-Signature` header in front of it, signing every header
/// field it has (custom ones included) and oversigning the ones that say who and what.
/// The RSA is ring's: signing is most of what delivering a message costs, and ring's is
/// several times faster.
pub fn sign(
    message: &[u8],
    domain: &str,
    selector: &str,
    key: &RsaKeyPair,
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
    let unsigned = format!(
        "v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector}; t={now_secs};\r\n\th={h};\r\n\tbh={body_hash};\r\n\tb="
    );
    let mut hashed = String::new();
    for (name, value) in &signed {
        hashed.push_str(&relaxed_header(name, value));
        hashed.push_str("\r\n");
    }
    hashed.push_str(&relaxed_header("DKIM-Signature", &unsigned));
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        hashed.as_bytes(),
        &mut signature,
    )
    .map_err(|_| anyhow::anyhow!("cannot sign with the DKIM key of {domain}"))?;
    let mut out = format!(
        "DKIM-Signature: {unsigned}{}\r\n",
        STANDARD.encode(signature)
    )
    .into_bytes();
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
        let key = RsaKeyPair::from_pkcs8(key.to_pkcs8_der().unwrap().as_bytes()).unwrap();
        let message = b"From: a@customer.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
        let signed = sign(message, "customer.com", "sel", &key, 1).unwrap();
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
}
