//! The `flowforge` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flowforge_store::sqlite::Durability;

use crate::config::{Config, Mode, Storage};
use crate::platform::Platform;

#[derive(Parser, Debug)]
#[command(
    name = "flowforge",
    version,
    about = "FlowForge: durable workflows and AI-agent orchestration on one event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run FlowForge for local development: embedded SQLite, no other software.
    Dev(DevArgs),
    /// Run FlowForge in production (PostgreSQL; settings from FLOWFORGE_* variables).
    Serve(Box<ServeArgs>),
    /// Create or upgrade the databases, then exit.
    Migrate(StorageArgs),
    /// Create an admin user (and their tenant, if it does not exist yet), then exit.
    CreateAdmin(CreateAdminArgs),
    /// Inspect and rebuild read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Send an event to a running server.
    Send(crate::client_cli::SendArgs),
    /// List, show, cancel and replay runs on a running server.
    Runs {
        #[command(subcommand)]
        command: crate::client_cli::RunsCommand,
    },
    /// Measure FlowForge on this machine.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Args, Debug, Clone)]
struct StorageArgs {
    /// postgres://… for PostgreSQL, or sqlite://DIR for the embedded store in DIR.
    /// Without it, the embedded store in --data-dir.
    #[arg(long, env = "FLOWFORGE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Folder of the embedded SQLite store.
    #[arg(long, env = "FLOWFORGE_DATA_DIR", default_value = ".flowforge")]
    data_dir: PathBuf,
    /// SQLite durability: `full` fsyncs every commit; `normal` survives a process crash only.
    #[arg(long, env = "FLOWFORGE_SQLITE_DURABILITY", default_value = "full")]
    sqlite_durability: Durability,
    /// Size of the PostgreSQL connection pool of the event log.
    #[arg(long, env = "FLOWFORGE_DB_MAX_CONNECTIONS", default_value_t = 32)]
    db_max_connections: u32,
}

impl StorageArgs {
    fn storage(&self) -> anyhow::Result<Storage> {
        match &self.database_url {
            Some(url) => Storage::from_url(url, self.db_max_connections, self.sqlite_durability)
                .map_err(anyhow::Error::msg),
            None => Ok(Storage::Sqlite {
                data_dir: self.data_dir.clone(),
                durability: self.sqlite_durability,
            }),
        }
    }
}

/// Settings of the execution engine, shared by `dev` and `serve`.
#[derive(Args, Debug, Clone)]
struct EngineArgs {
    /// This process's name, recorded in the metadata of the events it appends
    /// (default: `<hostname>-<pid>`).
    #[arg(long, env = "FLOWFORGE_INSTANCE")]
    instance: Option<String>,
    /// Largest accepted event request, in bytes.
    #[arg(long, env = "FLOWFORGE_MAX_EVENT_BYTES", default_value_t = 512 * 1024)]
    max_event_bytes: usize,
    /// The skills marketplace (the skills.sh API) skills are searched and imported from.
    #[arg(
        long,
        env = "FLOWFORGE_SKILLS_MARKETPLACE_URL",
        default_value = "https://skills.sh"
    )]
    skills_marketplace_url: String,
    /// Milliseconds one request to a skills marketplace or site may take.
    #[arg(
        long,
        env = "FLOWFORGE_SKILLS_FETCH_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    skills_fetch_timeout_ms: u64,
    /// Signs every call to apps with this key (`X-Inngest-Signature`, HMAC-SHA256).
    #[arg(long, env = "FLOWFORGE_SIGNING_KEY", hide_env_values = true)]
    signing_key: Option<String>,
    /// Calls to apps in flight at once.
    #[arg(long, env = "FLOWFORGE_EXECUTOR_CONCURRENCY", default_value_t = 64)]
    executor_concurrency: usize,
    /// Seconds one call to an app may take.
    #[arg(long, env = "FLOWFORGE_CALL_TIMEOUT_SECS", default_value_t = 300)]
    call_timeout_secs: u64,
    /// First retry delay in milliseconds; doubles per attempt (with jitter) up to the maximum.
    #[arg(long, env = "FLOWFORGE_RETRY_BACKOFF_MS", default_value_t = 1_000)]
    retry_backoff_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(
        long,
        env = "FLOWFORGE_RETRY_BACKOFF_MAX_MS",
        default_value_t = 600_000
    )]
    retry_backoff_max_ms: u64,
    /// Retries of a function that does not say (each step and call gets retries + 1 attempts).
    #[arg(long, env = "FLOWFORGE_DEFAULT_RETRIES", default_value_t = 3)]
    default_retries: u32,
    /// Calls larger than this ask the app to fetch the run's data through the API.
    #[arg(long, env = "FLOWFORGE_MAX_CALL_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_call_bytes: usize,
    /// The previous signing key during a rotation: apps may still authenticate with it.
    #[arg(long, env = "FLOWFORGE_SIGNING_KEY_FALLBACK", hide_env_values = true)]
    signing_key_fallback: Option<String>,
    /// Inngest-format event keys accepted on /e/{key}: `key` or `key=tenant`, comma-separated.
    #[arg(long, env = "FLOWFORGE_EVENT_KEYS", hide_env_values = true)]
    event_keys: Option<String>,
}

impl EngineArgs {
    fn skill_sources(&self) -> crate::config::SkillSources {
        crate::config::SkillSources {
            marketplace_url: self.skills_marketplace_url.trim_end_matches('/').to_owned(),
            timeout: std::time::Duration::from_millis(self.skills_fetch_timeout_ms.max(1)),
        }
    }

    fn inngest_keys(&self) -> crate::config::InngestKeys {
        crate::config::InngestKeys {
            event_keys: self
                .event_keys
                .as_deref()
                .map(crate::config::InngestKeys::parse_event_keys)
                .unwrap_or_default(),
            signing_keys: self
                .signing_key
                .iter()
                .chain(self.signing_key_fallback.iter())
                .filter(|k| !k.is_empty())
                .cloned()
                .collect(),
        }
    }
}

impl EngineArgs {
    fn engine_config(&self, server_kind: &'static str) -> flowforge_engine::EngineConfig {
        flowforge_engine::EngineConfig {
            executor_concurrency: self.executor_concurrency.max(1),
            call_timeout: std::time::Duration::from_secs(self.call_timeout_secs.max(1)),
            default_max_attempts: self.default_retries + 1,
            backoff: flowforge_domain::run::BackoffPolicy {
                initial_ms: self.retry_backoff_ms.max(1),
                max_ms: self.retry_backoff_max_ms.max(self.retry_backoff_ms.max(1)),
            },
            server_kind,
            max_call_bytes: self.max_call_bytes,
            job_lease: None,
            instance: self
                .instance
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(flowforge_engine::default_instance),
        }
    }
}

/// How callers prove who they are.
#[derive(Args, Debug, Clone)]
struct AuthArgs {
    /// Secret that signs access tokens, at least 32 bytes. `flowforge dev` makes one
    /// and keeps it in its data folder when this is not set.
    #[arg(long, env = "FLOWFORGE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Minutes an access token stays valid (logout ends it sooner).
    #[arg(long, env = "FLOWFORGE_TOKEN_TTL_MINUTES", default_value_t = 15)]
    token_ttl_minutes: u64,
    /// Milliseconds a verified API key is trusted before its stream is read again;
    /// revocations reach every process sooner through the log. 0 reads it on every
    /// request.
    #[arg(long, env = "FLOWFORGE_API_KEY_CACHE_MS", default_value_t = 1_000)]
    api_key_cache_ms: u64,
}

impl AuthArgs {
    fn config(
        &self,
        mode: crate::auth::AuthMode,
        secret: Vec<u8>,
    ) -> anyhow::Result<crate::auth::AuthConfig> {
        if secret.len() < crate::auth::token::MIN_SECRET_BYTES {
            anyhow::bail!(
                "FLOWFORGE_JWT_SECRET must be at least {} bytes",
                crate::auth::token::MIN_SECRET_BYTES
            );
        }
        Ok(crate::auth::AuthConfig {
            mode,
            tokens: Some(crate::auth::token::TokenKeys::new(&secret)),
            token_ttl: std::time::Duration::from_secs(
                self.token_ttl_minutes.clamp(1, 24 * 60) * 60,
            ),
            key_cache_ttl: std::time::Duration::from_millis(self.api_key_cache_ms.min(60_000)),
        })
    }
}

/// The dev server's token secret: FLOWFORGE_JWT_SECRET, or one kept in the data folder
/// (made on first start) so that logins survive restarts.
fn dev_token_secret(args: &AuthArgs, data_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &args.jwt_secret {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt-secret");
    if let Ok(existing) = std::fs::read_to_string(&path)
        && let Ok(secret) = hex::decode(existing.trim())
    {
        return Ok(secret);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let secret = crate::config::random_secret();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, hex::encode(&secret).as_bytes())?;
    Ok(secret)
}

#[derive(Args, Debug)]
struct CreateAdminArgs {
    #[arg(short, long)]
    email: String,
    /// At least 12 characters.
    #[arg(short, long, env = "FLOWFORGE_ADMIN_PASSWORD", hide_env_values = true)]
    password: String,
    #[arg(short, long, default_value = "Admin")]
    name: String,
    /// The tenant (created if it does not exist): lowercase letters, digits, dashes.
    #[arg(long, default_value = "default")]
    tenant: String,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Args, Debug)]
struct DevArgs {
    /// A folder of Python functions to serve (with the Python SDK, restarted when a file
    /// changes), e.g. `flowforge dev .`
    dir: Option<PathBuf>,
    /// The URL of an app you already run (its SDK endpoint): asked to sync. Repeatable.
    #[arg(short = 'u', long = "url")]
    urls: Vec<String>,
    /// Address to listen on. Loopback by default: dev mode is for one developer.
    #[arg(long, env = "FLOWFORGE_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (8288 is where Inngest's SDKs look for a dev server; 0 picks one).
    #[arg(short, long, env = "FLOWFORGE_PORT", default_value_t = 8288)]
    port: u16,
    /// Folder of the embedded SQLite store.
    #[arg(long, env = "FLOWFORGE_DATA_DIR", default_value = ".flowforge")]
    data_dir: PathBuf,
    #[arg(long, env = "FLOWFORGE_SQLITE_DURABILITY", default_value = "full")]
    sqlite_durability: Durability,
    /// Require credentials on every request, as `flowforge serve` does (without it, a
    /// request with none acts as the admin of the default tenant).
    #[arg(long, env = "FLOWFORGE_DEV_AUTH", default_value_t = false)]
    auth: bool,
    #[command(flatten)]
    auth_args: AuthArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[arg(long, env = "FLOWFORGE_HOST", default_value = "0.0.0.0")]
    host: String,
    #[arg(short, long, env = "FLOWFORGE_PORT", default_value_t = 8288)]
    port: u16,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    nats: NatsArgs,
    /// /ready answers 503 while a read model is more than this many log positions behind.
    #[arg(long, env = "FLOWFORGE_READY_MAX_LAG", default_value_t = 10_000)]
    ready_max_lag: u64,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// NATS JetStream, for work distribution across processes.
#[derive(Args, Debug)]
struct NatsArgs {
    /// NATS server(s), e.g. nats://nats-1:4222,nats://nats-2:4222. Without it, work stays
    /// in each process (one process does all of it).
    #[arg(long, env = "FLOWFORGE_NATS_URL")]
    nats_url: Option<String>,
    /// NATS credentials file (.creds), for NGS/operator-mode servers.
    #[arg(long, env = "FLOWFORGE_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    #[arg(long, env = "FLOWFORGE_NATS_USER")]
    nats_user: Option<String>,
    #[arg(long, env = "FLOWFORGE_NATS_PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    #[arg(long, env = "FLOWFORGE_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// Require TLS to NATS (the system's root certificates).
    #[arg(long, env = "FLOWFORGE_NATS_TLS", default_value_t = false)]
    nats_tls: bool,
    /// Prefix of FlowForge's stream and subjects (`<PREFIX>_JOBS`, `<prefix>.jobs.<tenant>`).
    #[arg(long, env = "FLOWFORGE_NATS_PREFIX", default_value = "FLOWFORGE")]
    nats_prefix: String,
    /// Replicas of the job stream (1 on one server; 3 on a cluster).
    #[arg(long, env = "FLOWFORGE_NATS_REPLICAS", default_value_t = 1)]
    nats_replicas: usize,
    /// Seconds a delivered job may go unacknowledged before JetStream delivers it again
    /// (executors touch jobs they are working on every third of it).
    #[arg(long, env = "FLOWFORGE_NATS_ACK_WAIT_SECS", default_value_t = 30)]
    nats_ack_wait_secs: u64,
    /// Jobs of one tenant each process keeps in hand, waiting for one of its executors
    /// (in the scheduler's process: jobs it keeps instead of publishing them).
    #[arg(long, env = "FLOWFORGE_NATS_PREFETCH_PER_TENANT", default_value_t = 64)]
    nats_prefetch_per_tenant: usize,
    /// Seconds after which a queued job whose run has not moved on is queued again
    /// (default: the call timeout plus the ack wait).
    #[arg(long, env = "FLOWFORGE_JOB_LEASE_SECS")]
    job_lease_secs: Option<u64>,
}

impl NatsArgs {
    fn settings(
        &self,
    ) -> anyhow::Result<Option<flowforge_engine::queue::jetstream::JetStreamSettings>> {
        let Some(url) = &self.nats_url else {
            return Ok(None);
        };
        if self.nats_prefix.is_empty()
            || !self
                .nats_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            anyhow::bail!("FLOWFORGE_NATS_PREFIX must be letters, digits, `_` or `-`");
        }
        let mut settings = flowforge_engine::queue::jetstream::JetStreamSettings::new(url.clone());
        settings.prefix = self.nats_prefix.clone();
        settings.replicas = self.nats_replicas.max(1);
        settings.ack_wait = std::time::Duration::from_secs(self.nats_ack_wait_secs.max(1));
        settings.prefetch_per_tenant = self.nats_prefetch_per_tenant.max(1);
        settings.credentials_file = self.nats_creds.clone();
        settings.user_password = match (&self.nats_user, &self.nats_password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => anyhow::bail!("FLOWFORGE_NATS_USER and FLOWFORGE_NATS_PASSWORD go together"),
        };
        settings.token = self.nats_token.clone();
        settings.tls_required = self.nats_tls;
        Ok(Some(settings))
    }
}

#[derive(Subcommand, Debug)]
enum ProjectionsCommand {
    /// Each projection's checkpoint, the log head, and the lag between them.
    Status {
        #[command(flatten)]
        storage: StorageArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a read model from the start of the log into fresh tables, then swap it
    /// in; the running server keeps answering from the old one meanwhile.
    Rebuild {
        /// A projection name (see `status`), or `all`.
        name: String,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Event-log and projection throughput and latency, per backend.
    Store(crate::bench::store::StoreBenchArgs),
    /// Durable runs end to end (the peers' 3-step workload), per backend.
    Runs(crate::bench::runs::RunsBenchArgs),
    /// The task board and comments at scale: board queries, `as_of` on a long
    /// history, projection rebuild rates.
    Team(crate::bench::team::TeamBenchArgs),
}

pub fn main() -> ExitCode {
    run_cli(Cli::parse())
}

/// `flowforge <command> …` under another program name: `flowforge-create-admin -e … -p …`
/// is `flowforge create-admin -e … -p …`.
pub fn main_with_command(command: &str) -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    args.insert(1.min(args.len()), command.into());
    run_cli(Cli::parse_from(args))
}

fn run_cli(cli: Cli) -> ExitCode {
    crate::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => {
            let mode = if args.auth {
                crate::auth::AuthMode::Required
            } else {
                crate::auth::AuthMode::Open
            };
            let auth = args
                .auth_args
                .config(mode, dev_token_secret(&args.auth_args, &args.data_dir)?)?;
            let config = Config {
                mode: Mode::Dev,
                host: args.host,
                port: args.port,
                storage: Storage::Sqlite {
                    data_dir: args.data_dir,
                    durability: args.sqlite_durability,
                },
                nats: None,
                ready_max_lag: 10_000,
                max_event_bytes: args.engine.max_event_bytes,
                engine: args.engine.engine_config("dev"),
                inngest_keys: args.engine.inngest_keys(),
                skills: args.engine.skill_sources(),
                auth,
            };
            let apps = DevApps {
                dir: args.dir,
                urls: args.urls,
                data_dir: data_dir_of(&config),
            };
            run_server(config, Some(apps)).await
        }
        Command::Serve(args) => {
            let Some(_) = &args.storage.database_url else {
                anyhow::bail!(
                    "flowforge serve needs a database: set FLOWFORGE_DATABASE_URL \
                     (postgres://… in production, or sqlite://DIR) or pass --database-url"
                );
            };
            let Some(secret) = &args.auth.jwt_secret else {
                anyhow::bail!(
                    "flowforge serve needs FLOWFORGE_JWT_SECRET (at least {} random bytes) \
                     to sign access tokens",
                    crate::auth::token::MIN_SECRET_BYTES
                );
            };
            let auth = args
                .auth
                .config(crate::auth::AuthMode::Required, secret.as_bytes().to_vec())?;
            let config = Config {
                mode: Mode::Serve,
                host: args.host,
                port: args.port,
                storage: args.storage.storage()?,
                nats: args.nats.settings()?,
                ready_max_lag: args.ready_max_lag,
                max_event_bytes: args.engine.max_event_bytes,
                engine: {
                    let mut engine = args.engine.engine_config("cloud");
                    if args.nats.nats_url.is_some() {
                        engine.job_lease = Some(match args.nats.job_lease_secs {
                            Some(secs) => std::time::Duration::from_secs(secs.max(1)),
                            None => {
                                engine.call_timeout
                                    + std::time::Duration::from_secs(args.nats.nats_ack_wait_secs)
                            }
                        });
                    }
                    engine
                },
                inngest_keys: args.engine.inngest_keys(),
                skills: args.engine.skill_sources(),
                auth,
            };
            run_server(config, None).await
        }
        Command::CreateAdmin(args) => {
            let platform = Platform::open(tool_config(&args.storage)?).await?;
            let state = crate::routes::AppState::new(platform);
            let created = crate::routes::identity::create_admin(
                &state,
                &args.tenant,
                &args.email,
                &args.name,
                &args.password,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.body.message))?;
            let id = created
                .profile
                .map(|p| p.user_id.to_string())
                .unwrap_or_default();
            println!(
                "created admin {} (user {id}) in tenant {}",
                args.email, args.tenant
            );
            Ok(())
        }
        Command::Migrate(storage) => {
            let config = tool_config(&storage)?;
            let described = config.storage.describe();
            let _platform = Platform::open(config).await?;
            println!("migrations applied ({described})");
            Ok(())
        }
        Command::Projections { command } => projections(command).await,
        Command::Send(args) => crate::client_cli::send(args).await,
        Command::Runs { command } => crate::client_cli::runs(command).await,
        Command::Bench { command } => match command {
            BenchCommand::Store(args) => crate::bench::store::run(args).await,
            BenchCommand::Runs(args) => crate::bench::runs::run(args).await,
            BenchCommand::Team(args) => crate::bench::team::run(args).await,
        },
    }
}

fn tool_config(storage: &StorageArgs) -> anyhow::Result<Config> {
    let mut config = Config::dev(storage.data_dir.clone());
    config.mode = Mode::Serve;
    config.storage = storage.storage()?;
    Ok(config)
}

/// The apps `flowforge dev` starts or syncs once it listens.
struct DevApps {
    dir: Option<PathBuf>,
    urls: Vec<String>,
    data_dir: PathBuf,
}

fn data_dir_of(config: &Config) -> PathBuf {
    match &config.storage {
        Storage::Sqlite { data_dir, .. } => data_dir.clone(),
        Storage::Postgres { .. } => PathBuf::from(".flowforge"),
    }
}

async fn run_server(config: Config, apps: Option<DevApps>) -> anyhow::Result<()> {
    let described = config.storage.describe();
    let mode = config.mode;
    let (listener, addr) = crate::http::bind(&config.host, config.port)
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let platform = Platform::start(config).await?;
    let mode = match mode {
        Mode::Dev => "dev",
        Mode::Serve => "serve",
    };
    // Tests and scripts read this line to find the port.
    println!("FlowForge {mode} listening on http://{addr} ({described})");
    tracing::info!(%addr, storage = %described, mode, "listening");
    if let Some(apps) = apps {
        // Apps reach the server on loopback when it listens on every address.
        let server_url = match addr.ip().is_unspecified() {
            true => format!("http://127.0.0.1:{}", addr.port()),
            false => format!("http://{addr}"),
        };
        println!("  API:       {server_url}/api/v1  (OpenAPI at {server_url}/api/v1/openapi.json)");
        println!("  Events:    flowforge send NAME -d '{{...}}'");
        if let Some(dir) = apps.dir {
            let dir = dir.canonicalize().unwrap_or(dir);
            if crate::dev_apps::holds_python(&dir) {
                println!("  Functions: the Python functions in {}", dir.display());
                tokio::spawn(crate::dev_apps::supervise_python(
                    dir,
                    server_url.clone(),
                    apps.data_dir,
                ));
            } else {
                eprintln!(
                    "flowforge dev: no Python files in {}; serving no functions from it",
                    dir.display()
                );
            }
        }
        if !apps.urls.is_empty() {
            tokio::spawn(crate::dev_apps::sync_urls(apps.urls));
        }
    }
    crate::http::serve(platform, listener, crate::http::shutdown_signal()).await
}

async fn projections(command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Status { storage, json } => {
            let platform = Platform::open(tool_config(&storage)?).await?;
            let status = flowforge_projections::status(
                platform.operations_db(),
                &*platform.store,
                &platform.projections,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            println!(
                "{:<16} {:>4} {:>12} {:>12} {:>10} {:>14}  {:<24} REBUILDING",
                "PROJECTION", "GEN", "CHECKPOINT", "HEAD", "LAG", "APPLIED", "UPDATED"
            );
            for s in status {
                let updated = s
                    .updated_at_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_else(|| "never".into());
                let rebuilding = s
                    .rebuilding
                    .map(|(g, p)| format!("gen {g} at {p}"))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<16} {:>4} {:>12} {:>12} {:>10} {:>14}  {:<24} {}",
                    s.name,
                    s.generation.map_or("-".into(), |g| g.to_string()),
                    s.checkpoint.map_or("-".into(), |c| c.to_string()),
                    s.head,
                    s.lag,
                    s.events_applied,
                    updated,
                    rebuilding
                );
            }
            Ok(())
        }
        ProjectionsCommand::Rebuild { name, storage } => {
            let platform = Platform::open(tool_config(&storage)?).await?;
            let targets = if name == "all" {
                platform.projections.clone()
            } else {
                vec![platform.projection(&name).ok_or_else(|| {
                    let known: Vec<_> = platform.projections.iter().map(|p| p.name()).collect();
                    anyhow::anyhow!("unknown projection `{name}`; known: {}", known.join(", "))
                })?]
            };
            for projection in targets {
                let report = flowforge_projections::rebuild(
                    platform.operations_db(),
                    &platform.store,
                    &projection,
                )
                .await?;
                println!(
                    "rebuilt {} as generation {}: {} events up to position {} in {:.2} s ({:.0} events/s)",
                    report.projection,
                    report.generation,
                    report.events,
                    report.position,
                    report.elapsed.as_secs_f64(),
                    report.events_per_second()
                );
            }
            Ok(())
        }
    }
}
