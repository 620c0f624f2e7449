//! NATS JetStream for tests: the machine's shared server with a stream prefix of the
//! test's own (its stream deleted afterwards), or a private `nats-server` the test may
//! kill, restart and wipe without touching anyone else's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::python::free_port;

/// The shared server (`FLOWFORGE_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).
pub fn shared_url() -> String {
    std::env::var("FLOWFORGE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Asks the JetStream API directly (the account-info shape differs across server
/// versions, so only whether it answers without an error is checked).
async fn jetstream_enabled(client: &async_nats::Client) -> Result<(), String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(3),
        client.request("$JS.API.INFO", "".into()),
    )
    .await
    .map_err(|_| "no answer from $JS.API.INFO".to_owned())?
    .map_err(|e| e.to_string())?;
    let body: serde_json::Value =
        serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    match body.get("error") {
        Some(error) => Err(format!("JetStream is not enabled: {error}")),
        None => Ok(()),
    }
}

/// A unique stream prefix on the shared server; the stream is deleted on drop.
pub struct TestNats {
    pub url: String,
    pub prefix: String,
}

impl TestNats {
    /// `None` (a skip) when NATS is unreachable, unless `CI=true`.
    pub async fn shared() -> Option<Self> {
        let url = shared_url();
        match tokio::time::timeout(Duration::from_secs(3), async_nats::connect(url.as_str())).await
        {
            Ok(Ok(client)) => {
                if let Err(error) = jetstream_enabled(&client).await {
                    return crate::missing_service("NATS JetStream", error);
                }
            }
            Ok(Err(error)) => return crate::missing_service("NATS", error),
            Err(_) => return crate::missing_service("NATS", format!("{url} did not answer")),
        }
        let prefix = format!("FFT{:016X}", rand::random::<u64>());
        Some(Self { url, prefix })
    }

    pub fn stream_name(&self) -> String {
        format!("{}_JOBS", self.prefix)
    }

    /// Messages in the test's job stream, and per consumer those delivered but not acked.
    pub async fn stream_state(&self) -> (u64, u64) {
        let client = async_nats::connect(self.url.as_str()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(self.stream_name()).await.expect("stream");
        let messages = stream.info().await.expect("info").state.messages;
        let mut unacked = 0;
        let mut consumers = stream.consumers();
        use futures::StreamExt;
        while let Some(Ok(info)) = consumers.next().await {
            unacked += info.num_ack_pending as u64 + info.num_pending;
        }
        (messages, unacked)
    }
}

impl TestNats {
    /// Jobs ever published to the stream (its last sequence number).
    pub async fn published(&self) -> u64 {
        let client = async_nats::connect(self.url.as_str()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(self.stream_name()).await.expect("stream");
        stream.info().await.expect("info").state.last_sequence
    }

    /// Waits until every job was acknowledged: nothing is left in the stream or
    /// pending on a consumer.
    pub async fn assert_drained(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (messages, unacked) = self.stream_state().await;
            if messages == 0 && unacked == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{messages} jobs left in the stream, {unacked} unacknowledged"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let url = self.url.clone();
        let stream = self.stream_name();
        // Drop cannot await; a short-lived runtime on its own thread can.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(client) = async_nats::connect(url.as_str()).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(stream)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A `nats-server` of the test's own, on a free port, with its store in a temp folder.
pub struct PrivateNats {
    pub url: String,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl PrivateNats {
    pub fn binary() -> Option<PathBuf> {
        [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "/usr/local/bin/nats-server",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    }

    /// `None` (a skip) without a `nats-server` binary, unless `CI=true`.
    pub async fn start() -> Option<Self> {
        if Self::binary().is_none() {
            return crate::missing_service("a nats-server binary", "not installed");
        }
        let port = free_port();
        let mut nats = Self {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            store: tempfile::tempdir().expect("temp dir"),
            child: None,
            log: std::env::temp_dir().join(format!("ff-nats-{port}.log")),
        };
        nats.restart().await;
        Some(nats)
    }

    /// Starts (again) on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        let binary = Self::binary().expect("nats-server");
        let child = Command::new(binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .arg("-l")
            .arg(&self.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(client) = async_nats::connect(self.url.as_str()).await
                && jetstream_enabled(&client).await.is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start; see {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes the JetStream store (every stream and queued message), while stopped.
    pub fn wipe_store(&mut self) {
        assert!(
            self.child.is_none(),
            "stop the server before wiping its store"
        );
        for entry in std::fs::read_dir(self.store.path())
            .expect("store dir")
            .flatten()
        {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}
