//! `skills`: one row per skill, its newest version for knowledge skills. A deleted
//! skill keeps its row, marked, as its versions may be what past runs used.

use flowforge_domain::skill::SkillEvent;
use flowforge_store::{LogFilter, StoredEvent};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ProjectionError;
use crate::document::{Document, DocumentProjection, SqlValue};

pub struct SkillsProjection;

#[derive(Debug, Clone, PartialEq)]
pub struct SkillRow {
    pub skill_id: String,
    pub tenant_id: String,
    pub name: String,
    pub kind: String,
    pub description: String,
    pub latest_version: Option<i64>,
    pub source_kind: Option<String>,
    pub source_location: Option<String>,
    pub sha256: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    pub last_position: i64,
}

impl Document for SkillRow {
    const COLUMNS: &'static [&'static str] = &[
        "skill_id",
        "tenant_id",
        "name",
        "kind",
        "description",
        "latest_version",
        "source_kind",
        "source_location",
        "sha256",
        "created_at",
        "updated_at",
        "deleted_at",
        "last_position",
    ];

    fn key(&self) -> &str {
        &self.skill_id
    }

    fn values(&self) -> Vec<SqlValue> {
        vec![
            self.skill_id.as_str().into(),
            self.tenant_id.as_str().into(),
            self.name.as_str().into(),
            self.kind.as_str().into(),
            self.description.as_str().into(),
            self.latest_version.into(),
            self.source_kind.clone().into(),
            self.source_location.clone().into(),
            self.sha256.clone().into(),
            self.created_at.into(),
            self.updated_at.into(),
            self.deleted_at.into(),
            self.last_position.into(),
        ]
    }

    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            skill_id: row.try_get("skill_id")?,
            tenant_id: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            kind: row.try_get("kind")?,
            description: row.try_get("description")?,
            latest_version: row.try_get("latest_version")?,
            source_kind: row.try_get("source_kind")?,
            source_location: row.try_get("source_location")?,
            sha256: row.try_get("sha256")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            deleted_at: row.try_get("deleted_at")?,
            last_position: row.try_get("last_position")?,
        })
    }
}

impl DocumentProjection for SkillsProjection {
    type Doc = SkillRow;
    const NAME: &'static str = "skills";
    const TABLE: &'static str = "skills";
    const SCHEMA: &'static str = include_str!("schema.sql");
    const SCHEMA_VERSION: u32 = 1;

    fn filter(&self) -> LogFilter {
        LogFilter::all().event_types(SkillEvent::TYPES.iter().copied())
    }

    fn key(&self, event: &StoredEvent) -> Option<String> {
        (event.stream_type == flowforge_domain::skill::STREAM_TYPE)
            .then(|| event.stream_id.trim_start_matches("skill-").to_owned())
    }

    fn evolve(
        &self,
        current: Option<SkillRow>,
        event: &StoredEvent,
    ) -> Result<Option<SkillRow>, ProjectionError> {
        let decoded: SkillEvent = event
            .decode()
            .map_err(|e| ProjectionError::event(event, e))?;
        let at = event.recorded_at.timestamp_millis();
        let fresh = |name: String, kind: &str, description: String| SkillRow {
            skill_id: event.stream_id.trim_start_matches("skill-").to_owned(),
            tenant_id: event.tenant_id().to_owned(),
            name,
            kind: kind.to_owned(),
            description,
            latest_version: None,
            source_kind: None,
            source_location: None,
            sha256: None,
            created_at: at,
            updated_at: at,
            deleted_at: None,
            last_position: 0,
        };
        // A deleted skill whose name is taken again starts a new row life.
        let current = current.filter(|row| row.deleted_at.is_none());
        let mut row = match decoded {
            SkillEvent::TemplateCreated {
                name, description, ..
            } => fresh(name, "template", description),
            SkillEvent::TemplateEdited { description, .. } => {
                let Some(mut row) = current else {
                    return Err(ProjectionError::event(event, "edit of an unknown skill"));
                };
                row.description = description;
                row
            }
            SkillEvent::VersionImported { version, .. } => {
                let mut row = current.unwrap_or_else(|| {
                    fresh(
                        version.manifest.name.clone(),
                        "knowledge",
                        version.manifest.description.clone(),
                    )
                });
                row.description = version.manifest.description;
                row.latest_version = Some(i64::from(version.version));
                row.source_kind = Some(version.source.kind);
                row.source_location = Some(version.source.location);
                row.sha256 = Some(version.sha256);
                row
            }
            SkillEvent::Deleted { .. } => {
                let Some(mut row) = current else {
                    return Ok(None);
                };
                row.deleted_at = Some(at);
                row
            }
        };
        row.updated_at = at;
        row.last_position = i64::try_from(event.global_position).unwrap_or(i64::MAX);
        Ok(Some(row))
    }
}
