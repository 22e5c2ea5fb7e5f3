//! Property tests of the parsers: whatever the input, no panic; what they accept keeps
//! its meaning when parsed again; over-long and control-character input is refused.

use mailroom::http::Page;
use mailroom::types::DomainName;
use mailroom::types::EmailAddress;
use mailroom::types::LocalPart;
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    // `--` in the third and fourth places marks an IDNA label (`xn--…`), which must then
    // be valid Punycode: a random one is not a valid name.
    "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
        .prop_filter("reserved for IDNA labels", |l| l.get(2..4) != Some("--"))
}

fn domain() -> impl Strategy<Value = String> {
    (prop::collection::vec(label(), 1..4), "[a-z]{2,10}")
        .prop_map(|(labels, top)| format!("{}.{top}", labels.join(".")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn no_parser_panics(input in any::<String>()) {
        let _ = DomainName::parse(&input);
        let _ = EmailAddress::parse(&input);
        let _ = LocalPart::parse(&input);
    }

    #[test]
    fn valid_domains_round_trip(name in domain()) {
        let parsed = DomainName::parse(&name.to_uppercase()).unwrap();
        prop_assert_eq!(parsed.as_str(), name.as_str());
        prop_assert_eq!(DomainName::parse(parsed.as_str()).unwrap(), parsed);
    }

    #[test]
    fn valid_addresses_round_trip(local in "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[A-Za-z0-9_-]{1,10}){0,2}", name in domain()) {
        let address = EmailAddress::parse(&format!("{local}@{name}")).unwrap();
        prop_assert_eq!(address.to_string(), format!("{local}@{name}"));
        prop_assert_eq!(EmailAddress::parse(&address.to_string()).unwrap(), address.clone());
        // A mailbox's local part is a folder name as well: `/` is refused there alone.
        match LocalPart::parse(&local) {
            Ok(local_part) => prop_assert_eq!(local_part.as_str(), local.to_ascii_lowercase()),
            Err(_) => prop_assert!(local.contains('/')),
        }
    }

    #[test]
    fn control_characters_are_refused(name in domain(), at in 0usize..10, control in prop::sample::select(vec!['\0', '\r', '\n', '\t', '\u{7f}', '\u{1b}'])) {
        let mut with_control: Vec<char> = format!("ab{name}").chars().collect();
        let position = at.min(with_control.len());
        with_control.insert(position, control);
        let text: String = with_control.into_iter().collect();
        let address = format!("a{text}@{name}");
        let local = format!("a{control}b");
        let domain_refused = DomainName::parse(&text).is_err() || !text.trim().contains(control);
        prop_assert!(domain_refused);
        prop_assert!(EmailAddress::parse(&address).is_err());
        prop_assert!(LocalPart::parse(&local).is_err());
    }

    #[test]
    fn over_long_input_is_refused(extra in 1usize..200, name in domain()) {
        let long_local = "a".repeat(64 + extra);
        let long_address = format!("{long_local}@{name}");
        let long_name = format!("{}{name}", "abcdefghij.".repeat(24 + extra / 10));
        let long_label = format!("{}.{name}", "a".repeat(63 + extra));
        prop_assert!(LocalPart::parse(&long_local).is_err());
        prop_assert!(EmailAddress::parse(&long_address).is_err());
        prop_assert!(DomainName::parse(&long_name).is_err());
        prop_assert!(DomainName::parse(&long_label).is_err());
    }

    #[test]
    fn paging_accepts_exactly_its_range(limit in any::<Option<i64>>(), offset in any::<Option<i64>>()) {
        let page = Page { limit, offset };
        let valid = limit.is_none_or(|l| (1..=200).contains(&l)) && offset.is_none_or(|o| o >= 0);
        match page.parse() {
            Ok((l, o)) => {
                prop_assert!(valid);
                prop_assert_eq!(l, limit.unwrap_or(50));
                prop_assert_eq!(o, offset.unwrap_or(0));
            }
            Err(error) => {
                prop_assert!(!valid);
                prop_assert_eq!(error.status.as_u16(), 422);
            }
        }
    }

    #[test]
    fn secrets_carry_256_bits_and_their_digest_is_stable(prefix in "[a-z]{2,4}") {
        let secret = mailroom::store::secrets::new_secret(&prefix);
        let head = format!("{prefix}_");
        let random = secret.strip_prefix(&head).unwrap();
        prop_assert_eq!(random.len(), 64);
        prop_assert!(random.bytes().all(|b| b.is_ascii_hexdigit()));
        prop_assert_eq!(mailroom::store::secrets::digest(&secret), mailroom::store::secrets::digest(&secret));
    }
}
