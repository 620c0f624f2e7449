//! A stand-in for the skills.sh marketplace, which cannot be reached from here: a real HTTP
//! server speaking the API the open-source `skills` CLI uses, serving skills a test sets up
//! (and can change mid-test, to exercise refresh), and able to be down, slow or broken.
//!
//! Shapes from: vercel-labs/skills `src/find.ts` (search), `src/blob.ts` (download),
//! `src/providers/wellknown.ts` (`/.well-known/skills`, v0.1), and
//! cloudflare/agent-skills-discovery-rfc `README.md` v0.2.0 (`/.well-known/agent-skills`).
//!
//! Routes:
//! - `GET /api/search?q=&limit=&owner=` →
//!   `{"query","searchType","skills":[{"id":"owner/repo/slug","skillId","name","installs","source":"owner/repo"}],"count","duration_ms"}`
//!   (`q` is a case-insensitive substring of the slug or frontmatter name; `owner` an exact,
//!   case-insensitive owner; `limit` defaults to 10; most installs first).
//! - `GET /api/download/{owner}/{repo}/{slug}` → `{"files":[{"path","contents"}],"hash"}`,
//!   or 404 `{"error":"Skill not found"}`.
//! - `GET /.well-known/agent-skills/index.json` (RFC v0.2.0) →
//!   `{"$schema":…,"skills":[{"name","type","description","url","digest":"sha256:…"}]}`:
//!   a skill that is only `SKILL.md` is `type: "skill-md"` at `/.well-known/agent-skills/{slug}/SKILL.md`;
//!   one with more files is `type: "archive"`, an uncompressed zip at `/.well-known/agent-skills/{slug}.zip`.
//! - `GET /.well-known/skills/index.json` (v0.1, what the `skills` CLI reads) →
//!   `{"skills":[{"name","description","files":[…]}]}`, each file at
//!   `/.well-known/skills/{slug}/{path}` (also served under `/.well-known/agent-skills/{slug}/{path}`).
//!
//! The well-known routes publish every skill, whatever its owner, under its slug.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The `$schema` of an Agent Skills Discovery v0.2.0 index.
pub const DISCOVERY_SCHEMA_V2: &str = "https://schemas.agentskills.io/discovery/0.2.0/schema.json";

/// One skill the marketplace knows. `files` holds `SKILL.md` and any supporting files,
/// with paths relative to the skill directory.
#[derive(Clone, Debug)]
pub struct FakeSkill {
    pub owner: String,
    pub repo: String,
    pub slug: String,
    pub installs: u64,
    pub files: Vec<(String /*path*/, String /*contents*/)>,
}

impl FakeSkill {
    /// A skill made of a single `SKILL.md` with `name` (= `slug`) and `description` frontmatter.
    pub fn simple(owner: &str, repo: &str, slug: &str, description: &str, body: &str) -> Self {
        Self {
            owner: owner.into(),
            repo: repo.into(),
            slug: slug.into(),
            installs: 0,
            files: vec![(
                "SKILL.md".into(),
                format!("---\nname: {slug}\ndescription: {description}\n---\n\n{body}\n"),
            )],
        }
    }

    fn skill_md(&self) -> Option<&str> {
        self.files
            .iter()
            .find(|(p, _)| p.eq_ignore_ascii_case("SKILL.md"))
            .map(|(_, c)| c.as_str())
    }

    /// The frontmatter `name`, or the slug when there is none.
    fn name(&self) -> String {
        frontmatter(self.skill_md().unwrap_or_default(), "name")
            .unwrap_or_else(|| self.slug.clone())
    }

    fn description(&self) -> String {
        frontmatter(self.skill_md().unwrap_or_default(), "description").unwrap_or_default()
    }

    fn source(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }

    fn is_single_file(&self) -> bool {
        self.files.len() == 1 && self.skill_md().is_some()
    }
}

/// How the marketplace answers every request.
#[derive(Clone, Debug, Default)]
pub enum Behaviour {
    #[default]
    Normal,
    /// Answers `503 Service Unavailable`.
    Down,
    /// Sleeps this long, then answers normally.
    Slow(Duration),
    /// Answers `200` with a body that is not the documented JSON (nor the documented file).
    Malformed,
}

#[derive(Default)]
struct Market {
    skills: Vec<FakeSkill>,
    behaviour: Behaviour,
    downloads: usize,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Market>>;

pub struct FakeMarketplace {
    /// Base URL, e.g. `http://127.0.0.1:41234`, with no trailing slash.
    pub url: String,
    market: Shared,
    handle: tokio::task::JoinHandle<()>,
}

impl FakeMarketplace {
    /// Starts the marketplace on a random port, serving `skills`.
    pub async fn start(skills: Vec<FakeSkill>) -> Self {
        let market = Arc::new(Mutex::new(Market {
            skills,
            ..Market::default()
        }));
        let app = Router::new()
            .route("/api/search", get(search))
            .route("/api/download/{owner}/{repo}/{slug}", get(download))
            .route("/.well-known/agent-skills/index.json", get(index_v2))
            .route("/.well-known/agent-skills/{slug}", get(archive))
            .route("/.well-known/agent-skills/{slug}/{*path}", get(skill_file))
            .route("/.well-known/skills/index.json", get(index_v1))
            .route("/.well-known/skills/{slug}/{*path}", get(skill_file))
            .with_state(market.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake marketplace");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            market,
            handle,
        }
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        self.market.lock().expect("lock").behaviour = b;
    }

    /// Replaces every skill the marketplace serves (e.g. a new version of a skill's files).
    pub fn set_skills(&self, skills: Vec<FakeSkill>) {
        self.market.lock().expect("lock").skills = skills;
    }

    /// Download requests (`/api/download/…`) answered `200` so far.
    pub fn downloads(&self) -> usize {
        self.market.lock().expect("lock").downloads
    }

    /// Every request received so far, as path and query (`/api/search?q=pdf`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.market.lock().expect("lock").requests.clone()
    }
}

impl Drop for FakeMarketplace {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// `sha256:{hex}` of `bytes`, the digest format of a v0.2.0 index.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What a request gets before its route runs: `Some(answer)` short-circuits it.
/// Records the request; never holds the lock across the sleep.
async fn gate(market: &Shared, uri: &Uri) -> Option<Response> {
    let behaviour = {
        let mut m = market.lock().expect("lock");
        m.requests.push(
            uri.path_and_query()
                .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        );
        m.behaviour.clone()
    };
    match behaviour {
        Behaviour::Normal => None,
        Behaviour::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Behaviour::Down => Some(
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "Service Unavailable"})),
            )
                .into_response(),
        ),
        Behaviour::Malformed => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"skills\": [{\"id\": \"truncated",
            )
                .into_response(),
        ),
    }
}

async fn search(
    State(market): State<Shared>,
    uri: Uri,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&market, &uri).await {
        return r;
    }
    let q = params.get("q").cloned().unwrap_or_default();
    let needle = q.to_lowercase();
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10);
    let owner = params.get("owner").map(|o| o.to_lowercase());
    let mut found: Vec<FakeSkill> = {
        let m = market.lock().expect("lock");
        m.skills
            .iter()
            .filter(|s| owner.as_ref().is_none_or(|o| s.owner.to_lowercase() == *o))
            .filter(|s| {
                s.slug.to_lowercase().contains(&needle) || s.name().to_lowercase().contains(&needle)
            })
            .cloned()
            .collect()
    };
    found.sort_by(|a, b| b.installs.cmp(&a.installs).then(a.slug.cmp(&b.slug)));
    found.truncate(limit);
    let skills: Vec<Value> = found
        .iter()
        .map(|s| {
            json!({
                "id": format!("{}/{}", s.source(), s.slug),
                "skillId": s.slug,
                "name": s.name(),
                "installs": s.installs,
                "source": s.source(),
            })
        })
        .collect();
    Json(json!({
        "query": q,
        "searchType": "fuzzy",
        "count": skills.len(),
        "skills": skills,
        "duration_ms": 0,
    }))
    .into_response()
}

async fn download(
    State(market): State<Shared>,
    uri: Uri,
    Path((owner, repo, slug)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = gate(&market, &uri).await {
        return r;
    }
    let mut m = market.lock().expect("lock");
    let Some(skill) = m
        .skills
        .iter()
        .find(|s| {
            s.owner.eq_ignore_ascii_case(&owner)
                && s.repo.eq_ignore_ascii_case(&repo)
                && s.slug.eq_ignore_ascii_case(&slug)
        })
        .cloned()
    else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Skill not found"})),
        )
            .into_response();
    };
    m.downloads += 1;
    drop(m);
    let files: Vec<Value> = skill
        .files
        .iter()
        .map(|(path, contents)| json!({"path": path, "contents": contents}))
        .collect();
    Json(json!({"files": files, "hash": snapshot_hash(&skill.files)})).into_response()
}

/// The download's `hash`: SHA-256 (hex) over each file's path then contents, in path order,
/// as `computeSnapshotHash` in vercel-labs/skills `src/blob.ts` computes it.
pub fn snapshot_hash(files: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (path, contents) in sorted {
        h.update(path.as_bytes());
        h.update(contents.as_bytes());
    }
    hex::encode(h.finalize())
}

async fn index_v2(State(market): State<Shared>, uri: Uri) -> Response {
    if let Some(r) = gate(&market, &uri).await {
        return r;
    }
    let skills = market.lock().expect("lock").skills.clone();
    let entries: Vec<Value> = skills
        .iter()
        .map(|s| {
            if s.is_single_file() {
                json!({
                    "name": s.slug,
                    "type": "skill-md",
                    "description": s.description(),
                    "url": format!("/.well-known/agent-skills/{}/SKILL.md", s.slug),
                    "digest": digest(s.skill_md().unwrap_or_default().as_bytes()),
                })
            } else {
                json!({
                    "name": s.slug,
                    "type": "archive",
                    "description": s.description(),
                    "url": format!("/.well-known/agent-skills/{}.zip", s.slug),
                    "digest": digest(&zip(&s.files)),
                })
            }
        })
        .collect();
    Json(json!({"$schema": DISCOVERY_SCHEMA_V2, "skills": entries})).into_response()
}

async fn index_v1(State(market): State<Shared>, uri: Uri) -> Response {
    if let Some(r) = gate(&market, &uri).await {
        return r;
    }
    let skills = market.lock().expect("lock").skills.clone();
    let entries: Vec<Value> = skills
        .iter()
        .map(|s| {
            json!({
                "name": s.slug,
                "description": s.description(),
                "files": s.files.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"skills": entries})).into_response()
}

fn find_by_slug(market: &Shared, slug: &str) -> Option<FakeSkill> {
    market
        .lock()
        .expect("lock")
        .skills
        .iter()
        .find(|s| s.slug == slug)
        .cloned()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

async fn archive(State(market): State<Shared>, uri: Uri, Path(artifact): Path<String>) -> Response {
    if let Some(r) = gate(&market, &uri).await {
        return r;
    }
    let Some(skill) = artifact
        .strip_suffix(".zip")
        .and_then(|slug| find_by_slug(&market, slug))
    else {
        return not_found();
    };
    (
        [(header::CONTENT_TYPE, "application/zip")],
        zip(&skill.files),
    )
        .into_response()
}

async fn skill_file(
    State(market): State<Shared>,
    uri: Uri,
    Path((slug, path)): Path<(String, String)>,
) -> Response {
    if let Some(r) = gate(&market, &uri).await {
        return r;
    }
    let Some(contents) = find_by_slug(&market, &slug).and_then(|s| {
        s.files
            .into_iter()
            .find(|(p, _)| *p == path)
            .map(|(_, c)| c)
    }) else {
        return not_found();
    };
    let kind = if path.ends_with(".md") {
        "text/markdown; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    ([(header::CONTENT_TYPE, kind)], contents).into_response()
}

/// A frontmatter field of a SKILL.md (`key: value` between the leading `---` lines).
fn frontmatter(skill_md: &str, key: &str) -> Option<String> {
    let rest = skill_md.trim_start().strip_prefix("---")?;
    let block = &rest[..rest.find("\n---")?];
    block.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_owned())
    })
}

/// The skill directory as a zip archive: files at the root, stored (not compressed), dated
/// 1980-01-01 so the same files always give the same bytes (and digest).
pub fn zip(files: &[(String, String)]) -> Vec<u8> {
    fn u16le(out: &mut Vec<u8>, v: usize) {
        out.extend_from_slice(&u16::try_from(v).unwrap_or(u16::MAX).to_le_bytes());
    }
    fn u32le(out: &mut Vec<u8>, v: usize) {
        out.extend_from_slice(&u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes());
    }
    const DOS_DATE: usize = (1 << 5) | 1; // 1980-01-01
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (path, contents) in files {
        let (name, data) = (path.as_bytes(), contents.as_bytes());
        let crc = crc32(data) as usize;
        let offset = out.len();
        // Local file header.
        u32le(&mut out, 0x0403_4b50);
        u16le(&mut out, 20); // version needed
        u16le(&mut out, 0x0800); // flags: UTF-8 names
        u16le(&mut out, 0); // method: stored
        u16le(&mut out, 0); // time
        u16le(&mut out, DOS_DATE);
        u32le(&mut out, crc);
        u32le(&mut out, data.len());
        u32le(&mut out, data.len());
        u16le(&mut out, name.len());
        u16le(&mut out, 0); // extra
        out.extend_from_slice(name);
        out.extend_from_slice(data);
        // Central directory header.
        u32le(&mut central, 0x0201_4b50);
        u16le(&mut central, 0x0314); // made by: UNIX, 2.0
        u16le(&mut central, 20);
        u16le(&mut central, 0x0800);
        u16le(&mut central, 0);
        u16le(&mut central, 0);
        u16le(&mut central, DOS_DATE);
        u32le(&mut central, crc);
        u32le(&mut central, data.len());
        u32le(&mut central, data.len());
        u16le(&mut central, name.len());
        u16le(&mut central, 0); // extra
        u16le(&mut central, 0); // comment
        u16le(&mut central, 0); // disk
        u16le(&mut central, 0); // internal attributes
        u32le(&mut central, 0o100_644 << 16); // external attributes: regular file, rw-r--r--
        u32le(&mut central, offset);
        central.extend_from_slice(name);
    }
    let central_offset = out.len();
    let central_len = central.len();
    out.extend_from_slice(&central);
    // End of central directory.
    u32le(&mut out, 0x0605_4b50);
    u16le(&mut out, 0);
    u16le(&mut out, 0);
    u16le(&mut out, files.len());
    u16le(&mut out, files.len());
    u32le(&mut out, central_len);
    u32le(&mut out, central_offset);
    u16le(&mut out, 0);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[tokio::test]
    async fn serves_the_documented_shapes() {
        let mut multi =
            FakeSkill::simple("acme", "skills", "pdf-tools", "Work with PDFs", "Use it.");
        multi.installs = 7;
        multi
            .files
            .push(("scripts/run.sh".into(), "echo hi\n".into()));
        let single = FakeSkill::simple("other", "repo", "commit", "Write commits", "Do it.");
        let m = FakeMarketplace::start(vec![multi.clone(), single]).await;
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{}{path}", m.url)).send();

        let found: Value = get("/api/search?q=PDF&limit=5")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(found["count"], 1);
        assert_eq!(found["skills"][0]["id"], "acme/skills/pdf-tools");
        assert_eq!(found["skills"][0]["source"], "acme/skills");
        assert_eq!(found["skills"][0]["installs"], 7);
        let by_owner: Value = get("/api/search?q=&owner=OTHER")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(by_owner["skills"][0]["skillId"], "commit");

        let dl: Value = get("/api/download/Acme/skills/pdf-tools")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(dl["files"].as_array().unwrap().len(), 2);
        assert_eq!(dl["hash"], snapshot_hash(&multi.files));
        assert_eq!(m.downloads(), 1);
        let missing = get("/api/download/acme/skills/nope").await.unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(m.downloads(), 1);

        let index: Value = get("/.well-known/agent-skills/index.json")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(index["$schema"], DISCOVERY_SCHEMA_V2);
        for entry in index["skills"].as_array().unwrap() {
            let bytes = get(entry["url"].as_str().unwrap())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(entry["digest"].as_str().unwrap(), digest(&bytes), "{entry}");
        }
        assert_eq!(index["skills"][0]["type"], "archive");
        assert_eq!(index["skills"][0]["description"], "Work with PDFs");
        assert_eq!(index["skills"][1]["type"], "skill-md");
        let v1: Value = get("/.well-known/skills/index.json")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v1["skills"][0]["files"][1], "scripts/run.sh");
        let script = get("/.well-known/skills/pdf-tools/scripts/run.sh")
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(script, "echo hi\n");

        m.set_skills(vec![]);
        let empty: Value = get("/api/search?q=pdf")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(empty["count"], 0);
        m.set_behaviour(Behaviour::Down);
        assert_eq!(get("/api/search?q=pdf").await.unwrap().status(), 503);
        m.set_behaviour(Behaviour::Malformed);
        let bad = get("/api/search?q=pdf").await.unwrap();
        assert_eq!(bad.status(), 200);
        assert!(bad.json::<Value>().await.is_err());
        m.set_behaviour(Behaviour::Slow(Duration::from_millis(200)));
        let started = std::time::Instant::now();
        assert_eq!(get("/api/search?q=pdf").await.unwrap().status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(
            m.requests()
                .iter()
                .any(|r| r == "/api/search?q=PDF&limit=5")
        );
    }

    #[test]
    fn frontmatter_fields_are_read() {
        let md = "---\nname: pdf\ndescription: \"Read PDFs\"\n---\nbody";
        assert_eq!(frontmatter(md, "name").as_deref(), Some("pdf"));
        assert_eq!(frontmatter(md, "description").as_deref(), Some("Read PDFs"));
        assert_eq!(frontmatter("no frontmatter", "name"), None);
    }
}
