//! Fetching skills from where they are published: a skills.sh-compatible marketplace
//! (`GET /api/search`, `GET /api/download/{owner}/{repo}/{slug}`, as the `skills` CLI
//! uses them) and a site's Agent Skills discovery index
//! (`/.well-known/agent-skills/index.json`). Everything fetched is untrusted: bodies
//! are capped, shapes are checked, and a folder is only returned whole.

use std::time::Duration;

use flowforge_domain::skill::{MAX_FILES, MAX_TOTAL_BYTES, SKILL_FILE, SkillFile};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::SkillSources;

/// Largest response read from a source: a folder's JSON with escaping room.
const MAX_RESPONSE_BYTES: usize = 2 * MAX_TOTAL_BYTES + 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("{0} is unreachable: {1}")]
    Unreachable(String, String),
    #[error("{0} answered {1}")]
    Status(String, u16),
    #[error("{0} has no skill `{1}`")]
    NotFound(String, String),
    #[error("{0} answered something that is not its documented format: {1}")]
    Malformed(String, String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A skill as a marketplace search lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListedSkill {
    /// `owner/repo/slug`: what `preview` and `import` take.
    pub id: String,
    pub name: String,
    /// `owner/repo`
    pub source: String,
    #[serde(default)]
    pub installs: u64,
}

/// Where a skill is, parsed from what a user gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `owner/repo/slug` on the marketplace.
    Marketplace {
        owner: String,
        repo: String,
        slug: String,
    },
    /// A skill named `name` in the discovery index of `site`.
    WellKnown { site: String, name: String },
}

impl Location {
    /// `owner/repo/slug`, or `https://site.example#name` for a site's index.
    pub fn parse(source: &str) -> Result<Self, SourceError> {
        let bad = |reason: &str| SourceError::Invalid {
            field: "source",
            reason: reason.to_owned(),
        };
        if source.starts_with("http://") || source.starts_with("https://") {
            let (site, name) = source
                .split_once('#')
                .ok_or_else(|| bad("a site's skill is `https://site#skill-name`"))?;
            flowforge_domain::skill::validate_name("source", name)
                .map_err(|e| bad(&e.to_string()))?;
            return Ok(Location::WellKnown {
                site: site.trim_end_matches('/').to_owned(),
                name: name.to_owned(),
            });
        }
        let parts: Vec<&str> = source.split('/').collect();
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && s != "."
                && s != ".."
        };
        match parts.as_slice() {
            [owner, repo, slug] if parts.iter().all(|p| segment_ok(p)) => {
                Ok(Location::Marketplace {
                    owner: owner.to_string(),
                    repo: repo.to_string(),
                    slug: slug.to_string(),
                })
            }
            _ => Err(bad(
                "`owner/repo/slug` from the marketplace, or `https://site#skill-name`",
            )),
        }
    }

    /// How the location is recorded as a version's source.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Location::Marketplace { owner, repo, slug } => {
                ("marketplace", format!("{owner}/{repo}/{slug}"))
            }
            Location::WellKnown { site, name } => ("well_known", format!("{site}#{name}")),
        }
    }
}

/// Fetches skills from the marketplace and from sites. Built once per process (its
/// HTTP client keeps a connection pool); cloning shares it.
#[derive(Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    marketplace: String,
}

impl Fetcher {
    pub fn new(config: &SkillSources) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Self {
            http,
            marketplace: config.marketplace_url.trim_end_matches('/').to_owned(),
        }
    }

    async fn get_bytes(&self, url: &str, who: &str) -> Result<Vec<u8>, SourceError> {
        let mut response = self.http.get(url).send().await.map_err(|e| {
            if e.is_timeout() {
                SourceError::Timeout(who.to_owned())
            } else {
                SourceError::Unreachable(who.to_owned(), e.without_url().to_string())
            }
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(SourceError::Status(who.to_owned(), 404));
        }
        if !status.is_success() {
            return Err(SourceError::Status(who.to_owned(), status.as_u16()));
        }
        let mut body = Vec::new();
        loop {
            let chunk = response.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    SourceError::Timeout(who.to_owned())
                } else {
                    SourceError::Unreachable(who.to_owned(), e.without_url().to_string())
                }
            })?;
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(SourceError::Malformed(
                    who.to_owned(),
                    format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        who: &str,
    ) -> Result<T, SourceError> {
        let body = self.get_bytes(url, who).await?;
        serde_json::from_slice(&body)
            .map_err(|e| SourceError::Malformed(who.to_owned(), e.to_string()))
    }

    /// `GET {marketplace}/api/search?q=&limit=&owner=`
    pub async fn search(
        &self,
        query: &str,
        limit: u32,
        owner: Option<&str>,
    ) -> Result<Vec<ListedSkill>, SourceError> {
        #[derive(Deserialize)]
        struct Found {
            skills: Vec<ListedSkill>,
        }
        let mut url =
            reqwest::Url::parse(&format!("{}/api/search", self.marketplace)).map_err(|e| {
                SourceError::Unreachable("the skills marketplace".into(), e.to_string())
            })?;
        url.query_pairs_mut()
            .append_pair("q", query)
            .append_pair("limit", &limit.to_string());
        if let Some(owner) = owner {
            url.query_pairs_mut().append_pair("owner", owner);
        }
        let found: Found = self
            .get_json(url.as_str(), "the skills marketplace")
            .await?;
        Ok(found.skills)
    }

    /// A skill folder, whole, from wherever it is.
    pub async fn folder(&self, location: &Location) -> Result<Vec<SkillFile>, SourceError> {
        let files = match location {
            Location::Marketplace { owner, repo, slug } => self.download(owner, repo, slug).await?,
            Location::WellKnown { site, name } => self.well_known(site, name).await?,
        };
        if files.len() > MAX_FILES {
            return Err(SourceError::Malformed(
                "the source".into(),
                format!("more than {MAX_FILES} files"),
            ));
        }
        Ok(files)
    }

    async fn download(
        &self,
        owner: &str,
        repo: &str,
        slug: &str,
    ) -> Result<Vec<SkillFile>, SourceError> {
        #[derive(Deserialize)]
        struct Download {
            files: Vec<SkillFile>,
        }
        let who = "the skills marketplace";
        let url = format!("{}/api/download/{owner}/{repo}/{slug}", self.marketplace);
        match self.get_json::<Download>(&url, who).await {
            Ok(download) => Ok(download.files),
            Err(SourceError::Status(_, 404)) => Err(SourceError::NotFound(
                who.into(),
                format!("{owner}/{repo}/{slug}"),
            )),
            Err(other) => Err(other),
        }
    }

    /// The Agent Skills discovery index (v0.2: `skill-md` entries with a digest; v0.1:
    /// a `files` list fetched beside it).
    async fn well_known(&self, site: &str, name: &str) -> Result<Vec<SkillFile>, SourceError> {
        let who = site.to_owned();
        let index_url = format!("{site}/.well-known/agent-skills/index.json");
        let index: Value = match self.get_json(&index_url, &who).await {
            Err(SourceError::Status(_, 404)) => {
                return Err(SourceError::NotFound(who, name.to_owned()));
            }
            other => other?,
        };
        let entry = index
            .get("skills")
            .and_then(Value::as_array)
            .ok_or_else(|| SourceError::Malformed(who.clone(), "no `skills` list".into()))?
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| SourceError::NotFound(who.clone(), name.to_owned()))?;
        if let Some(files) = entry.get("files").and_then(Value::as_array) {
            let mut folder = Vec::new();
            for file in files {
                let path = file.as_str().ok_or_else(|| {
                    SourceError::Malformed(who.clone(), "a `files` entry is not a path".into())
                })?;
                let url = format!("{site}/.well-known/agent-skills/{name}/{path}");
                let bytes = self.get_bytes(&url, &who).await?;
                folder.push(SkillFile {
                    path: path.to_owned(),
                    contents: text(&who, bytes)?,
                });
            }
            return Ok(folder);
        }
        match entry.get("type").and_then(Value::as_str) {
            Some("skill-md") => {
                let url = entry
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| SourceError::Malformed(who.clone(), "no `url`".into()))?;
                let url = resolve(site, url);
                let bytes = self.get_bytes(&url, &who).await?;
                if let Some(digest) = entry.get("digest").and_then(Value::as_str) {
                    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
                    if !digest.eq_ignore_ascii_case(&actual) {
                        return Err(SourceError::Malformed(
                            who,
                            format!("SKILL.md does not match its digest {digest}"),
                        ));
                    }
                }
                Ok(vec![SkillFile {
                    path: SKILL_FILE.into(),
                    contents: text(&who, bytes)?,
                }])
            }
            Some("archive") => Err(SourceError::Malformed(
                who,
                "archive skills cannot be imported from a site yet; upload the folder".into(),
            )),
            other => Err(SourceError::Malformed(
                who,
                format!("unknown skill entry type {other:?}"),
            )),
        }
    }
}

fn resolve(site: &str, url: &str) -> String {
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else {
        format!("{site}/{}", url.trim_start_matches('/'))
    }
}

fn text(who: &str, bytes: Vec<u8>) -> Result<String, SourceError> {
    String::from_utf8(bytes)
        .map_err(|_| SourceError::Malformed(who.to_owned(), "a file is not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_marketplace_ids_or_site_skills() {
        assert_eq!(
            Location::parse("acme/skills/pdf-tools").ok(),
            Some(Location::Marketplace {
                owner: "acme".into(),
                repo: "skills".into(),
                slug: "pdf-tools".into()
            })
        );
        assert_eq!(
            Location::parse("https://docs.acme.dev/#pdf-tools").ok(),
            Some(Location::WellKnown {
                site: "https://docs.acme.dev".into(),
                name: "pdf-tools".into()
            })
        );
        for bad in [
            "acme/skills",
            "acme/../x",
            "a/b/c/d",
            "https://site",
            "https://s#Bad",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
