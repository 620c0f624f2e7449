//! Projection checkpoints: where each generation of each projection has read up to.
//! All SQL touching `projection_checkpoints` lives here.

use sqlx::{Any, Row, Transaction};

use crate::{ProjectionError, ReadDb, now_ms};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionCheckpoint {
    pub name: String,
    pub generation: u64,
    pub active: bool,
    pub position: u64,
    pub schema_version: u32,
    pub events_applied: u64,
    pub updated_at_ms: i64,
}

const COLUMNS: &str =
    "name, generation, state, position, schema_version, events_applied, updated_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<ProjectionCheckpoint, sqlx::Error> {
    Ok(ProjectionCheckpoint {
        name: row.try_get("name")?,
        generation: to_u64(row.try_get::<i64, _>("generation")?),
        active: row.try_get::<String, _>("state")? == "active",
        position: to_u64(row.try_get::<i64, _>("position")?),
        schema_version: u32::try_from(row.try_get::<i64, _>("schema_version")?).unwrap_or(0),
        events_applied: to_u64(row.try_get::<i64, _>("events_applied")?),
        updated_at_ms: row.try_get("updated_at")?,
    })
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Every checkpoint row, active and building.
pub async fn all(db: &ReadDb) -> Result<Vec<ProjectionCheckpoint>, ProjectionError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM projection_checkpoints ORDER BY name, generation"
    )))
    .fetch_all(db.pool())
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

pub async fn active(
    db: &ReadDb,
    name: &str,
) -> Result<Option<ProjectionCheckpoint>, ProjectionError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM projection_checkpoints WHERE name = $1 AND state = 'active'"
    )))
    .bind(name)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// The active checkpoint, locked for the rest of the transaction (PostgreSQL) so that
/// two writers of one projection serialise and the loser sees the winner's position.
pub async fn lock_active(
    db: &ReadDb,
    tx: &mut Transaction<'static, Any>,
    name: &str,
) -> Result<Option<ProjectionCheckpoint>, ProjectionError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM projection_checkpoints WHERE name = $1 AND state = 'active'{}",
        db.for_update()
    )))
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

pub async fn get(
    tx: &mut Transaction<'static, Any>,
    name: &str,
    generation: u64,
) -> Result<Option<ProjectionCheckpoint>, ProjectionError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM projection_checkpoints WHERE name = $1 AND generation = $2"
    )))
    .bind(name)
    .bind(to_i64(generation))
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

pub async fn next_generation(
    tx: &mut Transaction<'static, Any>,
    name: &str,
) -> Result<u64, ProjectionError> {
    let max: Option<i64> =
        sqlx::query_scalar("SELECT max(generation) FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
    Ok(max.map_or(1, |g| to_u64(g) + 1))
}

pub async fn insert(
    tx: &mut Transaction<'static, Any>,
    name: &str,
    generation: u64,
    active: bool,
    schema_version: u32,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "INSERT INTO projection_checkpoints \
         (name, generation, state, position, schema_version, events_applied, updated_at) \
         VALUES ($1, $2, $3, 0, $4, 0, $5)",
    )
    .bind(name)
    .bind(to_i64(generation))
    .bind(if active { "active" } else { "building" })
    .bind(i64::from(schema_version))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn advance(
    tx: &mut Transaction<'static, Any>,
    name: &str,
    generation: u64,
    position: u64,
    applied: u64,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE projection_checkpoints \
         SET position = $3, events_applied = events_applied + $4, updated_at = $5 \
         WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(to_i64(generation))
    .bind(to_i64(position))
    .bind(to_i64(applied))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Makes `generation` the active one and forgets every other generation of `name`.
pub async fn activate(
    tx: &mut Transaction<'static, Any>,
    name: &str,
    generation: u64,
) -> Result<(), ProjectionError> {
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1 AND generation <> $2")
        .bind(name)
        .bind(to_i64(generation))
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE projection_checkpoints SET state = 'active', updated_at = $3 \
         WHERE name = $1 AND generation = $2",
    )
    .bind(name)
    .bind(to_i64(generation))
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes an abandoned building generation's row (its tables are dropped by the caller).
pub async fn remove(
    tx: &mut Transaction<'static, Any>,
    name: &str,
    generation: u64,
) -> Result<(), ProjectionError> {
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1 AND generation = $2")
        .bind(name)
        .bind(to_i64(generation))
        .execute(&mut **tx)
        .await?;
    Ok(())
}
