//! Running projections: from the checkpoint, batch by batch, checkpoint and rows in
//! one transaction.

use std::sync::Arc;
use std::time::Duration;

use flowforge_store::{EventStore, StoredEvent, subscribe};
use serde::Serialize;

use crate::checkpoint::{self, ProjectionCheckpoint};
use crate::{Projection, ProjectionError, ReadDb, Tables};

const DEFAULT_BATCH: usize = 500;
/// The most a projection waits to gather a larger batch (its added lag under light load).
const COALESCE: Duration = Duration::from_millis(10);

pub struct ProjectionRunner {
    db: ReadDb,
    store: Arc<dyn EventStore>,
    projection: Arc<dyn Projection>,
    batch_size: usize,
}

enum BatchOutcome {
    Committed,
    /// Someone else moved the active checkpoint (a rebuild swapped generations, or
    /// another process applied the batch first): continue from theirs.
    Moved(Option<ProjectionCheckpoint>),
}

impl ProjectionRunner {
    pub fn new(db: ReadDb, store: Arc<dyn EventStore>, projection: Arc<dyn Projection>) -> Self {
        Self {
            db,
            store,
            projection,
            batch_size: DEFAULT_BATCH,
        }
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Makes sure the projection has an active generation built with the current
    /// schema version: creates the first one, or rebuilds an outdated one (the old one
    /// keeps serving reads until the new one is swapped in).
    pub async fn initialise(&self) -> Result<ProjectionCheckpoint, ProjectionError> {
        loop {
            match checkpoint::active(&self.db, self.name()).await? {
                Some(active) if active.schema_version == self.projection.schema_version() => {
                    return Ok(active);
                }
                Some(active) => {
                    tracing::warn!(
                        projection = self.name(),
                        stored = active.schema_version,
                        current = self.projection.schema_version(),
                        "read model schema changed; rebuilding"
                    );
                    crate::rebuild::rebuild(&self.db, &self.store, &self.projection).await?;
                }
                None => self.create_first_generation().await?,
            }
        }
    }

    async fn create_first_generation(&self) -> Result<(), ProjectionError> {
        let mut tx = self.db.begin_write().await?;
        self.db.lock_projection(&mut tx, self.name()).await?;
        if checkpoint::lock_active(&self.db, &mut tx, self.name())
            .await?
            .is_some()
        {
            // Another process initialised it first.
            return Ok(());
        }
        let generation = checkpoint::next_generation(&mut tx, self.name()).await?;
        let tables = Tables::for_generation(&*self.projection, generation);
        crate::rebuild::create_tables(&mut tx, &*self.projection, &tables).await?;
        checkpoint::insert(
            &mut tx,
            self.name(),
            generation,
            true,
            self.projection.schema_version(),
        )
        .await?;
        crate::rebuild::point_views(&mut tx, &tables).await?;
        tx.commit().await?;
        tracing::info!(projection = self.name(), generation, "read model created");
        Ok(())
    }

    /// Applies everything up to the log's current head; returns the checkpoint reached.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        let mut active = self.initialise().await?;
        let filter = self.projection.filter();
        loop {
            let page = self
                .store
                .read_all(active.position, self.batch_size, &filter)
                .await?;
            if page.scanned_to <= active.position {
                return Ok(active.position);
            }
            match self
                .commit_batch(&active, &page.events, page.scanned_to)
                .await?
            {
                BatchOutcome::Committed => {
                    active.events_applied += page.events.len() as u64;
                    active.position = page.scanned_to;
                }
                BatchOutcome::Moved(Some(moved)) => active = moved,
                BatchOutcome::Moved(None) => active = self.initialise().await?,
            }
        }
    }

    /// Follows the log forever. Errors are logged and retried from the stored
    /// checkpoint: an event is never skipped to get past a failure.
    pub async fn run(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.follow().await {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(projection = self.name(), %error, "projection stopped; retrying from its checkpoint");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn follow(&self) -> Result<(), ProjectionError> {
        let mut active = self.initialise().await?;
        let filter = self.projection.filter();
        let mut subscription = subscribe(self.store.clone(), active.position, filter.clone())
            .with_page_size(self.batch_size);
        loop {
            let events = subscription.next_batch(self.batch_size).await?;
            let position = subscription.position();
            let span = tracing::debug_span!(
                "projection.batch",
                projection = self.name(),
                events = events.len(),
                position
            );
            let small = events.len() < self.batch_size / 4;
            let committed = tracing::Instrument::instrument(
                self.commit_batch(&active, &events, position),
                span,
            )
            .await?;
            match committed {
                BatchOutcome::Committed => {
                    active.events_applied += events.len() as u64;
                    active.position = position;
                    if small {
                        // Under light load, let a few more events arrive so that one
                        // transaction covers them instead of one per event.
                        tokio::time::sleep(COALESCE).await;
                    }
                }
                BatchOutcome::Moved(moved) => {
                    active = match moved {
                        Some(moved) => moved,
                        None => self.initialise().await?,
                    };
                    tracing::info!(
                        projection = self.name(),
                        generation = active.generation,
                        position = active.position,
                        "continuing from the stored checkpoint"
                    );
                    subscription = subscribe(self.store.clone(), active.position, filter.clone())
                        .with_page_size(self.batch_size);
                }
            }
        }
    }

    async fn commit_batch(
        &self,
        expected: &ProjectionCheckpoint,
        events: &[StoredEvent],
        position: u64,
    ) -> Result<BatchOutcome, ProjectionError> {
        let mut tx = self.db.begin_write().await?;
        let active = checkpoint::lock_active(&self.db, &mut tx, self.name()).await?;
        match &active {
            Some(a) if a.generation == expected.generation && a.position == expected.position => {}
            _ => {
                tx.rollback().await?;
                return Ok(BatchOutcome::Moved(active));
            }
        }
        let tables = Tables::for_generation(&*self.projection, expected.generation);
        if !events.is_empty() {
            self.projection.apply(&mut tx, &tables, events).await?;
        }
        checkpoint::advance(
            &mut tx,
            self.name(),
            expected.generation,
            position,
            events.len() as u64,
        )
        .await?;
        tx.commit().await?;
        Ok(BatchOutcome::Committed)
    }
}

/// What `flowforge projections status` shows for one projection.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    pub generation: Option<u64>,
    pub schema_version: Option<u32>,
    pub checkpoint: Option<u64>,
    pub head: u64,
    /// Log positions between the checkpoint and the head (an upper bound on the events
    /// still to apply: aborted appends leave holes in the positions).
    pub lag: u64,
    pub events_applied: u64,
    pub updated_at_ms: Option<i64>,
    /// A rebuild in progress: (generation, checkpoint).
    pub rebuilding: Option<(u64, u64)>,
}

pub async fn status(
    db: &ReadDb,
    store: &dyn EventStore,
    projections: &[Arc<dyn Projection>],
) -> Result<Vec<ProjectionStatus>, ProjectionError> {
    let head = store.head_position().await?;
    let rows = checkpoint::all(db).await?;
    Ok(projections
        .iter()
        .map(|p| {
            let active = rows.iter().find(|r| r.name == p.name() && r.active);
            let building = rows.iter().find(|r| r.name == p.name() && !r.active);
            ProjectionStatus {
                name: p.name().to_owned(),
                generation: active.map(|a| a.generation),
                schema_version: active.map(|a| a.schema_version),
                checkpoint: active.map(|a| a.position),
                head,
                lag: head.saturating_sub(active.map_or(0, |a| a.position)),
                events_applied: active.map_or(0, |a| a.events_applied),
                updated_at_ms: active.map(|a| a.updated_at_ms),
                rebuilding: building.map(|b| (b.generation, b.position)),
            }
        })
        .collect())
}
