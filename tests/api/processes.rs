//! Whole processes: a `kill -9` in the middle of a burst loses no committed change and no
//! email, and two instances on one PostgreSQL share the work and the limits.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::both_engines;
use crate::helpers::smtp::{Encryption, TestSmtp};
use crate::helpers::{Engine, ServerProcess, fresh_database_url, key_in, postgres_url};

both_engines!(a_crash_loses_no_committed_change_and_no_email);

const SECRET_KEY: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

fn start(dir: &TempDir, database: &str, relay: &TestSmtp) -> ServerProcess {
    let smtp = format!("smtp://127.0.0.1:{}?tls=none", relay.port);
    ServerProcess::serve_with(
        dir,
        database,
        &[
            ("MAILROOM_SMTP_URL", smtp.as_str()),
            ("MAILROOM_SECRET_KEY", SECRET_KEY),
            ("MAILROOM_SMTP_TIMEOUT", "3"),
            ("MAILROOM_MAIL_RETRY_SECONDS", "1"),
        ],
    )
}

/// A request of the burst, and whether mailroom answered that it committed it.
struct Sent {
    check: String,
    committed: bool,
}

/// Invitations and organization sender addresses, all at once, spread over `servers`.
async fn burst(servers: &[String], key: &str, entities: &[String], tag: &str) -> Vec<Sent> {
    let client = reqwest::Client::new();
    let mut requests = Vec::new();
    for i in 0..30 {
        let server = servers[i % servers.len()].clone();
        let request = client
            .post(format!("{server}/entities/invitations"))
            .bearer_auth(key)
            .json(&json!({"email": format!("{tag}-invitee{i}@example.org"), "role": "viewer"}));
        requests.push(tokio::spawn(async move {
            match request.send().await {
                Ok(response) if response.status() == 201 => {
                    let body: Value = response.json().await.unwrap();
                    Sent {
                        check: format!("/entities/invitations/{}", body["id"].as_str().unwrap()),
                        committed: true,
                    }
                }
                Ok(response) => Sent {
                    check: format!(
                        "{} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    ),
                    committed: false,
                },
                Err(error) => Sent {
                    check: error.to_string(),
                    committed: false,
                },
            }
        }));
    }
    for (i, entity) in entities.iter().enumerate() {
        let server = servers[i % servers.len()].clone();
        let path = format!("/v1/organizations/{entity}/email-address");
        let request = client
            .post(format!("{server}{path}"))
            .bearer_auth(key)
            .json(&json!({"email": format!("{tag}-sender{i}@example.org")}));
        requests.push(tokio::spawn(async move {
            match request.send().await {
                Ok(response) if response.status() == 201 => Sent {
                    check: path,
                    committed: true,
                },
                Ok(response) => Sent {
                    check: format!(
                        "{} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    ),
                    committed: false,
                },
                Err(error) => Sent {
                    check: error.to_string(),
                    committed: false,
                },
            }
        }));
    }
    let mut sent = Vec::new();
    for request in requests {
        sent.push(request.await.unwrap());
    }
    sent
}

/// Waits until the outbox has nothing left to send; answers the Message-IDs it sent.
async fn drained(database: &str) -> Vec<String> {
    let db = mailroom::store::Db::connect(database).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM emails WHERE status IN ('queued', 'sending')")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        if waiting == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{waiting} emails never left");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM emails WHERE status = 'failed'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
    sqlx::query_scalar("SELECT message_id FROM emails")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

fn received_ids(relay: &TestSmtp) -> Vec<String> {
    relay
        .received()
        .iter()
        .map(|r| r.header("Message-ID").unwrap())
        .collect()
}

async fn a_crash_loses_no_committed_change_and_no_email(engine: Engine) {
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(engine, &dir).await;
    let relay = TestSmtp::start(Encryption::Plain, None).await;
    let mut first = start(&dir, &database, &relay);
    let key = key_in(&first.stdout()).unwrap();
    let client = reqwest::Client::new();
    let mut entities = Vec::new();
    for i in 0..10 {
        let entity: Value = client
            .post(format!("{}/entities", first.address))
            .bearer_auth(&key)
            .json(&json!({"name": format!("Org {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        entities.push(entity["id"].as_str().unwrap().to_string());
    }

    // The process dies with the burst half answered.
    let servers = vec![first.address.clone()];
    let (sent, _) = tokio::join!(burst(&servers, &key, &entities, "crash"), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        first.kill_hard();
    });
    let second = start(&dir, &database, &relay);
    let committed: Vec<&Sent> = sent.iter().filter(|s| s.committed).collect();
    for change in &committed {
        let response = client
            .get(format!("{}{}", second.address, change.check))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "{} was answered 201 but is gone",
            change.check
        );
    }
    let queued = drained(&database).await;
    let received: HashSet<String> = received_ids(&relay).into_iter().collect();
    for message_id in &queued {
        assert!(
            received.contains(message_id),
            "{message_id} was queued but never arrived"
        );
    }
    assert!(
        queued.len() >= committed.len(),
        "an email for every committed change"
    );

    // With nothing crashing, every email arrives exactly once.
    let before = relay.received().len();
    let servers = vec![second.address.clone()];
    let sent = burst(&servers, &key, &entities, "calm").await;
    let refused: Vec<&String> = sent
        .iter()
        .filter(|s| !s.committed)
        .map(|s| &s.check)
        .collect();
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR"))
        .take(3)
        .collect();
    assert!(refused.is_empty(), "{} refused: {errors:?}", refused.len());
    let queued = drained(&database).await;
    let calm: Vec<String> = received_ids(&relay)[before..].to_vec();
    let unique: HashSet<&String> = calm.iter().collect();
    assert_eq!(calm.len(), unique.len(), "no duplicates");
    assert_eq!(calm.len(), sent.len());
    assert!(calm.iter().all(|id| queued.contains(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_and_the_limits() {
    let Some(_) = postgres_url() else { return };
    let dir = crate::helpers::test_dir();
    let database = fresh_database_url(Engine::Postgres, &dir).await;
    let relay = TestSmtp::start(Encryption::Plain, None).await;
    let first = start(&dir, &database, &relay);
    let key = key_in(&first.stdout()).unwrap();
    let second = start(&dir, &database, &relay);
    let servers = vec![first.address.clone(), second.address.clone()];
    let client = reqwest::Client::new();
    let mut entities = Vec::new();
    for (i, server) in servers.iter().cycle().take(6).enumerate() {
        let entity: Value = client
            .post(format!("{server}/entities"))
            .bearer_auth(&key)
            .json(&json!({"name": format!("Org {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        entities.push(entity["id"].as_str().unwrap().to_string());
    }
    let sent = burst(&servers, &key, &entities, "shared").await;
    let refused: Vec<&String> = sent
        .iter()
        .filter(|s| !s.committed)
        .map(|s| &s.check)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let queued = drained(&database).await;
    let received = received_ids(&relay);
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(received.len(), queued.len(), "every email exactly once");
    assert_eq!(unique.len(), queued.len());

    // A user made through one instance; failed logins counted across both.
    let invitation = relay
        .received()
        .into_iter()
        .find(|r| r.to[0].starts_with("shared-invitee0@"))
        .unwrap();
    let text = invitation.data.replace("=\r\n", "").replace("=3D", "=");
    let token = text
        .split("token=")
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()
        .unwrap()
        .to_string();
    let accepted = client
        .post(format!(
            "{}/invitations/accept?token={token}",
            first.address
        ))
        .json(&json!({"name": "Sam", "password": "sam's password 12"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    for attempt in 0..5 {
        let server = &servers[attempt % 2];
        let response = client
            .post(format!("{server}/auth/login"))
            .json(&json!({"email": "shared-invitee0@example.org", "password": "wrong password!"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    for server in &servers {
        let response = client
            .post(format!("{server}/auth/login"))
            .json(&json!({"email": "shared-invitee0@example.org", "password": "sam's password 12"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429, "the limit holds on {server}");
    }
}
