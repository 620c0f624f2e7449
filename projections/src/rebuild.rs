//! Blue/green rebuilds.
//!
//! A rebuild creates the next generation's tables, fills them from position 0 while
//! the active generation keeps serving (and keeps being updated by its runner), and
//! then, in one transaction that holds the active checkpoint's lock, applies the last
//! few events, points the views at the new tables and drops the old ones. Readers see
//! either the old model or the new one, never a half-built one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowforge_store::{EventStore, LogPage};
use serde::Serialize;
use sqlx::{Any, Transaction};
use tokio::sync::mpsc;

use crate::checkpoint;
use crate::{Projection, ProjectionError, ReadDb, Tables};

/// Events per rebuild transaction.
const REBUILD_PAGE: usize = 5_000;

#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    pub projection: String,
    pub generation: u64,
    pub events: u64,
    pub position: u64,
    #[serde(with = "duration_ms")]
    pub elapsed: Duration,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

mod duration_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

pub(crate) async fn create_tables(
    tx: &mut Transaction<'static, Any>,
    projection: &dyn Projection,
    tables: &Tables,
) -> Result<(), ProjectionError> {
    // Leftovers of an abandoned build of the same generation number.
    drop_tables(tx, tables).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(tables.render(projection.schema())))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn drop_tables(
    tx: &mut Transaction<'static, Any>,
    tables: &Tables,
) -> Result<(), ProjectionError> {
    for (_, physical) in tables.iter() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {physical}"
        )))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Points each logical view at this generation's tables.
pub(crate) async fn point_views(
    tx: &mut Transaction<'static, Any>,
    tables: &Tables,
) -> Result<(), ProjectionError> {
    for (logical, physical) in tables.iter() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP VIEW IF EXISTS {logical}"
        )))
        .execute(&mut **tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE VIEW {logical} AS SELECT * FROM {physical}"
        )))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Rebuilds `projection` from position 0 into a new generation and swaps it in.
pub async fn rebuild(
    db: &ReadDb,
    store: &Arc<dyn EventStore>,
    projection: &Arc<dyn Projection>,
) -> Result<RebuildReport, ProjectionError> {
    // `instrument`, not `span.enter()`, which must not be held across an await.
    let span = tracing::info_span!("projection.rebuild", projection = projection.name());
    tracing::Instrument::instrument(rebuild_in_span(db, store, projection), span).await
}

async fn rebuild_in_span(
    db: &ReadDb,
    store: &Arc<dyn EventStore>,
    projection: &Arc<dyn Projection>,
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    let name = projection.name();

    // 1. A fresh generation, replacing any abandoned build.
    let mut tx = db.begin_write().await?;
    db.lock_projection(&mut tx, name).await?;
    for stale in checkpoint::all(db).await? {
        if stale.name == name && !stale.active {
            drop_tables(
                &mut tx,
                &Tables::for_generation(&**projection, stale.generation),
            )
            .await?;
            checkpoint::remove(&mut tx, name, stale.generation).await?;
        }
    }
    let generation = checkpoint::next_generation(&mut tx, name).await?;
    let tables = Tables::for_generation(&**projection, generation);
    create_tables(&mut tx, &**projection, &tables).await?;
    checkpoint::insert(
        &mut tx,
        name,
        generation,
        false,
        projection.schema_version(),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(generation, "rebuild started");

    match fill_and_swap(db, store, projection, &tables).await {
        Ok((events, position)) => {
            let report = RebuildReport {
                projection: name.to_owned(),
                generation,
                events,
                position,
                elapsed: started.elapsed(),
            };
            tracing::info!(
                generation,
                events,
                position,
                events_per_second = report.events_per_second(),
                "rebuild swapped in"
            );
            Ok(report)
        }
        Err(error) => {
            // Leave the active generation untouched; remove the half-built one.
            if let Ok(mut tx) = db.begin_write().await {
                let _ = drop_tables(&mut tx, &tables).await;
                let _ = checkpoint::remove(&mut tx, name, generation).await;
                let _ = tx.commit().await;
            }
            Err(error)
        }
    }
}

async fn fill_and_swap(
    db: &ReadDb,
    store: &Arc<dyn EventStore>,
    projection: &Arc<dyn Projection>,
    tables: &Tables,
) -> Result<(u64, u64), ProjectionError> {
    let name = projection.name();
    let generation = tables.generation();
    let filter = projection.filter();

    // 2. Fill: one task reads pages ahead while this one applies them.
    let (pages_tx, mut pages) = mpsc::channel::<Result<LogPage, ProjectionError>>(2);
    let reader = {
        let store = store.clone();
        let filter = filter.clone();
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let page = store.read_all(after, REBUILD_PAGE, &filter).await;
                let done = match &page {
                    Ok(page) => page.scanned_to <= after,
                    Err(_) => true,
                };
                if let Ok(page) = &page {
                    after = page.scanned_to;
                }
                if pages_tx
                    .send(page.map_err(ProjectionError::from))
                    .await
                    .is_err()
                    || done
                {
                    return;
                }
            }
        })
    };
    let mut position = 0;
    let mut applied = 0u64;
    while let Some(page) = pages.recv().await {
        let page = page?;
        if page.scanned_to <= position {
            break;
        }
        let mut tx = db.begin_write().await?;
        projection.apply(&mut tx, tables, &page.events).await?;
        checkpoint::advance(
            &mut tx,
            name,
            generation,
            page.scanned_to,
            page.events.len() as u64,
        )
        .await?;
        tx.commit().await?;
        applied += page.events.len() as u64;
        position = page.scanned_to;
    }
    reader.abort();

    // 3. Swap, holding the active checkpoint so its runner pauses for the moment.
    let mut tx = db.begin_write().await?;
    let active = checkpoint::lock_active(db, &mut tx, name).await?;
    loop {
        let page = store.read_all(position, REBUILD_PAGE, &filter).await?;
        if page.scanned_to <= position {
            break;
        }
        projection.apply(&mut tx, tables, &page.events).await?;
        checkpoint::advance(
            &mut tx,
            name,
            generation,
            page.scanned_to,
            page.events.len() as u64,
        )
        .await?;
        applied += page.events.len() as u64;
        position = page.scanned_to;
    }
    checkpoint::activate(&mut tx, name, generation).await?;
    point_views(&mut tx, tables).await?;
    if let Some(old) = active.filter(|a| a.generation != generation) {
        drop_tables(
            &mut tx,
            &Tables::for_generation(&**projection, old.generation),
        )
        .await?;
    }
    tx.commit().await?;
    Ok((applied, position))
}
