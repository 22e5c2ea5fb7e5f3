//! The limit of the read path and of sending on this stack: the same SELECTs as
//! mailroom's mailbox reads, and the same rows as an accepted email, in the same database
//! through the same pool settings, with bare axum + sqlx and nothing else (no auth, no
//! tenancy, no validation, no middleware).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use mailroom::mailboxes::model::Mailbox;
use mailroom::store::crypto::MasterKey;
use mailroom::store::{Db, new_id};
use serde::Deserialize;
use serde_json::{Value, json};

const SELECT: &str = "SELECT m.id, m.user_id, d.name AS domain, m.local_part, m.address, \
                      m.display_name, m.status, m.is_default, m.quota_mb, m.created_at, m.updated_at \
                      FROM mailboxes m JOIN domains d ON d.id = m.domain_id";

#[derive(Clone)]
struct Baseline {
    db: Db,
    /// The account the emails are written to (the rows reference it).
    account_id: String,
    /// mailroom's own key: the worker beside it delivers these emails too.
    master_key: std::sync::Arc<MasterKey>,
}

impl axum::extract::FromRef<Baseline> for Db {
    fn from_ref(baseline: &Baseline) -> Db {
        baseline.db.clone()
    }
}

pub async fn serve(
    database_url: &str,
    listen: std::net::SocketAddr,
    account_id: String,
) -> anyhow::Result<()> {
    let db = Db::connect(database_url).await?;
    let settings = mailroom::config::Settings::load(None, std::env::vars())?.settings;
    let state = Baseline {
        db,
        account_id,
        master_key: std::sync::Arc::new(MasterKey::load(&settings)?),
    };
    let app = Router::new()
        .route("/mailboxes/{id}", get(one))
        .route("/domains/{name}/mailboxes", get(page))
        .route("/emails", post(send))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

fn failed(error: sqlx::Error) -> StatusCode {
    eprintln!("{error}");
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn one(State(db): State<Db>, Path(id): Path<i64>) -> Result<Json<Value>, StatusCode> {
    let mailbox: Mailbox = sqlx::query_as(&format!("{SELECT} WHERE m.id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await
        .map_err(failed)?
        .ok_or(StatusCode::NOT_FOUND)?;
    Ok(Json(json!({ "account": mailbox })))
}

#[derive(Deserialize)]
struct Paging {
    #[serde(default = "fifty")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

fn fifty() -> i64 {
    50
}

async fn page(
    State(db): State<Db>,
    Path(name): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, StatusCode> {
    let items: Vec<Mailbox> = sqlx::query_as(&format!(
        "{SELECT} WHERE m.domain_id IN (SELECT id FROM domains WHERE name = $1) \
         ORDER BY m.id LIMIT $2 OFFSET $3"
    ))
    .bind(&name)
    .bind(paging.limit)
    .bind(paging.offset)
    .fetch_all(&db.pool)
    .await
    .map_err(failed)?;
    Ok(Json(
        json!({ "items": items, "limit": paging.limit, "offset": paging.offset }),
    ))
}

#[derive(Deserialize)]
struct SendEmail {
    from: String,
    to: String,
    subject: String,
    text: String,
}

/// The rows mailroom writes for one accepted email with an `Idempotency-Key`: the count
/// of the minute's sends, the email (its body sealed), its recipient, its `queued` event
/// and the key's stored answer, in one transaction.
async fn send(
    State(state): State<Baseline>,
    headers: HeaderMap,
    Json(email): Json<SendEmail>,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .ok_or(StatusCode::BAD_REQUEST)?
        .to_string();
    let now = state.db.now().0;
    let id = new_id("em");
    let domain = email.from.rsplit('@').next().unwrap_or_default();
    let message_id = format!("<{}@{domain}>", &id[3..]);
    let body = serde_json::to_vec(&json!({ "text": email.text, "html": null,
                                           "attachments": [], "headers": [] }))
    .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let sealed = state.master_key.seal(&body, &format!("outbox:{id}"));
    let answer = json!({ "id": id, "status": "queued",
                         "recipients": [{ "email": email.to, "type": "to", "status": "queued" }] });
    let rows = Rows {
        id,
        key,
        from: email.from,
        to: email.to,
        subject: email.subject,
        sealed,
        message_id,
        answer: answer.to_string(),
        now,
    };
    // On its own task: wrk closes its connections mid-request at the end of a run, and a
    // transaction dropped half-way would keep SQLite's write lock.
    tokio::spawn(write(state, rows))
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .map_err(failed)?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

struct Rows {
    id: String,
    key: String,
    from: String,
    to: String,
    subject: String,
    sealed: String,
    message_id: String,
    answer: String,
    now: i64,
}

async fn write(state: Baseline, rows: Rows) -> sqlx::Result<()> {
    let Rows {
        id,
        key,
        from,
        to,
        subject,
        sealed,
        message_id,
        answer,
        now,
    } = rows;
    let account = state.account_id.as_str();
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO send_counts (account_id, minute, sent) VALUES ($1, $2, 1) \
         ON CONFLICT (account_id, minute) DO UPDATE SET sent = send_counts.sent + excluded.sent",
    )
    .bind(account)
    .bind(now.div_euclid(60_000))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO emails (id, account_id, kind, from_address, subject, body, message_id, tags, \
         status, attempts, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, 'email', $3, $4, $5, $6, '{}', 'queued', 0, $7, $7, $7)",
    )
    .bind(&id)
    .bind(account)
    .bind(&from)
    .bind(&subject)
    .bind(sealed)
    .bind(&message_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO email_recipients (email_id, position, address, type, status, attempts, \
         next_attempt_at, updated_at) VALUES ($1, 0, $2, 'to', 'queued', 0, $3, $3)",
    )
    .bind(&id)
    .bind(&to)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO events (id, account_id, email_id, recipient, type, at) \
         VALUES ($1, $2, $3, $4, 'queued', $5)",
    )
    .bind(new_id("evt"))
    .bind(account)
    .bind(&id)
    .bind(&to)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO idempotency_keys (account_id, idem_key, request_hash, status, response, \
         created_at, expires_at) VALUES ($1, $2, $3, 202, $4, $5, $6)",
    )
    .bind(account)
    .bind(&key)
    .bind(hex::encode([0u8; 32]))
    .bind(&answer)
    .bind(now)
    .bind(now + 24 * 3_600_000)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
