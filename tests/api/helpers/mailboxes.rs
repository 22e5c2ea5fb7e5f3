//! Mailboxes.

use reqwest::Method;
use serde_json::Value;

use super::TestApp;

impl TestApp {
    /// Creates a mailbox; answers the API's answer, whose password is noted as a secret.
    pub async fn create_mailbox(&self, body: Value) -> Value {
        let response = self
            .api(Method::POST, "/v2/email-accounts/create")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        let created: Value = response.json().await.unwrap();
        super::record_secret(created["password"].as_str().unwrap());
        created
    }
}
