//! Invitations: inviting, the link the email carries, and accepting.

use reqwest::Method;
use serde_json::{Value, json};

use super::TestApp;
use super::smtp::TestSmtp;

impl TestApp {
    /// Invites `email` to the admin's entity as `role`; answers the invitation.
    pub async fn invite(&self, email: &str, role: &str) -> Value {
        let response = self
            .api(Method::POST, "/entities/invitations")
            .json(&json!({"email": email, "role": role, "name": "Jo"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// Accepts the invitation of `token`, as its page does, without credentials.
    pub async fn accept_invitation(
        &self,
        token: &str,
        name: &str,
        password: &str,
    ) -> reqwest::Response {
        super::record_secret(password);
        self.client
            .post(format!("{}/invitations/accept?token={token}", self.address))
            .json(&json!({"name": name, "password": password}))
            .send()
            .await
            .unwrap()
    }
}

impl TestSmtp {
    /// The accept link in the newest invitation email to `to`, once `count` emails came.
    pub async fn invitation_link(&self, to: &str, count: usize) -> String {
        self.newest_to(to, count)
            .await
            .text()
            .split_whitespace()
            .find(|w| w.contains("/invitations/accept?token="))
            .unwrap()
            .trim_matches(['"', '<', '>'])
            .to_string()
    }
}
