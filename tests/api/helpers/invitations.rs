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

/// A user who accepted an invitation: their id and an access token.
pub struct NewUser {
    pub id: String,
    pub token: String,
}

impl TestApp {
    /// Invites `email` into the admin's entity as `role` and accepts as a new user with
    /// `password`; `count` is how many emails `relay` will have received for `email`.
    pub async fn new_user(
        &self,
        relay: &TestSmtp,
        email: &str,
        role: &str,
        password: &str,
        count: usize,
    ) -> NewUser {
        self.invite(email, role).await;
        let token = super::token_of(&relay.invitation_link(email, count).await);
        let accepted = self.accept_invitation(&token, "New User", password).await;
        assert_eq!(accepted.status(), 200);
        let accepted: Value = accepted.json().await.unwrap();
        NewUser {
            id: accepted["user_id"].as_str().unwrap().to_string(),
            token: accepted["access_token"].as_str().unwrap().to_string(),
        }
    }

    /// Accepts the invitation of `token` signed in with `access_token`, as a user who
    /// exists already does.
    pub async fn accept_signed_in(&self, token: &str, access_token: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/invitations/accept?token={token}", self.address))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap()
    }

    /// `POST /auth/login`.
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/auth/login", self.address))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }
}

impl TestSmtp {
    /// The password-reset link in the newest email to `to`, once `count` emails came.
    pub async fn reset_link(&self, to: &str, count: usize) -> String {
        self.newest_to(to, count)
            .await
            .text()
            .split_whitespace()
            .find(|w| w.contains("/auth/password-reset/confirm?token="))
            .unwrap()
            .to_string()
    }

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
