//! The apps `flowforge dev` looks after: a folder of Python functions it serves with the
//! Python SDK (a child process, restarted when a file changes), or apps the developer
//! already runs, which it asks to sync (`PUT <url>`, as Inngest's dev server does).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::process::{Child, Command};

/// The Python SDK, built into the binary so `flowforge dev DIR` works before (or
/// without) `pip install`: written out under the data folder when `import flowforge`
/// fails in the chosen Python.
const PYTHON_SDK: &[(&str, &str)] = &[
    (
        "__init__.py",
        include_str!("../../sdk/python/flowforge/__init__.py"),
    ),
    (
        "__main__.py",
        include_str!("../../sdk/python/flowforge/__main__.py"),
    ),
    (
        "_app.py",
        include_str!("../../sdk/python/flowforge/_app.py"),
    ),
    (
        "_client.py",
        include_str!("../../sdk/python/flowforge/_client.py"),
    ),
    (
        "_durations.py",
        include_str!("../../sdk/python/flowforge/_durations.py"),
    ),
    (
        "_errors.py",
        include_str!("../../sdk/python/flowforge/_errors.py"),
    ),
    (
        "_execution.py",
        include_str!("../../sdk/python/flowforge/_execution.py"),
    ),
    ("py.typed", ""),
];

/// Folders never watched or loaded.
const SKIPPED: &[&str] = &[
    "__pycache__",
    "node_modules",
    "venv",
    ".venv",
    "tests",
    "test",
];

/// What changes in a folder of Python files: (path, modified, size) of each file.
fn snapshot(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if !SKIPPED.contains(&name.as_str()) {
                    pending.push(path);
                }
            } else if name.ends_with(".py") {
                files.push((
                    path,
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                ));
            }
        }
    }
    files.sort();
    files
}

pub fn holds_python(dir: &Path) -> bool {
    !snapshot(dir).is_empty()
}

fn python() -> String {
    std::env::var("FLOWFORGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A `PYTHONPATH` entry holding the SDK, when the Python cannot import it already.
async fn sdk_path(data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let installed = Command::new(python())
        .args(["-c", "import flowforge"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {} ({e}): set FLOWFORGE_PYTHON", python()))?;
    if installed.success() {
        return Ok(None);
    }
    let root = data_dir.join("python-sdk");
    let package = root.join("flowforge");
    std::fs::create_dir_all(&package)?;
    for (name, text) in PYTHON_SDK {
        std::fs::write(package.join(name), text)?;
    }
    Ok(Some(root))
}

fn spawn(dir: &Path, server_url: &str, port: u16, sdk: Option<&Path>) -> std::io::Result<Child> {
    let mut command = Command::new(python());
    command
        .args(["-m", "flowforge", "serve"])
        .arg(dir)
        .args(["--server", server_url])
        .args(["--port", &port.to_string()])
        // The runner exits when this process does, even when it is killed outright.
        .args(["--parent-pid", &std::process::id().to_string()])
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    if let Some(sdk) = sdk {
        let mut paths = vec![sdk.to_path_buf()];
        if let Some(existing) = std::env::var_os("PYTHONPATH") {
            paths.extend(std::env::split_paths(&existing));
        }
        if let Ok(joined) = std::env::join_paths(paths) {
            command.env("PYTHONPATH", joined);
        }
    }
    command.spawn()
}

/// Serves the Python functions in `dir` until the process ends: starts the SDK's
/// runner, and starts it again when a file changes (or after it crashed, once a file
/// changes).
pub async fn supervise_python(dir: PathBuf, server_url: String, data_dir: PathBuf) {
    let sdk = match sdk_path(&data_dir).await {
        Ok(sdk) => sdk,
        Err(error) => {
            eprintln!(
                "flowforge dev: cannot serve the Python functions in {}: {error:#}",
                dir.display()
            );
            return;
        }
    };
    // One port for every restart: the functions keep their URL, so runs in flight
    // (pinned to a function version, and with it a URL) reach the restarted code
    // when their call is retried.
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(error) => {
            eprintln!("flowforge dev: no free port for the Python functions: {error}");
            return;
        }
    };
    let mut seen = snapshot(&dir);
    let mut child = None;
    let mut start = true;
    loop {
        if start {
            match spawn(&dir, &server_url, port, sdk.as_deref()) {
                Ok(started) => child = Some(started),
                Err(error) => eprintln!("flowforge dev: cannot start {}: {error}", python()),
            }
            start = false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(running) = child.as_mut()
            && let Ok(Some(status)) = running.try_wait()
        {
            eprintln!(
                "flowforge dev: the Python functions stopped ({status}); fix them and save \
                 a file to start them again"
            );
            child = None;
        }
        let now = snapshot(&dir);
        if now != seen {
            seen = now;
            eprintln!(
                "flowforge dev: files changed in {}; restarting the Python functions",
                dir.display()
            );
            if let Some(mut running) = child.take() {
                let _ = running.kill().await;
            }
            start = true;
        }
    }
}

/// Asks apps the developer runs to sync (`PUT` on their endpoint), retrying each until
/// it answers, so the app may start before or after the server.
pub async fn sync_urls(urls: Vec<String>) {
    let http = reqwest::Client::new();
    for url in urls {
        let mut delay = Duration::from_millis(200);
        loop {
            match http.put(&url).send().await {
                Ok(response) if response.status().is_success() => {
                    eprintln!("flowforge dev: synced the app at {url}");
                    break;
                }
                Ok(response) => {
                    eprintln!(
                        "flowforge dev: the app at {url} answered {}",
                        response.status()
                    )
                }
                Err(error) => eprintln!("flowforge dev: cannot reach {url} yet: {error}"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}
