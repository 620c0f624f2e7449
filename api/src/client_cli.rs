//! `flowforge send` and `flowforge runs …`: the REST API from a terminal.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The FlowForge server to talk to.
    #[arg(long, env = "FLOWFORGE_URL", default_value = "http://127.0.0.1:8288")]
    url: String,
    /// An API key (`ff_live_…`) or access token; `flowforge serve` requires one.
    #[arg(long, env = "FLOWFORGE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The event name, e.g. order/created.
    name: String,
    /// The event data, a JSON object.
    #[arg(short, long, default_value = "{}")]
    data: String,
    /// An id for de-duplication: an event with an id already seen is not run twice.
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// Recent runs, newest first.
    List {
        #[arg(long)]
        function: Option<String>,
        /// queued, running, completed, failed, cancelled (comma-separated).
        #[arg(long)]
        status: Option<String>,
        /// The triggering event's id.
        #[arg(long)]
        event: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// One run with its step timeline.
    Show {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Cancel a run.
    Cancel {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Start a new run from the same event, linked to the original.
    Replay {
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

async fn call(
    method: reqwest::Method,
    target: &Target,
    path: &str,
    query: &[(&str, String)],
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", target.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url).query(query);
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| {
        format!(
            "cannot reach FlowForge at {} (set FLOWFORGE_URL or --url)",
            target.url
        )
    })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        match body["error"]["field"].as_str() {
            Some(field) => bail!("{status}: {field}: {message}"),
            None => bail!("{status}: {message}"),
        }
    }
    Ok(body)
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let data: Value = serde_json::from_str(&args.data).context("--data must be JSON")?;
    let mut event = json!({"name": args.name, "data": data});
    if let Some(id) = args.id {
        event["id"] = json!(id);
    }
    let body = call(
        reqwest::Method::POST,
        &args.target,
        "/api/v1/events",
        &[],
        Some(event),
    )
    .await?;
    if args.target.json {
        return print_json(&body);
    }
    for id in body["ids"].as_array().into_iter().flatten() {
        println!("sent {} as {}", args.name, id.as_str().unwrap_or_default());
    }
    Ok(())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

pub async fn runs(command: RunsCommand) -> anyhow::Result<()> {
    match command {
        RunsCommand::List {
            function,
            status,
            event,
            limit,
            target,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(function.map(|f| ("function", f)));
            query.extend(status.map(|s| ("status", s)));
            query.extend(event.map(|e| ("event", e)));
            let page = call(reqwest::Method::GET, &target, "/api/v1/runs", &query, None).await?;
            if target.json {
                return print_json(&page);
            }
            println!(
                "{:<36}  {:<10}  {:<28}  {:<25}  STEPS",
                "RUN", "STATUS", "FUNCTION", "CREATED"
            );
            for run in page["items"].as_array().into_iter().flatten() {
                println!(
                    "{:<36}  {:<10}  {:<28}  {:<25}  {}",
                    text(&run["id"]),
                    text(&run["status"]),
                    text(&run["function_id"]),
                    text(&run["created_at"]),
                    run["steps_completed"]
                );
            }
            Ok(())
        }
        RunsCommand::Show { id, target } => {
            let run = call(
                reqwest::Method::GET,
                &target,
                &format!("/api/v1/runs/{id}"),
                &[],
                None,
            )
            .await?;
            if target.json {
                return print_json(&run);
            }
            println!("run       {}", text(&run["id"]));
            println!(
                "function  {} (version {})",
                text(&run["function_id"]),
                run["function_version"]
            );
            println!("status    {}", text(&run["status"]));
            println!(
                "event     {} {}",
                text(&run["event"]["name"]),
                run["event"]["data"]
            );
            println!("created   {}", text(&run["created_at"]));
            println!("finished  {}", text(&run["finished_at"]));
            if !run["output"].is_null() {
                println!("output    {}", run["output"]);
            }
            if !run["error"].is_null() {
                println!(
                    "error     {}: {}",
                    text(&run["error"]["name"]),
                    text(&run["error"]["message"])
                );
            }
            println!("steps:");
            for step in run["steps"].as_array().into_iter().flatten() {
                let attempts = step["attempts"].as_array().map_or(0, Vec::len);
                println!(
                    "  {:<24} {:<14} {:<10} {}{}",
                    text(&step["name"]),
                    text(&step["kind"]),
                    text(&step["status"]),
                    if step["output"].is_null() {
                        String::new()
                    } else {
                        step["output"].to_string()
                    },
                    if attempts > 0 {
                        format!("  ({attempts} failed attempts)")
                    } else {
                        String::new()
                    }
                );
            }
            Ok(())
        }
        RunsCommand::Cancel { id, target } => {
            let body = call(
                reqwest::Method::POST,
                &target,
                &format!("/api/v1/runs/{id}/cancel"),
                &[],
                Some(json!({})),
            )
            .await?;
            if target.json {
                return print_json(&body);
            }
            println!("run {id} is {}", text(&body["status"]));
            Ok(())
        }
        RunsCommand::Replay { id, target } => {
            let body = call(
                reqwest::Method::POST,
                &target,
                &format!("/api/v1/runs/{id}/replay"),
                &[],
                Some(json!({})),
            )
            .await?;
            if target.json {
                return print_json(&body);
            }
            println!("replaying {id} as run {}", text(&body["id"]));
            Ok(())
        }
    }
}
