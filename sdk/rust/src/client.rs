//! Sending events and reading runs from applications.

use serde_json::{Value, json};

use crate::Error;

#[derive(Clone)]
pub struct Client {
    base_url: String,
    event_key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            event_key: "NO_EVENT_KEY_SET".to_owned(),
            http: reqwest::Client::new(),
        }
    }

    pub fn event_key(mut self, key: impl Into<String>) -> Self {
        self.event_key = key.into();
        self
    }

    /// Sends one event; returns its id.
    pub async fn send(&self, name: &str, data: Value) -> Result<String, Error> {
        let ids = self
            .send_events(vec![json!({"name": name, "data": data})])
            .await?;
        ids.into_iter()
            .next()
            .ok_or_else(|| Error::Sdk("the server returned no id".into()))
    }

    /// Sends events (`{"name", "data", "id"?, "ts"?}`); returns their ids in order.
    pub async fn send_events(&self, events: Vec<Value>) -> Result<Vec<String>, Error> {
        let response = self
            .http
            .post(format!("{}/e/{}", self.base_url, self.event_key))
            .json(&events)
            .send()
            .await
            .map_err(|e| Error::Sdk(format!("sending events: {e}")))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| Error::Sdk(format!("reading the answer to sending events: {e}")))?;
        if !status.is_success() {
            return Err(Error::Sdk(format!(
                "sending events failed with HTTP {status}: {body}"
            )));
        }
        Ok(body["ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| i.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A run as `GET /api/v1/runs/{id}` shows it.
    pub async fn run(&self, run_id: &str) -> Result<Value, Error> {
        self.get(&format!("/api/v1/runs/{run_id}")).await
    }

    /// Runs, filtered as `GET /api/v1/runs` allows (e.g. `[("event", id)]`).
    pub async fn runs(&self, query: &[(&str, &str)]) -> Result<Vec<Value>, Error> {
        let page: Value = self
            .http
            .get(format!("{}/api/v1/runs", self.base_url))
            .query(query)
            .send()
            .await
            .map_err(|e| Error::Sdk(e.to_string()))?
            .json()
            .await
            .map_err(|e| Error::Sdk(e.to_string()))?;
        Ok(page["items"].as_array().cloned().unwrap_or_default())
    }

    async fn get(&self, path: &str) -> Result<Value, Error> {
        self.http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .map_err(|e| Error::Sdk(e.to_string()))?
            .json()
            .await
            .map_err(|e| Error::Sdk(e.to_string()))
    }
}
