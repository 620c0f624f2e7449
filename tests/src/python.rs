//! A Python virtual environment with Inngest's official SDK, for compatibility tests.
//! Created once under `target/ff-python` (packages from PyPI); skipped without Python
//! or PyPI unless `CI=true`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Packages the compatibility tests install.
pub const PACKAGES: &[&str] = &["inngest==0.5.19", "flask>=3,<4"];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The venv's python, creating the venv if needed.
pub fn inngest_python() -> Option<PathBuf> {
    let dir = workspace_root().join("target/ff-python");
    let python = dir.join("venv/bin/python");
    let ready = dir.join("venv/.flowforge-ready");
    if ready.exists() {
        return Some(python);
    }
    std::fs::create_dir_all(&dir).ok()?;
    // Several test processes may get here at once: one creates, the others wait.
    let lock = dir.join("lock");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while std::fs::create_dir(&lock).is_err() {
        if ready.exists() {
            return Some(python);
        }
        if std::time::Instant::now() > deadline {
            return crate::missing_service(
                "a Python venv with inngest",
                "timed out waiting for another test to create it",
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = (|| -> Result<(), String> {
        if !ready.exists() {
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(dir.join("venv"))
                .status()
                .map_err(|e| format!("python3 -m venv: {e}"))?;
            if !status.success() {
                return Err("python3 -m venv failed".into());
            }
            let output = Command::new(dir.join("venv/bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(PACKAGES)
                .output()
                .map_err(|e| format!("pip: {e}"))?;
            if !output.status.success() {
                return Err(format!(
                    "pip install failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                ));
            }
            std::fs::write(&ready, PACKAGES.join("\n")).map_err(|e| e.to_string())?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir(&lock);
    match result {
        Ok(()) => Some(python),
        Err(why) => crate::missing_service("a Python venv with inngest from PyPI", why),
    }
}

/// A free local port (there is a small window in which another process could take it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A child process killed when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
