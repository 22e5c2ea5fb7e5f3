//! The outbox and the relays: setting a domain's relay, queueing an email, and following
//! a message through the log.

use std::time::{Duration, Instant};

use mailroom::mail::outbox::{Outgoing, enqueue};
use mailroom::mail::templates::{Kind, render};
use mailroom::store::crypto::MasterKey;
use mailroom::types::EmailAddress;
use reqwest::Method;
use serde_json::Value;

use super::TestApp;

impl TestApp {
    /// Creates `domain`'s SMTP settings (its relay) with `body`; answers them as stored.
    pub async fn set_relay(&self, domain: &str, body: Value) -> Value {
        let response = self
            .api(
                Method::POST,
                &format!("/api/v2/email/settings?domain={domain}"),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// Queues an email of the app's first account, as the senders and invitations do;
    /// answers its id.
    pub async fn queue(&self, from: &str, to: &str) -> String {
        let master_key = MasterKey::load(&self.settings).unwrap();
        // In a transaction, as every caller queues: the worker sees the email whole.
        let mut conn = self.db.begin().await.unwrap();
        let from = EmailAddress::parse(from).unwrap();
        let to = EmailAddress::parse(to).unwrap();
        let email = render(
            Kind::Test,
            &[
                ("from", &from.to_string()),
                ("to", &to.to_string()),
                ("sent_at", "now"),
            ],
            &[],
        )
        .unwrap();
        let queued = enqueue(
            &mut conn,
            &master_key,
            Outgoing::rendered(Some(&self.admin.account_id), &from, &to, email),
            self.db.now(),
        )
        .await
        .unwrap();
        conn.commit().await.unwrap();
        queued.id
    }

    /// The message log's entry for `id`.
    pub async fn message(&self, id: &str) -> Value {
        self.api(Method::GET, &format!("/v2/messages/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Waits up to `limit` for message `id` to reach `status`; answers its entry then.
    pub async fn wait_for_status(&self, id: &str, status: &str, limit: Duration) -> Value {
        self.wait_for_message(id, limit, |message| message["status"] == status)
            .await
    }

    /// Waits up to `limit` until message `id`'s entry satisfies `done`; answers it then.
    pub async fn wait_for_message(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let current = self.message(id).await;
            if done(&current) {
                return current;
            }
            assert!(Instant::now() < deadline, "still {current}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
