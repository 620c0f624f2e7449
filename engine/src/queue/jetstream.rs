//! The work queue of the production shape: NATS JetStream, shared by every FlowForge
//! process on one NATS cluster.
//!
//! One stream (`<prefix>_JOBS`, subjects `<prefix>.jobs.<tenant>`, work-queue retention)
//! and one durable pull consumer per tenant (`exec-<tenant>`), shared by every process.
//! Each process keeps at most a few of each tenant's jobs in hand and serves the
//! tenants round-robin, so a tenant with ten thousand queued jobs takes one turn in N
//! in every process and cannot starve a tenant with one.
//!
//! JetStream is a delivery mechanism, not where truth lives: a job's message id is
//! derived from the run state that made it due (`run:target:token`), so publishing it
//! twice within the duplicate window stores it once; a job is acknowledged only after
//! its outcome is committed to the log; and a job that is lost (JetStream acknowledges
//! publishes before they reach disk) is published again by the scheduler's reconciler.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use flowforge_domain::run::CallTarget;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Acker, Delivery, Job, QueueError, WorkQueue};

/// How FlowForge's stream and consumers are made. Every setting is explicit (and
/// documented in the README's production section) rather than left to server defaults.
#[derive(Debug, Clone)]
pub struct JetStreamSettings {
    pub url: String,
    /// Prefix of the stream name and subjects: lets several FlowForge installations
    /// (or tests) share a NATS cluster.
    pub prefix: String,
    /// Stream replicas (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// A delivered job not acknowledged (or touched) within this time is delivered again.
    pub ack_wait: Duration,
    /// Deliveries of one message at most; the reconciler republishes after that.
    pub max_deliver: i64,
    /// Publishes of the same message id within this window are stored once.
    pub duplicate_window: Duration,
    /// Jobs of one tenant one process holds at once, waiting for an executor: fetched
    /// from the stream or, in the scheduler's process, kept instead of published.
    ///
    /// 64 by default, a process's executors: the scheduler's process then publishes a
    /// tenant's jobs only when it has more waiting than it has executors, so its runs
    /// seldom make the round trip through JetStream. With 4, two processes on this
    /// 2-core machine made 373–426 runs/s, with 64 455–507 and about 15 % less CPU
    /// (runs benchmark, alternating in the same minutes); one process was unchanged.
    pub prefetch_per_tenant: usize,
    /// NATS credentials file, user/password or token, if the server asks for them.
    pub credentials_file: Option<std::path::PathBuf>,
    pub user_password: Option<(String, String)>,
    pub token: Option<String>,
    /// Require TLS to the server.
    pub tls_required: bool,
}

impl JetStreamSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "FLOWFORGE".into(),
            replicas: 1,
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            duplicate_window: Duration::from_secs(120),
            prefetch_per_tenant: 64,
            credentials_file: None,
            user_password: None,
            token: None,
            tls_required: false,
        }
    }

    pub fn stream_name(&self) -> String {
        format!("{}_JOBS", self.prefix)
    }

    fn subject_prefix(&self) -> String {
        format!("{}.jobs", self.prefix.to_lowercase())
    }

    fn announce_subject(&self) -> String {
        format!("{}.tenants", self.prefix.to_lowercase())
    }
}

/// The job stream: work-queue retention (a message is gone once acknowledged), on
/// disk, with a duplicate window that drops a job published twice.
fn stream_config(settings: &JetStreamSettings) -> stream::Config {
    stream::Config {
        name: settings.stream_name(),
        subjects: vec![format!("{}.>", settings.subject_prefix())],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        max_age: Duration::from_secs(7 * 24 * 3600),
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// A subject token for a tenant: the id itself when it is safe in a subject, otherwise
/// its hex form (prefixed so the two cannot collide).
pub fn tenant_token(tenant: &str) -> String {
    let safe = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !tenant.starts_with("x_");
    if safe {
        tenant.to_owned()
    } else {
        format!("x_{}", hex_encode(tenant.as_bytes()))
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The message id of a job: the same job derived twice has the same id.
pub fn message_id(job: &Job, republished: u32) -> String {
    let target = match &job.target {
        CallTarget::Discovery => "discovery".to_owned(),
        CallTarget::Step(id) => format!("step-{id}"),
    };
    if republished == 0 {
        format!("{}:{target}:{}", job.run_id, job.token)
    } else {
        format!("{}:{target}:{}:r{republished}", job.run_id, job.token)
    }
}

fn encode(job: &Job) -> Vec<u8> {
    json!({
        "tenant": job.tenant,
        "run_id": job.run_id,
        "target": job.target,
        "token": job.token,
    })
    .to_string()
    .into_bytes()
}

fn decode(payload: &[u8]) -> Option<Job> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    Some(Job {
        tenant: value["tenant"].as_str()?.to_owned(),
        run_id: value["run_id"].as_str()?.parse::<Uuid>().ok()?,
        target: serde_json::from_value(value["target"].clone()).ok()?,
        token: value["token"].as_u64()?,
    })
}

/// A job in this process's hand, waiting for an executor.
enum InHand {
    /// Fetched from the stream (boxed: a message is far larger than a job).
    Fetched(Box<jetstream::Message>),
    /// Queued by this process's scheduler while the tenant's hand had room: never
    /// published (see [`JetStreamQueue::take_in_hand`]).
    Local(Job),
}

#[derive(Default)]
struct Local {
    /// Tenants with jobs in hand, in the order they get their next turn.
    turns: VecDeque<String>,
    held: HashMap<String, VecDeque<InHand>>,
    /// Local jobs in hand or being made, so that one queued twice is taken once.
    local_jobs: HashSet<Job>,
}

impl Local {
    fn push(&mut self, token: &str, job: InHand) {
        let queue = self.held.entry(token.to_owned()).or_default();
        let was_empty = queue.is_empty();
        queue.push_back(job);
        if was_empty {
            self.turns.push_back(token.to_owned());
        }
    }
}

/// Runs this process's executors are working on (see [`WorkQueue::hold_run`]).
#[derive(Default)]
struct Holds {
    /// Per held run: how many holds, and the jobs kept back from the stream meanwhile.
    runs: HashMap<Uuid, (usize, Vec<(Job, u32)>)>,
    /// Jobs an executor of this process has claimed and is making.
    claimed: HashSet<Job>,
}

impl Holds {
    /// Whether `job` stays in this process instead of going to the stream.
    fn keep_back(&mut self, job: &Job, attempt: u32) -> bool {
        if self.claimed.contains(job) {
            return true;
        }
        let Some((_, kept)) = self.runs.get_mut(&job.run_id) else {
            return false;
        };
        match kept.iter_mut().find(|(kept, _)| kept == job) {
            Some((_, kept_attempt)) => *kept_attempt = (*kept_attempt).max(attempt),
            None => kept.push((job.clone(), attempt)),
        }
        true
    }

    fn claim(&mut self, job: &Job) -> bool {
        if self.claimed.contains(job) {
            return false;
        }
        let Some((_, kept)) = self.runs.get_mut(&job.run_id) else {
            return false;
        };
        kept.retain(|(kept, _)| kept != job);
        self.claimed.insert(job.clone());
        true
    }

    fn hold(&mut self, run_id: Uuid) {
        self.runs.entry(run_id).or_default().0 += 1;
    }

    /// Ends one hold; the last one hands back what was kept back.
    fn release_run(&mut self, run_id: Uuid) -> Vec<(Job, u32)> {
        let Some((count, _)) = self.runs.get_mut(&run_id) else {
            return Vec::new();
        };
        *count = count.saturating_sub(1);
        if *count > 0 {
            return Vec::new();
        }
        self.runs
            .remove(&run_id)
            .map(|(_, kept)| kept)
            .unwrap_or_default()
    }
}

pub struct JetStreamQueue {
    settings: JetStreamSettings,
    holds: Mutex<Holds>,
    /// This process's scheduler is running (past its start-up): the jobs it queues may
    /// stay in this process while the tenant's hand has room.
    local_first: std::sync::atomic::AtomicBool,
    /// For local jobs given back undone, which are then published.
    me: std::sync::Weak<JetStreamQueue>,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: stream::Stream,
    local: Arc<Mutex<Local>>,
    ready: Arc<Notify>,
    /// Tenants this process already fetches for.
    fetching: Arc<Mutex<HashSet<String>>>,
    /// Tenants this process has announced, so announcing is once per tenant.
    announced: Mutex<HashSet<String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl JetStreamQueue {
    /// Connects, creates (or checks) the stream, and starts fetching for every tenant
    /// that has jobs in it.
    pub async fn connect(settings: JetStreamSettings) -> Result<Arc<Self>, QueueError> {
        let backend = |e: &dyn std::fmt::Display| QueueError::Backend(e.to_string());
        let mut options = async_nats::ConnectOptions::new()
            .name("flowforge")
            .retry_on_initial_connect()
            .require_tls(settings.tls_required);
        if let Some(path) = &settings.credentials_file {
            options = async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| backend(&e))?
                .name("flowforge")
                .require_tls(settings.tls_required);
        }
        if let Some((user, password)) = &settings.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &settings.token {
            options = options.token(token.clone());
        }
        // Give the first connection a bounded time: a wrong URL should fail start-up.
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            options.connect(settings.url.as_str()),
        )
        .await
        .map_err(|_| QueueError::Backend(format!("cannot reach NATS at {}", settings.url)))?
        .map_err(|e| backend(&e))?;
        let jetstream = jetstream::new(client.clone());
        let stream = jetstream
            .get_or_create_stream(stream_config(&settings))
            .await
            .map_err(|e| backend(&e))?;
        let queue = Arc::new_cyclic(|me| Self {
            settings,
            holds: Mutex::default(),
            local_first: std::sync::atomic::AtomicBool::new(false),
            me: me.clone(),
            client,
            jetstream,
            stream,
            local: Arc::default(),
            ready: Arc::new(Notify::new()),
            fetching: Arc::default(),
            announced: Mutex::default(),
            tasks: Mutex::default(),
        });
        queue.clone().start_discovery().await?;
        Ok(queue)
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the connection to NATS is up (for `/ready`).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Finds tenants with work: announcements from the processes that publish, and a
    /// periodic look at the stream's subjects (which also finds work published while
    /// this process was down).
    async fn start_discovery(self: Arc<Self>) -> Result<(), QueueError> {
        let mut announcements = self
            .client
            .subscribe(self.settings.announce_subject())
            .await
            .map_err(|e| QueueError::Backend(e.to_string()))?;
        self.scan_subjects().await;
        let weak = Arc::downgrade(&self);
        let listen = tokio::spawn(async move {
            while let Some(message) = announcements.next().await {
                let Some(queue) = weak.upgrade() else { return };
                if let Ok(tenant) = std::str::from_utf8(&message.payload) {
                    queue.fetch_for(tenant);
                }
            }
        });
        let weak = Arc::downgrade(&self);
        let scan = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let Some(queue) = weak.upgrade() else { return };
                queue.scan_subjects().await;
            }
        });
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(listen);
            tasks.push(scan);
        }
        Ok(())
    }

    async fn scan_subjects(&self) {
        let prefix = format!("{}.", self.settings.subject_prefix());
        let stream = self.stream.clone();
        let Ok(mut subjects) = stream.info_with_subjects(format!("{prefix}>")).await else {
            return;
        };
        while let Some(Ok((subject, _count))) = subjects.next().await {
            if let Some(token) = subject.strip_prefix(&prefix) {
                self.fetch_for_token(token);
            }
        }
    }

    fn fetch_for(&self, tenant: &str) {
        self.fetch_for_token(&tenant_token(tenant));
    }

    /// Starts a fetcher for one tenant's consumer, once per process.
    fn fetch_for_token(&self, token: &str) {
        let Ok(mut fetching) = self.fetching.lock() else {
            return;
        };
        if !fetching.insert(token.to_owned()) {
            return;
        }
        let fetcher = Fetcher {
            jetstream: self.jetstream.clone(),
            consumer_name: format!("exec-{token}"),
            subject: format!("{}.{token}", self.settings.subject_prefix()),
            token: token.to_owned(),
            settings: self.settings.clone(),
            local: self.local.clone(),
            ready: self.ready.clone(),
        };
        let task = tokio::spawn(fetcher.run());
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
    }

    async fn publish(&self, job: &Job, id: String) -> Result<(), QueueError> {
        let token = tenant_token(&job.tenant);
        let subject = format!("{}.{token}", self.settings.subject_prefix());
        let message = jetstream::message::PublishMessage::build()
            .payload(encode(job).into())
            .message_id(id);
        let published = async {
            let ack = self
                .jetstream
                .send_publish(subject.clone(), message.clone())
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map_err(|e| e.to_string())
        };
        if let Err(first) = published.await {
            // The stream may be gone (a NATS store lost or deleted): make it again, once.
            tracing::warn!(error = %first, "publishing a job failed; ensuring the stream and retrying");
            self.jetstream
                .get_or_create_stream(stream_config(&self.settings))
                .await
                .map_err(|e| QueueError::Backend(format!("{first}; then: {e}")))?;
            let ack = self
                .jetstream
                .send_publish(subject, message)
                .await
                .map_err(|e| QueueError::Backend(e.to_string()))?;
            ack.await.map_err(|e| QueueError::Backend(e.to_string()))?;
        }
        let first_time = self
            .announced
            .lock()
            .map(|mut a| a.insert(job.tenant.clone()))
            .unwrap_or(false);
        if first_time {
            self.fetch_for(&job.tenant);
            let _ = self
                .client
                .publish(self.settings.announce_subject(), job.tenant.clone().into())
                .await;
        }
        Ok(())
    }
}

impl JetStreamQueue {
    /// Keeps a job the scheduler of this process queues in this process's hand, instead
    /// of publishing it, while the tenant's hand has room: when this process's
    /// executors keep up, its runs never make the round trip through JetStream, and
    /// when they do not, the hand is full and jobs go to the stream for every process.
    ///
    /// Safe to lose: a job in hand exists only in the process running the scheduler.
    /// If that process dies, the scheduler that takes over derives every due call from
    /// the log again and publishes it. Not while the scheduler is starting: the calls
    /// it queues then were most likely published before, by the previous scheduler.
    fn take_in_hand(&self, job: &Job) -> bool {
        if !self.local_first.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let Ok(mut local) = self.local.lock() else {
            return false;
        };
        if local.local_jobs.contains(job) {
            return true;
        }
        let token = tenant_token(&job.tenant);
        let in_hand = local.held.get(&token).map_or(0, VecDeque::len);
        if in_hand >= self.settings.prefetch_per_tenant {
            return false;
        }
        local.local_jobs.insert(job.clone());
        local.push(&token, InHand::Local(job.clone()));
        drop(local);
        self.ready.notify_one();
        true
    }

    fn keep_back(&self, job: &Job, attempt: u32) -> bool {
        self.holds
            .lock()
            .map(|mut holds| holds.keep_back(job, attempt))
            .unwrap_or(false)
    }
}

impl Drop for JetStreamQueue {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }
}

/// Pulls one tenant's jobs into the process's hand, a few at a time.
struct Fetcher {
    jetstream: jetstream::Context,
    consumer_name: String,
    subject: String,
    token: String,
    settings: JetStreamSettings,
    local: Arc<Mutex<Local>>,
    ready: Arc<Notify>,
}

impl Fetcher {
    async fn run(self) {
        loop {
            let consumer = self.consumer().await;
            self.fetch_from(&consumer).await;
            // Fetching failed repeatedly: the consumer (or the stream) may be gone.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The tenant's durable consumer (and the stream), created if missing.
    async fn consumer(&self) -> consumer::Consumer<consumer::pull::Config> {
        loop {
            let stream = match self
                .jetstream
                .get_or_create_stream(stream_config(&self.settings))
                .await
            {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "cannot reach the job stream; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match stream
                .get_or_create_consumer(
                    &self.consumer_name,
                    consumer::pull::Config {
                        durable_name: Some(self.consumer_name.clone()),
                        filter_subject: self.subject.clone(),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: self.settings.ack_wait,
                        max_deliver: self.settings.max_deliver,
                        deliver_policy: consumer::DeliverPolicy::All,
                        // Consumers of tenants that stop sending are removed by the server.
                        inactive_threshold: Duration::from_secs(24 * 3600),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(consumer) => return consumer,
                Err(error) => {
                    tracing::warn!(consumer = %self.consumer_name, %error, "cannot create a JetStream consumer; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Pulls while pulling works; returns after repeated failures.
    async fn fetch_from(&self, consumer: &consumer::Consumer<consumer::pull::Config>) {
        let mut failures = 0;
        while failures < 3 {
            let room = {
                let held = self
                    .local
                    .lock()
                    .map(|l| l.held.get(&self.token).map_or(0, VecDeque::len))
                    .unwrap_or(0);
                self.settings.prefetch_per_tenant.saturating_sub(held)
            };
            if room == 0 {
                // Wait for an executor to take one of this tenant's jobs.
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
            let batch = consumer
                .batch()
                .max_messages(room)
                .expires(Duration::from_secs(5))
                .messages()
                .await;
            let asked_at = std::time::Instant::now();
            let mut got = 0usize;
            let mut messages = match batch {
                Ok(messages) => messages,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(consumer = %self.consumer_name, %error, "JetStream fetch failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = messages.next().await {
                match message {
                    Ok(message) => {
                        failures = 0;
                        got += 1;
                        self.hold(message);
                    }
                    Err(error) => {
                        failures += 1;
                        tracing::debug!(consumer = %self.consumer_name, %error, "JetStream batch ended");
                        break;
                    }
                }
            }
            if got == 0 {
                // An empty batch is normal when idle, but a pull from a consumer that no
                // longer exists (a NATS store lost) also ends empty and quietly: check.
                if let Err(error) = consumer.get_info().await {
                    tracing::warn!(consumer = %self.consumer_name, %error, "the JetStream consumer is gone; making it again");
                    return;
                }
                if asked_at.elapsed() < Duration::from_millis(100) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn hold(&self, message: jetstream::Message) {
        if let Ok(mut local) = self.local.lock() {
            local.push(&self.token, InHand::Fetched(Box::new(message)));
        }
        self.ready.notify_one();
    }
}

/// Acknowledges after the outcome is committed; until then tells JetStream the job is
/// still being worked on, so a long call is not delivered to another process.
struct JetStreamAck {
    message: Arc<jetstream::Message>,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// A local job needs no acknowledgement; it is only forgotten, or published if given
/// back undone.
struct LocalAck {
    queue: std::sync::Weak<JetStreamQueue>,
    job: Job,
}

impl LocalAck {
    fn forget(&self) -> Option<Arc<JetStreamQueue>> {
        let queue = self.queue.upgrade()?;
        if let Ok(mut local) = queue.local.lock() {
            local.local_jobs.remove(&self.job);
        }
        Some(queue)
    }
}

#[async_trait]
impl Acker for LocalAck {
    async fn ack(self: Box<Self>) {
        self.forget();
    }

    async fn retry_later(self: Box<Self>, delay: Duration) {
        let Some(queue) = self.forget() else {
            return;
        };
        let job = self.job;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(error) = queue.publish(&job, message_id(&job, 0)).await {
                // The reconciler queues it again when its lease runs out.
                tracing::warn!(%error, run_id = %job.run_id, "cannot queue a job given back");
            }
        });
    }
}

#[async_trait]
impl Acker for JetStreamAck {
    async fn ack(self: Box<Self>) {
        self.heartbeat.abort();
        if let Err(error) = self.message.double_ack().await {
            // The job is delivered again and found stale: a no-op, so only worth a note.
            tracing::debug!(%error, "JetStream ack failed");
        }
    }

    async fn retry_later(self: Box<Self>, delay: Duration) {
        self.heartbeat.abort();
        if let Err(error) = self.message.ack_with(AckKind::Nak(Some(delay))).await {
            // Then it is delivered again after the ack wait instead.
            tracing::debug!(%error, "JetStream nak failed");
        }
    }
}

#[async_trait]
impl WorkQueue for JetStreamQueue {
    async fn enqueue(&self, job: Job) -> Result<(), QueueError> {
        if self.keep_back(&job, 0) || self.take_in_hand(&job) {
            return Ok(());
        }
        let id = message_id(&job, 0);
        self.publish(&job, id).await
    }

    async fn dequeue(&self) -> Result<Delivery, QueueError> {
        loop {
            let notified = self.ready.notified();
            let taken = {
                let mut local = self.local.lock().map_err(|_| QueueError::Closed)?;
                let mut taken = None;
                while taken.is_none() {
                    let Some(token) = local.turns.pop_front() else {
                        break;
                    };
                    let (message, more) = match local.held.get_mut(&token) {
                        Some(queue) => (queue.pop_front(), !queue.is_empty()),
                        None => (None, false),
                    };
                    if more {
                        local.turns.push_back(token);
                    } else {
                        local.held.remove(&token);
                    }
                    taken = message;
                }
                if taken.is_some() && !local.turns.is_empty() {
                    self.ready.notify_one();
                }
                taken
            };
            let message = match taken {
                None => {
                    notified.await;
                    continue;
                }
                Some(InHand::Local(job)) => {
                    let acker = LocalAck {
                        queue: self.me.clone(),
                        job: job.clone(),
                    };
                    return Ok(Delivery::new(job, Box::new(acker)));
                }
                Some(InHand::Fetched(message)) => *message,
            };
            let Some(job) = decode(&message.payload) else {
                tracing::error!(subject = %message.subject, "an unreadable job; dropped");
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            };
            let redelivered = message.info().is_ok_and(|info| info.delivered > 1);
            let message = Arc::new(message);
            let touched = message.clone();
            let every = self.settings.ack_wait / 3;
            let heartbeat = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = touched.ack_with(AckKind::Progress).await;
                }
            });
            return Ok(
                Delivery::new(job, Box::new(JetStreamAck { message, heartbeat }))
                    .redelivered(redelivered),
            );
        }
    }

    /// A new message id: JetStream may have lost the first publish (it acknowledges
    /// before the message reaches disk, and a deleted store loses every job).
    async fn requeue(&self, job: Job, attempt: u32) -> Result<(), QueueError> {
        if self.keep_back(&job, attempt) {
            return Ok(());
        }
        self.publish(&job, message_id(&job, attempt.max(1))).await
    }

    fn shared(&self) -> bool {
        true
    }

    fn scheduler_running(&self, running: bool) {
        self.local_first
            .store(running, std::sync::atomic::Ordering::Release);
        if running {
            return;
        }
        // The next scheduler (here or elsewhere) publishes every due call again; local
        // jobs not yet taken would then be made twice.
        if let Ok(mut local) = self.local.lock() {
            let mut dropped = Vec::new();
            for queue in local.held.values_mut() {
                queue.retain(|job| match job {
                    InHand::Local(job) => {
                        dropped.push(job.clone());
                        false
                    }
                    InHand::Fetched(_) => true,
                });
            }
            local.held.retain(|_, queue| !queue.is_empty());
            let tokens: HashSet<String> = local.held.keys().cloned().collect();
            local.turns.retain(|token| tokens.contains(token));
            for job in dropped {
                local.local_jobs.remove(&job);
            }
        }
    }

    /// A job of a held run, kept back or not yet queued, is this process's to make.
    fn claim(&self, job: &Job) -> bool {
        self.holds
            .lock()
            .map(|mut holds| holds.claim(job))
            .unwrap_or(false)
    }

    fn release(&self, job: &Job) {
        if let Ok(mut holds) = self.holds.lock() {
            holds.claimed.remove(job);
        }
    }

    fn hold_run(&self, run_id: Uuid) {
        if let Ok(mut holds) = self.holds.lock() {
            holds.hold(run_id);
        }
    }

    fn release_run(&self, run_id: Uuid) -> Vec<(Job, u32)> {
        self.holds
            .lock()
            .map(|mut holds| holds.release_run(run_id))
            .unwrap_or_default()
    }

    fn depth(&self) -> HashMap<String, usize> {
        self.local
            .lock()
            .map(|l| l.held.iter().map(|(t, q)| (t.clone(), q.len())).collect())
            .unwrap_or_default()
    }

    fn name(&self) -> &'static str {
        "jetstream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_tokens_are_safe_subject_tokens_and_distinct() {
        assert_eq!(tenant_token("default"), "default");
        assert_eq!(tenant_token("acme-prod_1"), "acme-prod_1");
        assert_eq!(tenant_token("a.b"), "x_612e62");
        assert_eq!(tenant_token("x_61"), "x_785f3631");
        assert_ne!(tenant_token("a b"), tenant_token("a_b"));
        assert!(!tenant_token("*>.").contains(['*', '>', '.']));
    }

    fn job(run: u128, token: u64) -> Job {
        Job {
            tenant: "t".into(),
            run_id: Uuid::from_u128(run),
            target: CallTarget::Step(format!("s{token}")),
            token,
        }
    }

    #[test]
    fn jobs_of_a_run_not_held_go_to_the_stream() {
        let mut holds = Holds::default();
        assert!(!holds.keep_back(&job(1, 1), 0));
        assert!(
            !holds.claim(&job(1, 1)),
            "only a held run's jobs can be claimed"
        );
    }

    #[test]
    fn a_held_runs_next_job_is_claimed_whether_queued_before_or_after() {
        let mut holds = Holds::default();
        holds.hold(Uuid::from_u128(1));
        // The scheduler was quicker than the worker: kept back, then claimed.
        assert!(holds.keep_back(&job(1, 2), 0));
        assert!(holds.claim(&job(1, 2)));
        assert!(!holds.claim(&job(1, 2)), "claimed once");
        assert!(
            holds.release_run(Uuid::from_u128(1)).is_empty(),
            "a claimed job is not handed back to be queued"
        );
        // The scheduler queues it while it is being made: nothing to do.
        assert!(holds.keep_back(&job(1, 2), 0));
        holds.claimed.remove(&job(1, 2));
        assert!(!holds.keep_back(&job(1, 2), 0), "once made, it is not ours");
    }

    #[test]
    fn kept_back_jobs_not_claimed_are_handed_back_at_the_last_release() {
        let mut holds = Holds::default();
        let run = Uuid::from_u128(1);
        holds.hold(run);
        holds.hold(run);
        // Two parallel steps became due; the worker takes one.
        assert!(holds.keep_back(&job(1, 2), 0));
        assert!(holds.keep_back(&job(1, 3), 0));
        assert!(holds.keep_back(&job(1, 3), 2), "a requeue of a kept job");
        assert!(holds.claim(&job(1, 2)));
        assert!(holds.release_run(run).is_empty(), "still held once");
        assert_eq!(holds.release_run(run), vec![(job(1, 3), 2)]);
        assert!(!holds.keep_back(&job(1, 4), 0), "no longer held");
        assert!(
            !holds.keep_back(&job(2, 1), 0),
            "another run was never held"
        );
    }

    #[test]
    fn a_job_is_its_own_message_id_and_survives_the_wire() {
        let job = Job {
            tenant: "t".into(),
            run_id: Uuid::from_u128(7),
            target: CallTarget::Step("abc".into()),
            token: 3,
        };
        assert_eq!(message_id(&job, 0), message_id(&job.clone(), 0));
        assert_ne!(message_id(&job, 0), message_id(&job, 1));
        assert_eq!(decode(&encode(&job)), Some(job));
    }
}
