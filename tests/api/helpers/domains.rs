//! Domains: adding, verifying and activating them, and what a domain's history holds.

use mailroom::domains::model::DomainStatus;
use mailroom::domains::store::set_status_by_operator;
use mailroom::types::DomainName;
use reqwest::Method;
use serde_json::{Value, json};

use super::TestApp;
use super::dns::TestDns;

impl TestApp {
    /// Adds `domain` to the app's account; answers the domain as the API shows it.
    pub async fn add_domain(&self, domain: &str) -> Value {
        let response = self
            .api(Method::POST, "/v2/domains")
            .json(&json!({"domain": domain}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["domain"].clone()
    }

    /// Checks `domain`'s DNS now; answers the domain as the API shows it.
    pub async fn verify_domain(&self, domain: &str) -> Value {
        let response = self
            .api(Method::POST, &format!("/v2/domains/{domain}/verify"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["domain"].clone()
    }

    /// Adds `domain` to the app's account and activates it as the operator would.
    pub async fn active_domain(&self, domain: &str) {
        self.add_domain(domain).await;
        set_status_by_operator(
            &self.db,
            &self.settings,
            &DomainName::parse(domain).unwrap(),
            None,
            DomainStatus::Active,
        )
        .await
        .unwrap();
    }

    /// The status changes `domain` went through, oldest first, each with its reason.
    pub async fn domain_events(&self, domain: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT e.to_status, e.reason FROM domain_events e JOIN domains d ON d.id = e.domain_id \
             WHERE d.name = $1 ORDER BY e.at, e.to_status",
        )
        .bind(domain)
        .fetch_all(&self.db.pool)
        .await
        .unwrap()
    }
}

/// The records a domain must publish to be proven.
pub fn required(domain: &Value) -> Vec<Value> {
    domain["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["required"] == true)
        .cloned()
        .collect()
}

impl TestDns {
    /// Publishes every required CNAME of `domain` (as the API shows it) exactly as asked.
    pub fn publish(&self, domain: &Value) {
        for record in required(domain) {
            self.cname(
                record["name"].as_str().unwrap(),
                record["value"].as_str().unwrap(),
            );
        }
    }
}
