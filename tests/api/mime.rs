//! The message composed for an email, read back by independent readers: Python's `email`
//! package as a mail client would parse it, and dkimpy as a receiving server would verify
//! it. What the sender put in is what they see, and nothing else.

use crate::helpers::judges::{importable, judge};
use base64::Engine as _;
use mailroom::mail::compose::{Address, Attachment, Email, compose_email};
use mailroom::mail::port::SigningKey;
use rand::RngCore;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The message as Python's `email` package reads it.
fn read(message: &[u8]) -> Value {
    let (ok, out) = judge("mime_read.py", &[], message);
    assert!(ok, "the MIME reader failed");
    serde_json::from_str(&out).unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A DKIM key as the domains' store keeps it, and its public half as DNS publishes it.
fn dkim_key(selector: &str) -> (SigningKey, String) {
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let public = key.to_public_key().to_public_key_der().unwrap();
    let signing = SigningKey {
        selector: selector.to_string(),
        algorithm: mailroom::mail::dkim::Algorithm::Rsa,
        private_der: key.to_pkcs8_der().unwrap().as_bytes().to_vec(),
    };
    (
        signing,
        base64::engine::general_purpose::STANDARD.encode(public.as_bytes()),
    )
}

const SUBJECT: &str = "Grüße — Rechnung №42 für Zoë 🧾";
const TEXT: &str = "Hallo Zoë,\n\nanbei die Rechnung.\n\nGrüße\n";
const HTML: &str = "<p>Hallo Zoë,</p><p>anbei die Rechnung.</p><img src=\"cid:logo@customer.com\">";
const PDF_NAME: &str = "Rechnung März 2026 – Zoë.pdf";
const BCC: &str = "hidden-auditor@example.net";

fn pdf() -> Vec<u8> {
    let mut bytes = b"%PDF-1.7\n".to_vec();
    let mut random = vec![0; 300_000];
    rand::rng().fill_bytes(&mut random);
    bytes.extend(random);
    bytes
}

fn png() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut random = vec![0; 4_000];
    rand::rng().fill_bytes(&mut random);
    bytes.extend(random);
    bytes
}

/// Composes an email with every field, signed with `key`, and hands it to `check` with
/// the attachments' bytes.
fn with_every_field(keys: &[SigningKey], check: impl FnOnce(Vec<u8>, &[u8], &[u8])) {
    let pdf = pdf();
    let png = png();
    let to = [
        Address {
            name: Some("Zoë Ångström"),
            email: "zoe@example.org",
        },
        Address {
            name: None,
            email: "plain@example.org",
        },
    ];
    let cc = [Address {
        name: Some("Bjørn Ødegård, Buchhaltung"),
        email: "bjorn@example.com",
    }];
    let reply_to = [Address {
        name: Some("Support über alles"),
        email: "support@customer.com",
    }];
    let attachments = [
        Attachment {
            filename: PDF_NAME,
            content_type: "application/pdf",
            content_id: None,
            bytes: &pdf,
        },
        Attachment {
            filename: "logo.png",
            content_type: "image/png",
            content_id: Some("logo@customer.com"),
            bytes: &png,
        },
    ];
    let headers = [
        ("X-Campaign", "spring-2026"),
        (
            "List-Unsubscribe",
            "<mailto:unsubscribe@customer.com>, <https://customer.com/u/42>",
        ),
        ("X-Tag", "one"),
        ("X-Tag", "two"),
    ];
    let email = Email {
        from: Address {
            name: Some("Zoë Ångström"),
            email: "billing@customer.com",
        },
        to: &to,
        cc: &cc,
        reply_to: &reply_to,
        subject: SUBJECT,
        text: Some(TEXT),
        html: Some(HTML),
        attachments: &attachments,
        headers: &headers,
        message_id: "<em_0123456789abcdef@customer.com>",
        date: 1_790_000_000_000,
    };
    let message = compose_email(&email, keys).unwrap();
    check(message, &pdf, &png);
}

fn header<'a>(read: &'a Value, name: &str) -> Vec<&'a str> {
    read["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap())
        .collect()
}

#[test]
fn a_mail_client_reads_back_every_field_exactly() {
    if !importable("email.policy") {
        return;
    }
    with_every_field(&[], |message, pdf, png| {
        let read = read(&message);
        assert_eq!(read["defects"], json!([]), "{read:#}");
        assert!(read["longest_line"].as_u64().unwrap() <= 998);

        assert_eq!(read["subject"], SUBJECT);
        assert_eq!(
            read["from"],
            json!([{"name": "Zoë Ångström", "email": "billing@customer.com"}])
        );
        assert_eq!(
            read["to"],
            json!([
                {"name": "Zoë Ångström", "email": "zoe@example.org"},
                {"name": "", "email": "plain@example.org"}
            ])
        );
        assert_eq!(
            read["cc"],
            json!([{"name": "Bjørn Ødegård, Buchhaltung", "email": "bjorn@example.com"}])
        );
        assert_eq!(
            read["reply_to"],
            json!([{"name": "Support über alles", "email": "support@customer.com"}])
        );
        assert_eq!(
            header(&read, "Message-ID"),
            ["<em_0123456789abcdef@customer.com>"]
        );
        assert_eq!(header(&read, "Date").len(), 1);
        assert_eq!(header(&read, "MIME-Version"), ["1.0"]);
        assert_eq!(header(&read, "X-Campaign"), ["spring-2026"]);
        assert_eq!(
            header(&read, "List-Unsubscribe"),
            ["<mailto:unsubscribe@customer.com>, <https://customer.com/u/42>"]
        );
        assert_eq!(header(&read, "X-Tag"), ["one", "two"]);
        assert!(header(&read, "Bcc").is_empty());
        let raw = String::from_utf8_lossy(&message);
        assert!(!raw.contains(BCC));
        // Non-ASCII travels encoded: the message needs no SMTPUTF8.
        let (head, _) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.is_ascii(), "{head}");

        assert_eq!(
            read["tree"],
            json!({"type": "multipart/mixed", "children": [
                {"type": "multipart/related", "children": [
                    {"type": "multipart/alternative", "children": [
                        {"type": "text/plain"},
                        {"type": "text/html"}
                    ]},
                    {"type": "image/png"}
                ]},
                {"type": "application/pdf"}
            ]})
        );
        let parts = read["parts"].as_array().unwrap();
        assert_eq!(parts[0]["text"], TEXT);
        assert_eq!(parts[1]["text"], HTML);

        let logo = &parts[2];
        assert_eq!(logo["content_id"], "<logo@customer.com>");
        assert_eq!(logo["disposition"], "inline");
        assert_eq!(logo["filename"], "logo.png");
        assert_eq!(logo["sha256"], sha256(png));
        assert!(HTML.contains("cid:logo@customer.com"));

        let invoice = &parts[3];
        assert_eq!(invoice["type"], "application/pdf");
        assert_eq!(invoice["disposition"], "attachment");
        assert_eq!(invoice["filename"], PDF_NAME);
        assert_eq!(invoice["transfer_encoding"], "base64");
        assert_eq!(invoice["size"], pdf.len());
        assert_eq!(invoice["sha256"], sha256(pdf));
        // Readers that ignore RFC 2231 still get a usable ASCII name.
        assert!(raw.contains("name=\"Rechnung M_rz 2026 _ Zo_.pdf\""));
        assert!(
            raw.contains("filename*=utf-8''Rechnung%20M%C3%A4rz%202026%20%E2%80%93%20Zo%C3%AB.pdf")
        );
    });
}

#[test]
fn dkim_verifies_and_covers_what_the_reader_sees() {
    if !importable("dkim") || !importable("email.policy") {
        return;
    }
    let (key, public) = dkim_key("mr0123456789abcdef");
    let verifies = |message: &[u8]| {
        judge(
            "dkim_check_key.py",
            &["customer.com", "mr0123456789abcdef", &public],
            message,
        )
        .0
    };
    with_every_field(std::slice::from_ref(&key), |message, _, _| {
        assert!(verifies(&message));
        let raw = String::from_utf8(message.clone()).unwrap();
        let head = raw.split("\r\n\r\n").next().unwrap().replace("\r\n\t", " ");
        let signature = head.split("\r\n").next().unwrap();
        assert!(signature.starts_with("DKIM-Signature: "));
        assert!(signature.contains(" d=customer.com;"));
        // Every header is signed, and those that say who and what once more than they
        // appear, so that none can be added after.
        for names in [
            "from:from",
            "to:to",
            "cc:cc",
            "reply-to:reply-to",
            "subject:subject",
        ] {
            assert!(signature.contains(names), "{names}: {signature}");
        }
        let signed_names = signature
            .split(" h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert!(!signed_names.contains("bcc"), "{signed_names}");
        let added = raw.replacen("\r\nFrom: ", "\r\nSubject: Pay now\r\nFrom: ", 1);
        assert!(!verifies(added.as_bytes()), "a second Subject");
        // The signed message is still the same message to a reader.
        assert_eq!(read(&message)["subject"], SUBJECT);

        // What a forger would change, the signature no longer covers.
        for (original, forged) in [
            ("bjorn@example.com", "bjorn@evil.example"),
            ("support@customer.com", "support@evil.example"),
            ("billing@customer.com", "billing@evi1.example"),
            (
                "<em_0123456789abcdef@customer.com>",
                "<em_forged@customer.com>",
            ),
            ("%PDF-1.7", "%PDF-1.6"),
        ] {
            let forged_message = if original.starts_with('%') {
                // The PDF travels base64: change a byte of its first encoded line.
                let at = raw.find("Content-Type: application/pdf").unwrap();
                let body = at + raw[at..].find("\r\n\r\n").unwrap() + 4;
                let mut bytes = message.clone();
                bytes[body] = if bytes[body] == b'A' { b'B' } else { b'A' };
                bytes
            } else {
                assert!(raw.contains(original), "{original}");
                raw.replacen(original, forged, 1).into_bytes()
            };
            assert!(!verifies(&forged_message), "{original} → {forged}");
        }
        let subject_forged = {
            let mut lines: Vec<&str> = raw.split("\r\n").collect();
            let at = lines
                .iter()
                .position(|l| l.starts_with("Subject:"))
                .unwrap();
            lines[at] = "Subject: =?utf-8?q?Zahlung_dringend?=";
            lines.join("\r\n")
        };
        assert!(!verifies(subject_forged.as_bytes()));
    });
}

#[test]
fn a_text_only_email_is_one_plain_part() {
    if !importable("email.policy") {
        return;
    }
    let to = [Address {
        name: None,
        email: "zoe@example.org",
    }];
    let email = Email {
        from: Address {
            name: None,
            email: "billing@customer.com",
        },
        to: &to,
        cc: &[],
        reply_to: &[],
        subject: "Plain",
        text: Some("Just text.\n"),
        html: None,
        attachments: &[],
        headers: &[],
        message_id: "<em_plain@customer.com>",
        date: 1_790_000_000_000,
    };
    let read = read(&compose_email(&email, &[]).unwrap());
    assert_eq!(read["tree"], json!({"type": "text/plain"}));
    let text = read["parts"][0]["text"].as_str().unwrap();
    assert_eq!(text.trim_end(), "Just text.");
    assert_eq!(read["defects"], json!([]));
}

/// A tenant chooses display names, file names and the subject; none of them can add an
/// address, a header or a part that a reader would believe.
#[test]
fn values_a_tenant_chooses_stay_inside_their_field() {
    if !importable("email.policy") {
        return;
    }
    let to = [Address {
        name: Some("\"CEO\" <ceo@bank.example>, Mallory"),
        email: "zoe@example.org",
    }];
    let attachments = [Attachment {
        filename: "a\"; filename=\"evil.exe",
        content_type: "application/pdf",
        content_id: None,
        bytes: b"%PDF",
    }];
    let cc = [Address {
        name: Some("=?utf-8?q?The_Boss?="),
        email: "cc@example.org",
    }];
    let email = Email {
        from: Address {
            name: Some("Billing <ceo@bank.example>"),
            email: "billing@customer.com",
        },
        to: &to,
        cc: &cc,
        reply_to: &[],
        subject: "=?utf-8?q?not_decoded_twice?= Bcc: x@example.net",
        text: Some("--boundary\r\nContent-Type: text/html\r\n\r\n<script>"),
        html: None,
        attachments: &attachments,
        headers: &[],
        message_id: "<em_hostile@customer.com>",
        date: 1_790_000_000_000,
    };
    let message = compose_email(&email, &[]).unwrap();
    let read = read(&message);
    assert_eq!(read["defects"], json!([]));
    assert_eq!(
        read["from"],
        json!([{"name": "Billing <ceo@bank.example>", "email": "billing@customer.com"}])
    );
    assert_eq!(
        read["to"],
        json!([{"name": "\"CEO\" <ceo@bank.example>, Mallory", "email": "zoe@example.org"}])
    );
    assert_eq!(
        read["subject"],
        "=?utf-8?q?not_decoded_twice?= Bcc: x@example.net"
    );
    assert_eq!(
        read["cc"],
        json!([{"name": "=?utf-8?q?The_Boss?=", "email": "cc@example.org"}])
    );
    assert!(header(&read, "Bcc").is_empty());
    assert_eq!(
        read["tree"],
        json!({"type": "multipart/mixed", "children": [
            {"type": "text/plain"}, {"type": "application/pdf"}
        ]})
    );
    assert_eq!(read["parts"][1]["filename"], "a\"; filename=\"evil.exe");

    // And what cannot be written safely is refused, not mended.
    let headers = [("X-Note", "hi\r\nBcc: x@example.net")];
    assert!(
        compose_email(
            &Email {
                headers: &headers,
                ..email
            },
            &[]
        )
        .is_err()
    );
    let headers = [("Bcc", "x@example.net")];
    assert!(
        compose_email(
            &Email {
                headers: &headers,
                ..email
            },
            &[]
        )
        .is_err()
    );
    assert!(
        compose_email(
            &Email {
                subject: "hi\r\nBcc: x@example.net",
                ..email
            },
            &[]
        )
        .is_err()
    );
}
