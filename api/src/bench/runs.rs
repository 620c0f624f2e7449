//! `flowforge bench runs`: durable runs end to end, the workload of
//! `shared/bench/peers/run.sh` (a function of 3 sequential steps, each returning its
//! input + 1).
//!
//! The server is this binary started as a child process (`flowforge dev` on SQLite,
//! `flowforge serve` on a throwaway PostgreSQL database), so that its peak RSS is its
//! own. The app (Rust SDK) and the load generator share this process; everything
//! talks HTTP over loopback. Two paths are measured:
//! - `event`: `POST /api/v1/events?wait=true`: the event is recorded, routed to the
//!   function, the run executes, the answer comes back when the run has finished;
//! - `invoke`: `POST /api/v1/functions/{id}/invoke?wait=true` with body `0` and answer
//!   `3`, the same request shape as the peers' load generator (no routing hop).
//!
//! Figures: sequential latency p50/p99 (after warm-up), throughput with concurrent
//! clients (runs/s and steps/s), and the server's peak RSS.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use flowforge_sdk::{App, Error as SdkError, Function};
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use uuid::Uuid;

#[derive(Args, Debug)]
pub struct RunsBenchArgs {
    /// `sqlite`, `postgres`, `both`, or `postgres-nats` (PostgreSQL + NATS JetStream,
    /// `--processes` servers sharing the work).
    #[arg(long, default_value = "both")]
    backend: String,
    /// Servers for `postgres-nats`; clients spread their requests over them.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// `all`: requests go round-robin to every server; `first`: only to the first, so
    /// the others only follow the log and stand by (what a process that serves no
    /// requests costs the one that does).
    #[arg(long, default_value = "all", value_parser = ["all", "first"])]
    send_to: String,
    #[arg(
        long,
        env = "FLOWFORGE_BENCH_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// `event`, `invoke` or `both`.
    #[arg(long, default_value = "both")]
    path: String,
    #[arg(
        long,
        env = "FLOWFORGE_BENCH_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg_url: String,
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    #[arg(long, default_value_t = 200)]
    seq: usize,
    #[arg(long, default_value_t = 2_000)]
    total: usize,
    #[arg(long, default_value_t = 32)]
    conc: usize,
    /// `none`, `keyed-concurrency` (a concurrency limit of 1 per run's own key: it
    /// never binds, so the figure is what enforcing it costs) or `both`.
    #[arg(long, default_value = "none")]
    flow_control: String,
}

fn emit(backend: &str, path: &str, metric: &str, value: f64, unit: &str) {
    // The peers' format, so the lines sit beside theirs.
    println!("peer=flowforge-{backend}-{path} metric={metric} value={value:.3} unit={unit}");
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn bench_app(server_url: String, serve_url: String, control: &str) -> App {
    let mut function = Function::new("run").trigger_event("bench/run");
    if control == "keyed-concurrency" {
        function = function.flow_control("concurrency", json!([{"limit": 1, "key": "event.id"}]));
    }
    App::new("bench", server_url, serve_url).function(function.handler(|ctx, step| async move {
        let v = ctx.event["data"]["input"].as_i64().unwrap_or(0);
        let v: i64 = step
            .run("step1", move || async move { Ok::<_, SdkError>(v + 1) })
            .await?;
        let v: i64 = step
            .run("step2", move || async move { Ok::<_, SdkError>(v + 1) })
            .await?;
        let v: i64 = step
            .run("step3", move || async move { Ok::<_, SdkError>(v + 1) })
            .await?;
        Ok(v)
    }))
}

/// What `flowforge serve` requires, as production sets it up: a token secret, a
/// signing key shared with the app, and an admin whose API key the load generator sends.
struct Security {
    jwt_secret: String,
    signing_key: String,
    database_url: String,
    api_key: Option<String>,
}

impl Security {
    fn new(database_url: String) -> Self {
        let random = || Uuid::new_v4().simple().to_string();
        Self {
            jwt_secret: format!("{}{}", random(), random()),
            signing_key: format!("signkey-bench-{}{}", random(), random()),
            database_url,
            api_key: None,
        }
    }

    /// `flowforge create-admin`, a login, and an admin API key.
    async fn provision(&mut self, server_url: &str) -> anyhow::Result<()> {
        let email = format!("bench-{}@bench.invalid", Uuid::new_v4().simple());
        let password = Uuid::new_v4().simple().to_string();
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(["create-admin", "--email", &email, "--password", &password])
            .args(["--database-url", &self.database_url])
            .env("FLOWFORGE_LOG", "warn")
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("create-admin failed");
        }
        let http = reqwest::Client::new();
        let login: Value = http
            .post(format!("{server_url}/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?
            .json()
            .await?;
        let token = login["access_token"]
            .as_str()
            .context("login answered no token")?;
        let key: Value = http
            .post(format!("{server_url}/api/v1/api-keys"))
            .bearer_auth(token)
            .json(&json!({"name": "bench", "kind": "live", "scopes": ["admin"]}))
            .send()
            .await?
            .json()
            .await?;
        self.api_key = Some(key["key"].as_str().context("no key created")?.to_owned());
        Ok(())
    }
}

struct Server {
    child: std::process::Child,
    url: String,
}

impl Server {
    async fn start(
        args: &[String],
        port: u16,
        security: Option<&Security>,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut command = std::process::Command::new(exe);
        if let Some(security) = security {
            command
                .env("FLOWFORGE_JWT_SECRET", &security.jwt_secret)
                .env("FLOWFORGE_SIGNING_KEY", &security.signing_key);
        }
        let child = command
            .args(args)
            .args(["--port", &port.to_string()])
            // FLOWFORGE_BENCH_SERVER_LOG (e.g. `flowforge_engine=debug`) shows where a
            // run's time goes, with the server's own timestamps.
            .env(
                "FLOWFORGE_LOG",
                std::env::var("FLOWFORGE_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the server")?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http
            .get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > deadline {
                bail!("the server did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, url })
    }

    /// Peak resident set size so far (`VmHWM`), in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(args: RunsBenchArgs) -> anyhow::Result<()> {
    let backends: Vec<&str> = match args.backend.as_str() {
        "both" => vec!["sqlite", "postgres"],
        b @ ("sqlite" | "postgres" | "postgres-nats") => vec![b],
        other => bail!("unknown backend `{other}`"),
    };
    let paths: Vec<&str> = match args.path.as_str() {
        "both" => vec!["event", "invoke"],
        p @ ("event" | "invoke") => vec![p],
        other => bail!("unknown path `{other}`"),
    };
    let controls: Vec<&str> = match args.flow_control.as_str() {
        "both" => vec!["none", "keyed-concurrency"],
        c @ ("none" | "keyed-concurrency") => vec![c],
        other => bail!("unknown flow control `{other}`"),
    };
    for (backend, control) in backends
        .iter()
        .flat_map(|b| controls.iter().map(move |c| (*b, *c)))
    {
        let suffix = if control == "none" { "" } else { "-keyed" };
        match backend {
            "sqlite" => {
                let dir = std::env::temp_dir()
                    .join(format!("flowforge-bench-runs-{}", Uuid::new_v4().simple()));
                let server_args = vec![
                    "dev".to_owned(),
                    "--data-dir".to_owned(),
                    dir.display().to_string(),
                ];
                let label = format!("{backend}{suffix}");
                let result = measure(&args, (&label, control), &paths, &[server_args], None).await;
                // FLOWFORGE_BENCH_KEEP=1 keeps the data for inspection (e.g. per-event timings).
                if std::env::var("FLOWFORGE_BENCH_KEEP").is_ok_and(|v| v == "1") {
                    eprintln!("kept {}", dir.display());
                } else {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                result?;
            }
            _ => {
                let name = format!("ff_bench_{}", Uuid::new_v4().simple());
                let mut admin = sqlx::PgConnection::connect(&args.pg_url)
                    .await
                    .context("connecting to PostgreSQL")?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await?;
                let url = super::store::replace_database(&args.pg_url, &name);
                let mut server_args = vec![
                    "serve".to_owned(),
                    "--host".to_owned(),
                    "127.0.0.1".to_owned(),
                    "--database-url".to_owned(),
                    url.clone(),
                ];
                let prefix = format!("FFBENCH{}", &Uuid::new_v4().simple().to_string()[..12]);
                let mut servers = vec![server_args.clone()];
                let label = if backend == "postgres-nats" {
                    server_args.extend([
                        "--nats-url".to_owned(),
                        args.nats_url.clone(),
                        "--nats-prefix".to_owned(),
                        prefix.clone(),
                    ]);
                    servers = (0..args.processes.max(1))
                        .map(|i| {
                            let mut a = server_args.clone();
                            a.extend(["--instance".to_owned(), format!("bench-{i}")]);
                            a
                        })
                        .collect();
                    let only_first = if args.send_to == "first" && servers.len() > 1 {
                        "-to-first"
                    } else {
                        ""
                    };
                    format!("postgres-nats-{}p{only_first}{suffix}", servers.len())
                } else {
                    format!("{backend}{suffix}")
                };
                let result = measure(
                    &args,
                    (&label, control),
                    &paths,
                    &servers,
                    Some(Security::new(url.clone())),
                )
                .await;
                if backend == "postgres-nats"
                    && let Ok(client) = async_nats::connect(args.nats_url.as_str()).await
                {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(format!("{prefix}_JOBS"))
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                if std::env::var("FLOWFORGE_BENCH_KEEP").is_ok_and(|v| v == "1") {
                    eprintln!("kept database {name}");
                } else {
                    admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await?;
                }
                result?;
            }
        }
    }
    Ok(())
}

async fn measure(
    args: &RunsBenchArgs,
    (backend, control): (&str, &str),
    paths: &[&str],
    servers_args: &[Vec<String>],
    mut security: Option<Security>,
) -> anyhow::Result<()> {
    let mut servers = Vec::new();
    for server_args in servers_args {
        servers.push(Server::start(server_args, free_port()?, security.as_ref()).await?);
    }
    let server = &servers[0];
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(security) = security.as_mut() {
        security.provision(&server.url).await?;
        if let Some(key) = &security.api_key {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {key}").parse()?,
            );
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let serve_url = format!("http://{}/api/flowforge", listener.local_addr()?);
    let mut app = bench_app(server.url.clone(), serve_url, control);
    if let Some(security) = &security {
        app = app.signing_key(security.signing_key.clone());
    }
    let router = axum::Router::new().nest("/api/flowforge", app.router());
    let app_task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    app.register()
        .await
        .map_err(|e| anyhow::anyhow!("registering the bench app: {e}"))?;

    let http = reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(args.conc.max(1))
        .tcp_nodelay(true)
        .build()?;
    for path in paths {
        let receiving = if args.send_to == "first" {
            1
        } else {
            servers.len()
        };
        let call = spread(
            servers
                .iter()
                .take(receiving)
                .map(|s| caller(http.clone(), s.url.clone(), path))
                .collect(),
        );
        for i in 0..args.warmup {
            call(format!("w{i}")).await?;
        }
        let mut latencies = Vec::with_capacity(args.seq);
        for i in 0..args.seq {
            let started = Instant::now();
            call(format!("s{i}")).await?;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        latencies.sort_by(f64::total_cmp);
        emit(
            backend,
            path,
            "seq_latency_p50",
            percentile(&latencies, 50.0),
            "ms",
        );
        emit(
            backend,
            path,
            "seq_latency_p99",
            percentile(&latencies, 99.0),
            "ms",
        );

        let next = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..args.conc.max(1) {
            let call = call.clone();
            let next = next.clone();
            let errors = errors.clone();
            let total = args.total;
            clients.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    if let Err(error) = call(format!("t{i}")).await
                        && errors.fetch_add(1, Ordering::Relaxed) < 3
                    {
                        eprintln!("bench error: {error}");
                    }
                }
            }));
        }
        for client in clients {
            client.await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let done = args.total - errors.load(Ordering::Relaxed);
        emit(
            backend,
            path,
            &format!("throughput_c{}", args.conc),
            done as f64 / elapsed,
            "wf/s",
        );
        emit(
            backend,
            path,
            &format!("steps_per_second_c{}", args.conc),
            3.0 * done as f64 / elapsed,
            "steps/s",
        );
        emit(
            backend,
            path,
            "throughput_errors",
            errors.load(Ordering::Relaxed) as f64,
            "count",
        );
    }
    for (i, server) in servers.iter().enumerate() {
        if let Some(rss) = server.peak_rss_mib() {
            let name = if servers.len() == 1 {
                "server".to_owned()
            } else {
                format!("server{i}")
            };
            emit(backend, &name, "peak_rss", rss, "MiB");
        }
    }
    app_task.abort();
    Ok(())
}

type Call =
    Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Spreads calls round-robin over several servers (as a load balancer would).
fn spread(calls: Vec<Call>) -> Call {
    if calls.len() == 1 {
        return calls[0].clone();
    }
    let next = Arc::new(AtomicUsize::new(0));
    Arc::new(move |id| {
        let i = next.fetch_add(1, Ordering::Relaxed) % calls.len();
        calls[i](id)
    })
}

/// One run, started and waited for over HTTP; checks the answer is 3.
fn caller(http: reqwest::Client, base: String, path: &str) -> Call {
    let event_path = path == "event";
    Arc::new(move |key: String| {
        let http = http.clone();
        let base = base.clone();
        Box::pin(async move {
            let output = if event_path {
                let body = json!({"name": "bench/run", "id": format!("{}-{key}", Uuid::new_v4().simple()), "data": {"input": 0}});
                let answer: Value = http
                    .post(format!("{base}/api/v1/events?wait=true"))
                    .json(&body)
                    .send()
                    .await?
                    .json()
                    .await?;
                answer["runs"][0]["output"].clone()
            } else {
                http.post(format!(
                    "{base}/api/v1/functions/bench-run/invoke?wait=true"
                ))
                .header("content-type", "application/json")
                .body("0")
                .send()
                .await?
                .json()
                .await?
            };
            if output != json!(3) {
                bail!("wrong result {output}");
            }
            Ok(())
        })
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
