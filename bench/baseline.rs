//! The limit of the read path on this stack: the same SELECTs as mailroom's mailbox
//! reads, from the same database through the same pool settings, with bare axum + sqlx
//! and nothing else (no auth, no tenancy, no middleware).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use mailroom::mailboxes::model::Mailbox;
use mailroom::store::Db;
use serde::Deserialize;
use serde_json::{Value, json};

const SELECT: &str = "SELECT m.id, m.user_id, d.name AS domain, m.local_part, m.address, \
                      m.display_name, m.status, m.is_default, m.quota_mb, m.created_at, m.updated_at \
                      FROM mailboxes m JOIN domains d ON d.id = m.domain_id";

pub async fn serve(database_url: &str, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let db = Db::connect(database_url).await?;
    let app = Router::new()
        .route("/mailboxes/{id}", get(one))
        .route("/domains/{name}/mailboxes", get(page))
        .with_state(db);
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
