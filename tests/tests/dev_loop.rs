//! The developer loop: `flowforge dev DIR` serves the Python functions in DIR with the
//! SDK built into the binary, and serves the new code after a file changes;
//! `flowforge dev -u URL` asks a running app to sync. The real binary, a real Python.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowforge_tests::process::flowforge_binary;
use flowforge_tests::server::{Api, SdkApp};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

struct Dev {
    child: Child,
    url: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flowforge dev ARGS` on `port` (0: any); answers once it listens.
fn dev(args: &[&str], port: u16, data_dir: &std::path::Path) -> Dev {
    let mut child = Command::new(flowforge_binary())
        .arg("dev")
        .args(args)
        .args(["--port", &port.to_string(), "--data-dir"])
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flowforge dev");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("flowforge dev ended before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Dev { child, url }
}

fn python_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import sys; assert sys.version_info >= (3, 10)"])
        .status()
        .is_ok_and(|s| s.success());
    ok || flowforge_tests::missing_service::<()>("Python >= 3.10", "python3 not found").is_some()
}

/// Sends `name` and waits for the run it starts to finish; answers its output.
async fn output_of(api: &Api, name: &str) -> Value {
    let id = api.send(name, json!({})).await;
    let run_id = api.runs_of_event(&id, 1, TIMEOUT).await.remove(0);
    let run = api.finished_run(&run_id, TIMEOUT).await;
    assert_eq!(run["status"], "completed", "{run}");
    run["output"].clone()
}

async fn wait_for_function(api: &Api, id: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, functions) = api.get("/api/v1/functions").await;
        if let Some(found) = functions["items"]
            .as_array()
            .and_then(|items| items.iter().find(|f| f["id"] == id))
        {
            return found.clone();
        }
        assert!(Instant::now() < deadline, "{id} never synced: {functions}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const GREETER: &str = r#"
import flowforge
from flowforge import step

@flowforge.function(id="greet", trigger=flowforge.trigger.event("loop/greet"))
async def greet(ctx):
    word = await step.run("word", lambda: "WORD")
    return {"said": word}
"#;

#[tokio::test]
async fn dev_serves_a_folder_of_python_functions_and_reloads_on_change() {
    if !python_available() {
        return;
    }
    let functions = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let folder = functions.path().join("shop_app");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("greeter.py"), GREETER.replace("WORD", "hello")).unwrap();
    // Tests and virtualenvs in the folder are not loaded.
    std::fs::create_dir(folder.join("tests")).unwrap();
    std::fs::write(folder.join("tests/test_x.py"), "raise SystemExit(3)\n").unwrap();

    let server = dev(&[folder.to_str().unwrap()], 0, data.path());
    let api = Api::new(server.url.clone());
    let synced = wait_for_function(&api, "shop-app-greet").await;
    assert_eq!(synced["app_id"], "shop-app", "{synced}");
    assert_eq!(
        output_of(&api, "loop/greet").await,
        json!({"said": "hello"})
    );

    // Save a change: the functions restart and the next run uses the new code.
    std::fs::write(
        folder.join("greeter.py"),
        GREETER.replace("WORD", "bonjour"),
    )
    .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if output_of(&api, "loop/greet").await == json!({"said": "bonjour"}) {
            break;
        }
        assert!(Instant::now() < deadline, "the change was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The SDK was taken from the binary (nothing was installed for this test).
    assert!(
        data.path()
            .join("python-sdk/flowforge/_execution.py")
            .exists()
            || Command::new("python3")
                .args(["-c", "import flowforge"])
                .status()
                .is_ok_and(|s| s.success()),
        "the Python SDK came from nowhere"
    );
}

#[tokio::test]
async fn dev_with_a_url_asks_the_running_app_to_sync() {
    let data = tempfile::tempdir().unwrap();
    // The app starts first, against a port the server will take.
    let port = flowforge_tests::python::free_port();
    let server_url = format!("http://127.0.0.1:{port}");
    let app = SdkApp::start_unregistered(&server_url, |server, serve| {
        flowforge_sdk::App::new("outside", server, serve).function(
            flowforge_sdk::Function::new("echo")
                .trigger_event("loop/echo")
                .handler(|_ctx, _step| async move { Ok(json!("echoed")) }),
        )
    })
    .await;
    let server = dev(&["-u", &app.url], port, data.path());
    assert_eq!(server.url, server_url);
    let api = Api::new(server_url);
    let synced = wait_for_function(&api, "outside-echo").await;
    assert_eq!(synced["app_id"], "outside");
    assert_eq!(output_of(&api, "loop/echo").await, json!("echoed"));
}
