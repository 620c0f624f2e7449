//! Loading the knowledge of enabled skills for a model, at run time. Skills are never
//! baked into a stored prompt: each call reads the skills' newest versions from the
//! log, so a refreshed skill is used from the next call on, and says which versions it
//! used so a run can record them.

use std::collections::BTreeSet;

use flowforge_domain::skill::{self, SkillDecider, skill_knowledge};
use serde::Serialize;

use crate::EngineContext;

/// One skill version given to a model.
pub type SkillUse = flowforge_domain::skill::SkillVersionUsed;

/// The assembled `<skill-knowledge>` blocks and the versions they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SkillKnowledge {
    pub text: String,
    pub used: Vec<SkillUse>,
    /// Enabled skills that are gone (deleted) or carry no knowledge (templates).
    pub skipped: Vec<String>,
}

/// The knowledge of the skills `names` of `tenant`, in name order.
pub async fn knowledge(
    context: &EngineContext,
    tenant: &str,
    names: &BTreeSet<String>,
) -> Result<SkillKnowledge, String> {
    let mut used = Vec::new();
    let mut bodies = Vec::new();
    let mut skipped = Vec::new();
    for name in names {
        let stream = skill::stream_id(skill::skill_id(tenant, name));
        let loaded = context
            .commands
            .load::<SkillDecider>(&stream)
            .await
            .map_err(|e| format!("skill {name}: {e}"))?;
        match loaded
            .state
            .filter(|s| !s.deleted)
            .as_ref()
            .and_then(|s| s.latest())
        {
            Some(version) => {
                used.push(SkillUse {
                    name: name.clone(),
                    version: version.version,
                    sha256: version.sha256.clone(),
                });
                bodies.push((name.clone(), version.manifest.body.clone()));
            }
            None => skipped.push(name.clone()),
        }
    }
    Ok(SkillKnowledge {
        text: skill_knowledge(bodies.iter().map(|(n, b)| (n.as_str(), b.as_str()))),
        used,
        skipped,
    })
}
