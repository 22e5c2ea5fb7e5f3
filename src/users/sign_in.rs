//! Trying a user's password: the one path by which a password is checked, for
//! `/auth/login`, the sign-in form of the invitation page and a password change, so that
//! each counts against the same limits.

use std::net::IpAddr;

use super::store;
use crate::http::ApiError;
use crate::store::Db;
use crate::store::passwords::{self, Priority};

/// Failed sign-ins allowed in a window, per email and per client address.
const WINDOW: i64 = 15 * 60_000;
const PER_EMAIL: i64 = 5;
const PER_ADDRESS: i64 = 20;

/// What a client's limits count by: its IPv4 address, or its IPv6 /64 (one host holds a
/// whole /64, and would otherwise have more addresses than any limit).
pub fn client_subject(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
    }
}

/// Who tries a password: a client signing in from an address, or a user already signed
/// in (changing their password), whose tries are counted apart, so that strangers'
/// failed logins cannot lock them out of it.
#[derive(Debug, Clone, Copy)]
pub enum Trier {
    Client(IpAddr),
    SignedIn,
}

/// The id of the user whose email and password these are. Each try is counted before the
/// password is hashed, so that concurrent guesses cannot slip past the limit; an unknown
/// email takes as long as a wrong password and gets the same answer.
pub async fn sign_in(
    db: &Db,
    trier: Trier,
    email: &str,
    password: &str,
) -> Result<String, ApiError> {
    let now = db.now();
    let email_key = store::email_key(email);
    let (limits, priority) = match trier {
        Trier::Client(client) => (
            vec![
                (format!("email:{email_key}"), PER_EMAIL),
                (format!("ip:{}", client_subject(client)), PER_ADDRESS),
            ],
            Priority::Anonymous,
        ),
        Trier::SignedIn => (
            vec![(format!("user:{email_key}"), PER_EMAIL)],
            Priority::Authenticated,
        ),
    };
    let mut attempts = Vec::new();
    for (subject, limit) in &limits {
        let (id, count, first) = store::begin_attempt(db, subject, now.0 - WINDOW, now).await?;
        attempts.push(id);
        if count > *limit {
            store::forget_attempts(db, &attempts).await?;
            return Err(ApiError::too_many(
                "too_many_failed_logins",
                "too many failed logins; try again later",
                first + WINDOW - now.0,
            ));
        }
    }
    let user = store::by_email(db, email).await?;
    let verified = match &user {
        Some(user) => passwords::verify(password, &user.password_hash, priority).await,
        None => passwords::hash(password, priority).await.map(|_| false),
    };
    let verified = match verified {
        Ok(verified) => verified,
        // Busy hashers tried nothing: that is not a failed login.
        Err(error) => {
            store::forget_attempts(db, &attempts).await?;
            return Err(error.into());
        }
    };
    match user.filter(|_| verified) {
        Some(user) => {
            store::forget_attempts(db, &attempts).await?;
            Ok(user.id)
        }
        None => Err(ApiError::unauthorized(
            "invalid_login",
            "the email or the password is wrong",
        )),
    }
}
