//! SMTP settings as the API takes and shows them (nodemailer's shape), and their rules.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::ApiError;
use crate::mail::destination::{Policy, RULE};
use crate::mail::transport::Step;
use crate::types::{DomainName, EmailAddress};

/// What answers show in place of a stored password.
pub const MASK: &str = "********";

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DomainParam {
    /// The domain the settings are for (required).
    pub domain: Option<String>,
}

impl DomainParam {
    pub fn parse(&self) -> Result<DomainName, ApiError> {
        let given = self.domain.as_deref().unwrap_or("").trim();
        if given.is_empty() {
            return Err(ApiError::bad_request(
                "missing_parameter",
                "the domain parameter is required: ?domain=customer.com",
            )
            .with_param("domain"));
        }
        DomainName::parse(given).map_err(|e| ApiError::invalid("domain", e))
    }
}

#[derive(Deserialize, ToSchema)]
pub struct SettingsInput {
    /// Only `smtp`.
    pub provider: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The default From, an address on the domain; empty for none.
    #[serde(default)]
    pub from: Option<String>,
    pub options: OptionsInput,
}

#[derive(Deserialize, ToSchema)]
pub struct OptionsInput {
    /// The relay's host name or IP address.
    pub host: String,
    /// 1 to 65535.
    pub port: i64,
    /// `true`: TLS from the first byte (port 465); `false`: STARTTLS when offered.
    #[serde(default)]
    pub secure: bool,
    /// Log the SMTP dialogue (never the password).
    #[serde(default)]
    pub debug: bool,
    #[serde(default)]
    pub tls: Option<TlsInput>,
    #[serde(default)]
    pub auth: Option<AuthInput>,
}

#[derive(Deserialize, ToSchema)]
pub struct TlsInput {
    /// `false` accepts any certificate: any authority, any names, expired or not. `true`
    /// (the default) accepts only one for `host`, valid now, from a trusted authority.
    #[serde(rename = "rejectUnauthorized", default)]
    pub reject_unauthorized: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct AuthInput {
    #[serde(default)]
    pub user: Option<String>,
    /// The password; `********` (as answers show it) keeps the stored one, `""` removes it.
    #[serde(default)]
    pub pass: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SmtpSettings {
    /// 24 hex digits.
    #[serde(rename = "_id")]
    pub id: String,
    pub provider: String,
    pub description: String,
    pub from: String,
    pub options: OptionsOutput,
    pub domain: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OptionsOutput {
    pub host: String,
    pub port: i64,
    pub secure: bool,
    pub debug: bool,
    pub tls: TlsOutput,
    pub auth: AuthOutput,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TlsOutput {
    #[serde(rename = "rejectUnauthorized")]
    pub reject_unauthorized: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthOutput {
    pub user: String,
    /// `********` when a password is stored, else empty: it is never shown.
    pub pass: String,
}

#[derive(Serialize, ToSchema)]
pub struct Removed {
    /// `OK`
    pub status: &'static str,
    #[serde(rename = "Info")]
    pub info: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct TestReport {
    /// Whether every step passed.
    pub ok: bool,
    pub steps: Vec<Step>,
}

pub enum Password {
    Keep,
    Remove,
    Set(String),
}

/// The input, checked field by field.
pub struct Valid {
    pub description: String,
    pub from: String,
    pub host: String,
    pub port: i64,
    pub secure: bool,
    pub debug: bool,
    pub reject_unauthorized: bool,
    pub user: String,
    pub password: Password,
}

/// The input, checked field by field; `policy` says where a relay may connect (the
/// connect-time check is the real guard: a name is judged by what it resolves to then).
pub fn validate(
    input: SettingsInput,
    domain: &DomainName,
    policy: &Policy,
) -> Result<Valid, ApiError> {
    if input.provider != "smtp" {
        return Err(ApiError::invalid(
            "provider",
            format!("provider must be smtp, not `{}`", input.provider),
        ));
    }
    let description = input.description.unwrap_or_default().trim().to_string();
    if description.chars().count() > 255 || description.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "description",
            "description must be at most 255 characters, without control characters",
        ));
    }
    let from = match input.from.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(given) => {
            let address = EmailAddress::parse(given).map_err(|e| ApiError::invalid("from", e))?;
            if address.domain() != domain {
                return Err(ApiError::invalid(
                    "from",
                    format!("from must be an address on {domain}"),
                ));
            }
            address.to_string()
        }
    };
    let options = input.options;
    let host = parse_host(&options.host).map_err(|e| ApiError::invalid("options.host", e))?;
    if !(1..=65535).contains(&options.port) {
        return Err(ApiError::invalid(
            "options.port",
            "port must be between 1 and 65535",
        ));
    }
    let port = options.port as u16;
    let port_allowed = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            if !policy.address_may_be_saved(ip) {
                return Err(ApiError::invalid(
                    "options.host",
                    format!("{ip} is not a public address: {RULE}"),
                ));
            }
            policy.address_may_use(ip, port)
        }
        Err(_) => policy.name_may_use(port),
    };
    if !port_allowed {
        return Err(ApiError::invalid(
            "options.port",
            format!("port {port} is not an SMTP port: {RULE}"),
        ));
    }
    let (user, password) = match options.auth {
        None => (String::new(), Password::Keep),
        Some(auth) => {
            let user = auth.user.unwrap_or_default().trim().to_string();
            if user.len() > 255 || user.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "options.auth.user",
                    "user must be at most 255 characters, without control characters",
                ));
            }
            let password = match auth.pass {
                None => Password::Keep,
                Some(pass) if pass == MASK => Password::Keep,
                Some(pass) if pass.is_empty() => Password::Remove,
                Some(pass) if pass.len() > 1024 || pass.contains(['\r', '\n', '\0']) => {
                    return Err(ApiError::invalid(
                        "options.auth.pass",
                        "pass must be at most 1024 characters, on one line",
                    ));
                }
                Some(pass) => Password::Set(pass),
            };
            (user, password)
        }
    };
    Ok(Valid {
        description,
        from,
        host,
        port: options.port,
        secure: options.secure,
        debug: options.debug,
        reject_unauthorized: options
            .tls
            .and_then(|t| t.reject_unauthorized)
            .unwrap_or(true),
        user,
        password,
    })
}

/// A host name (one label or more) or an IP address.
fn parse_host(input: &str) -> Result<String, String> {
    let host = input.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() {
        return Ok(bare.to_string());
    }
    if host.is_empty() || host.len() > 253 {
        return Err("host must be a host name or an IP address".to_string());
    }
    // `2130706433`, `0x7f000001`, `017700000001` or `127.1` are 127.0.0.1 to a resolver:
    // an address in disguise, which no mail server's name looks like.
    let numeric = |label: &str| {
        let hex = label
            .strip_prefix("0x")
            .map(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        hex.unwrap_or(!label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
    };
    if host.split('.').all(numeric) {
        return Err(format!(
            "`{}` is an address in disguise: write an IPv4 address as four decimal numbers (such as 192.0.2.10), or a host name",
            input.trim()
        ));
    }
    for label in host.split('.') {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "`{}` is not a host name or an IP address",
                input.trim()
            ));
        }
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::parse_host;

    #[test]
    fn hosts_are_names_or_addresses() {
        assert_eq!(parse_host("SMTP.Example.com.").unwrap(), "smtp.example.com");
        assert_eq!(parse_host("mailhog").unwrap(), "mailhog");
        assert_eq!(parse_host("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(parse_host("[::1]").unwrap(), "::1");
        for bad in [
            "",
            "a b",
            "-x.com",
            "x..com",
            "smtp://x.com",
            "x_y.com",
            "2130706433",
            "0x7f000001",
            "017700000001",
            "127.1",
            "0x7f.0.0.1",
        ] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }
}
