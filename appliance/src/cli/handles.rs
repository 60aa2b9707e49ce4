//! The handle pattern from the CLI's side: get a handle, mutate it (each
//! call returns a new token), commit, and report the per-element outcome.
//!
//! Owns the `/exec/handles/*` and `/exec/commit` calls and how a commit's
//! ERROR elements are shown. Callers never look inside a token.

use appliance::portlayer::model::{CommitResult, Status, TargetState, Task};
use serde::Deserialize;
use serde_json::json;

use super::Exit;
use super::client::{Client, encode};
use super::output::errln;

#[derive(Deserialize)]
struct HandleBody {
    handle: String,
}

/// A handle on one container plus the changes made on it so far.
pub struct Handle<'a> {
    client: &'a Client,
    token: String,
}

impl<'a> Handle<'a> {
    /// A fresh handle on an existing container (id, name or id prefix).
    pub async fn of(client: &'a Client, container: &str) -> anyhow::Result<Self> {
        let body: HandleBody = client
            .get(&format!("/exec/containers/{}/handle", encode(container)))
            .await?;
        Ok(Self::from_token(client, body.handle))
    }

    /// A handle the server gave out (e.g. by `create`).
    pub fn from_token(client: &'a Client, token: String) -> Self {
        Self { client, token }
    }

    async fn change(&mut self, op: &str, body: serde_json::Value) -> anyhow::Result<()> {
        self.change_at(&format!("/exec/handles/{op}"), body).await
    }

    async fn change_at(&mut self, path: &str, mut body: serde_json::Value) -> anyhow::Result<()> {
        body["handle"] = json!(self.token);
        let next: HandleBody = self.client.post(path, &body).await?;
        self.token = next.handle;
        Ok(())
    }

    /// Joins a network scope: `join` is the request's other fields (scope,
    /// aliases, ip, exposed, published, outgoing).
    pub async fn network_join(&mut self, join: serde_json::Value) -> anyhow::Result<()> {
        self.change_at("/network/handles/join", join).await
    }

    pub async fn network_bind(&mut self, scope: &str) -> anyhow::Result<()> {
        self.change_at("/network/handles/bind", json!({ "scope": scope }))
            .await
    }

    pub async fn network_leave(&mut self, scope: &str) -> anyhow::Result<()> {
        self.change_at("/network/handles/leave", json!({ "scope": scope }))
            .await
    }

    pub async fn task_join(&mut self, task: &Task) -> anyhow::Result<()> {
        self.change("task-join", json!({ "task": task })).await
    }

    pub async fn task_bind(&mut self, task: &str) -> anyhow::Result<()> {
        self.change("task-bind", json!({ "task": task })).await
    }

    pub async fn state(&mut self, target: TargetState) -> anyhow::Result<()> {
        self.change("state", json!({ "target": target })).await
    }

    /// Asks for `stopped` with this stop's own grace period.
    pub async fn stop_within(&mut self, timeout_seconds: u32) -> anyhow::Result<()> {
        self.change(
            "state",
            json!({ "target": TargetState::Stopped, "stop_timeout_seconds": timeout_seconds }),
        )
        .await
    }

    pub async fn rename(&mut self, name: &str) -> anyhow::Result<()> {
        self.change("rename", json!({ "name": name })).await
    }

    /// Commits; ERROR elements are printed to stderr and make this fail
    /// with [`Exit`]`(1)`.
    pub async fn commit(self) -> anyhow::Result<CommitResult> {
        let result: CommitResult = self
            .client
            .post("/exec/commit", &json!({ "handle": self.token }))
            .await?;
        let errors = commit_errors(&result);
        if errors.is_empty() {
            return Ok(result);
        }
        for line in errors {
            errln!("{line}");
        }
        Err(Exit(1).into())
    }
}

/// One line per element whose commit failed.
pub fn commit_errors(result: &CommitResult) -> Vec<String> {
    result
        .results
        .iter()
        .filter(|(_, r)| r.status == Status::Error)
        .map(|(element, r)| format!("Error committing {element}: {}", r.detail))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance::portlayer::model::ElementResult;

    #[test]
    fn only_error_elements_are_reported() {
        let result = CommitResult {
            version: 3,
            handle: "h".into(),
            results: [
                (
                    "abc".to_string(),
                    ElementResult {
                        status: Status::Noop,
                        detail: "Already running".into(),
                    },
                ),
                (
                    "abc/task/t1".to_string(),
                    ElementResult {
                        status: Status::Error,
                        detail: "No such file: /bin/nope".into(),
                    },
                ),
            ]
            .into(),
        };
        assert_eq!(
            commit_errors(&result),
            ["Error committing abc/task/t1: No such file: /bin/nope"]
        );
    }
}
