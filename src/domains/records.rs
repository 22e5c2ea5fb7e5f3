//! The DNS records a domain needs (the three DKIM CNAMEs) and advises (SPF, DMARC, MX),
//! and how what DNS answered compares with them.

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Dkim,
    Spf,
    Dmarc,
    Mx,
}

/// A record as the tenant should publish it.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub purpose: Purpose,
    pub record_type: &'static str,
    pub name: String,
    pub value: String,
    pub required: bool,
}

/// What the last check of one record found.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub values: Vec<String>,
    /// Set when the values stood at another name than the one asked.
    pub at: Option<String>,
    /// Set when the lookup gave no trustworthy answer.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// DNS holds the record as wanted.
    Verified,
    /// DNS has nothing at the name.
    NotFound,
    /// DNS holds something else at the name.
    Mismatch,
    /// The lookup timed out or failed; nothing is concluded from it.
    LookupFailed,
    /// Not looked up yet.
    NotChecked,
}

/// A record in API answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DnsRecord {
    /// `CNAME`, `TXT` or `MX`.
    #[serde(rename = "type")]
    pub record_type: &'static str,
    pub name: String,
    pub value: String,
    /// Whether the domain's verification depends on it; the others are advice.
    pub required: bool,
    pub status: RecordStatus,
    /// What DNS answered at the last check.
    pub found: Vec<String>,
    /// What to change, when the record is not right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// The DKIM CNAMEs that prove a domain: one per token, into mailroom's zone.
pub fn dkim_cnames(domain: &str, tokens: &[String], settings: &Settings) -> Vec<Wanted> {
    let zone = settings.dkim_zone.trim_end_matches('.');
    tokens
        .iter()
        .map(|token| Wanted {
            purpose: Purpose::Dkim,
            record_type: "CNAME",
            name: format!("{token}._domainkey.{domain}"),
            value: format!("{token}.{zone}"),
            required: true,
        })
        .collect()
}

pub fn wanted(domain: &str, tokens: &[String], settings: &Settings) -> Vec<Wanted> {
    let mut records = dkim_cnames(domain, tokens, settings);
    // Only an include that authorises something is advised: one that answers nothing
    // would make the tenant's SPF a permanent error.
    if let Some(include) = settings.spf_include() {
        records.push(Wanted {
            purpose: Purpose::Spf,
            record_type: "TXT",
            name: domain.to_string(),
            value: format!("v=spf1 include:{include} ~all"),
            required: false,
        });
    }
    // Reports go only to an address the operator said receives them.
    let dmarc = match &settings.dmarc_rua {
        Some(address) => format!("v=DMARC1; p=none; rua=mailto:{address}"),
        None => "v=DMARC1; p=none".to_string(),
    };
    records.push(Wanted {
        purpose: Purpose::Dmarc,
        record_type: "TXT",
        name: format!("_dmarc.{domain}"),
        value: dmarc,
        required: false,
    });
    if let Some(mx_host) = &settings.mx_host {
        records.push(Wanted {
            purpose: Purpose::Mx,
            record_type: "MX",
            name: domain.to_string(),
            value: format!("10 {}", mx_host.trim_end_matches('.')),
            required: false,
        });
    }
    records
}

/// Keeps, of the TXT values at a name, those the record is about.
pub fn relevant(purpose: Purpose, values: Vec<String>) -> Vec<String> {
    let prefix = match purpose {
        Purpose::Spf => "v=spf1",
        Purpose::Dmarc => "v=dmarc1",
        Purpose::Dkim | Purpose::Mx => return values,
    };
    values
        .into_iter()
        .filter(|v| v.trim().to_ascii_lowercase().starts_with(prefix))
        .collect()
}

fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

pub fn evaluate(
    wanted: &Wanted,
    found: Option<&Found>,
    domain: &str,
    settings: &Settings,
) -> DnsRecord {
    let (status, found_values, hint) = match found {
        None => (RecordStatus::NotChecked, vec![], None),
        Some(Found {
            error: Some(error), ..
        }) => (
            RecordStatus::LookupFailed,
            vec![format!("(no answer: {error})")],
            Some("DNS did not answer this time; the domain's status stays as it was".to_string()),
        ),
        Some(found) => {
            let (status, hint) = judge(wanted, found, domain, settings);
            let values = match &found.at {
                Some(at) => found
                    .values
                    .iter()
                    .map(|v| format!("{v} (at {at})"))
                    .collect(),
                None => found.values.clone(),
            };
            (status, values, hint)
        }
    };
    DnsRecord {
        record_type: wanted.record_type,
        name: wanted.name.clone(),
        value: wanted.value.clone(),
        required: wanted.required,
        status,
        found: found_values,
        hint,
    }
}

fn judge(
    wanted: &Wanted,
    found: &Found,
    domain: &str,
    settings: &Settings,
) -> (RecordStatus, Option<String>) {
    if let Some(at) = &found.at {
        let short = wanted
            .name
            .strip_suffix(&format!(".{domain}"))
            .unwrap_or(&wanted.name);
        return (
            RecordStatus::NotFound,
            Some(format!(
                "the record is at {at}: your DNS provider adds the domain to the name itself, \
                 so enter the name as `{short}` only"
            )),
        );
    }
    if found.values.is_empty() {
        return (
            RecordStatus::NotFound,
            Some(format!(
                "publish {} {} {}",
                wanted.name, wanted.record_type, wanted.value
            )),
        );
    }
    match wanted.purpose {
        Purpose::Dkim => {
            if found.values.iter().any(|v| same_name(v, &wanted.value)) {
                (RecordStatus::Verified, None)
            } else if found
                .values
                .iter()
                .any(|v| same_name(v, &format!("{}.{domain}", wanted.value)))
            {
                (
                    RecordStatus::Mismatch,
                    Some(format!(
                        "the target has your domain added to its end: enter it with a final dot, `{}.`",
                        wanted.value
                    )),
                )
            } else {
                (
                    RecordStatus::Mismatch,
                    Some(format!(
                        "the CNAME points elsewhere; point it to {}",
                        wanted.value
                    )),
                )
            }
        }
        Purpose::Spf => {
            let Some(include) = settings.spf_include() else {
                return (RecordStatus::Verified, None);
            };
            let include = format!("include:{include}");
            let has_include = found.values.iter().any(|v| {
                v.to_ascii_lowercase()
                    .split_whitespace()
                    .any(|term| term.trim_start_matches(['+', '~', '?']) == include)
            });
            if found.values.len() > 1 {
                (
                    RecordStatus::Mismatch,
                    Some("there is more than one SPF record; merge them into one".to_string()),
                )
            } else if has_include {
                (RecordStatus::Verified, None)
            } else {
                (
                    RecordStatus::Mismatch,
                    Some(format!("add `{include}` to your SPF record")),
                )
            }
        }
        Purpose::Dmarc => (RecordStatus::Verified, None),
        Purpose::Mx => {
            let host = wanted.value.split_whitespace().last().unwrap_or_default();
            if found.values.iter().any(|v| {
                v.split_whitespace()
                    .last()
                    .is_some_and(|h| same_name(h, host))
            }) {
                (RecordStatus::Verified, None)
            } else {
                (
                    RecordStatus::Mismatch,
                    Some(format!("add an MX record for {host}")),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            dkim_zone: "dkim.example.net".into(),
            spf_ips: vec!["192.0.2.0/24".into()],
            ..Settings::default()
        }
    }

    fn dkim(settings: &Settings) -> Wanted {
        wanted("customer.com", &["abc".to_string()], settings).remove(0)
    }

    fn found(values: &[&str]) -> Found {
        Found {
            values: values.iter().map(|v| v.to_string()).collect(),
            ..Found::default()
        }
    }

    #[test]
    fn a_cname_matches_ignoring_case_and_the_final_dot() {
        let s = settings();
        let record = evaluate(
            &dkim(&s),
            Some(&found(&["ABC.dkim.example.net."])),
            "customer.com",
            &s,
        );
        assert_eq!(record.status, RecordStatus::Verified);
        assert_eq!(record.name, "abc._domainkey.customer.com");
    }

    #[test]
    fn a_target_with_the_domain_appended_is_explained() {
        let s = settings();
        let record = evaluate(
            &dkim(&s),
            Some(&found(&["abc.dkim.example.net.customer.com"])),
            "customer.com",
            &s,
        );
        assert_eq!(record.status, RecordStatus::Mismatch);
        assert_eq!(record.found, vec!["abc.dkim.example.net.customer.com"]);
        assert!(record.hint.unwrap().contains("final dot"));
    }

    #[test]
    fn a_name_with_the_domain_doubled_is_explained() {
        let s = settings();
        let doubled = Found {
            values: vec!["abc.dkim.example.net".into()],
            at: Some("abc._domainkey.customer.com.customer.com".into()),
            error: None,
        };
        let record = evaluate(&dkim(&s), Some(&doubled), "customer.com", &s);
        assert_eq!(record.status, RecordStatus::NotFound);
        assert!(record.found[0].contains("customer.com.customer.com"));
        assert!(record.hint.unwrap().contains("`abc._domainkey`"));
    }

    #[test]
    fn a_failed_lookup_says_so_and_concludes_nothing() {
        let s = settings();
        let failed = Found {
            error: Some("the lookup timed out".into()),
            ..Found::default()
        };
        let record = evaluate(&dkim(&s), Some(&failed), "customer.com", &s);
        assert_eq!(record.status, RecordStatus::LookupFailed);
        assert!(record.found[0].contains("timed out"));
    }

    #[test]
    fn spf_needs_the_include_in_a_single_record() {
        let s = settings();
        let spf = wanted("customer.com", &[], &s).remove(0);
        assert_eq!(spf.purpose, Purpose::Spf);
        let ok = evaluate(
            &spf,
            Some(&found(&["v=spf1 mx include:spf.dkim.example.net -all"])),
            "customer.com",
            &s,
        );
        assert_eq!(ok.status, RecordStatus::Verified);
        let missing = evaluate(&spf, Some(&found(&["v=spf1 mx -all"])), "customer.com", &s);
        assert_eq!(missing.status, RecordStatus::Mismatch);
        let two = evaluate(
            &spf,
            Some(&found(&[
                "v=spf1 -all",
                "v=spf1 include:spf.dkim.example.net -all",
            ])),
            "customer.com",
            &s,
        );
        assert_eq!(two.status, RecordStatus::Mismatch);
    }

    #[test]
    fn no_spf_record_is_advised_when_nothing_would_be_authorised() {
        let s = Settings {
            spf_ips: vec![],
            ..settings()
        };
        let advised = wanted("customer.com", &[], &s);
        assert!(advised.iter().all(|w| w.purpose != Purpose::Spf));
        let s = Settings {
            spf_include: Some("_spf.operator.example".into()),
            ..s
        };
        let spf = wanted("customer.com", &[], &s).remove(0);
        assert_eq!(spf.value, "v=spf1 include:_spf.operator.example ~all");
    }

    #[test]
    fn dmarc_names_a_report_address_only_when_one_is_set() {
        let s = settings();
        let dmarc = |s: &Settings| {
            wanted("customer.com", &[], s)
                .into_iter()
                .find(|w| w.purpose == Purpose::Dmarc)
                .unwrap()
        };
        assert_eq!(dmarc(&s).value, "v=DMARC1; p=none");
        assert_eq!(dmarc(&s).name, "_dmarc.customer.com");
        let s = Settings {
            dmarc_rua: Some(
                crate::types::EmailAddress::parse("dmarc-reports@operator.example").unwrap(),
            ),
            ..s
        };
        assert_eq!(
            dmarc(&s).value,
            "v=DMARC1; p=none; rua=mailto:dmarc-reports@operator.example"
        );
    }
}
