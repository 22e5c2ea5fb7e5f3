//! Sender addresses: adding one, and the link and code its verification email carries.

use reqwest::Method;
use serde_json::{Value, json};

use super::TestApp;
use super::smtp::TestSmtp;

impl TestApp {
    /// Sets the sender address at `path` (the account's or an organization's) to `email`;
    /// answers the sender.
    pub async fn add_sender(&self, path: &str, email: &str) -> Value {
        let response = self
            .api(Method::POST, path)
            .json(&json!({"email": email}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }
}

impl TestSmtp {
    /// The link and the code of the newest verification email to `to`, once `count`
    /// emails came.
    pub async fn verification_link_and_code(&self, to: &str, count: usize) -> (String, String) {
        let text = self.newest_to(to, count).await.text();
        let link = text
            .split_whitespace()
            .find(|w| w.starts_with("http://") && w.contains("/v1/email-address/verify?token="))
            .unwrap()
            .to_string();
        let code = text.split("enter this code: ").nth(1).unwrap()[..6].to_string();
        (link, code)
    }
}
