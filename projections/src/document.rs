//! Document projections: one row per key, evolved in memory, written in bulk.
//!
//! Most read models are "the current state of X" rows. For those a projection only
//! says which row an event touches and how the row changes ([`DocumentProjection`]);
//! [`Documents`] turns a batch of events into one `SELECT … WHERE key IN (…)`, the
//! in-memory folds, and one multi-row upsert, instead of a statement per event.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use flowforge_store::{LogFilter, StoredEvent};
use sqlx::any::AnyRow;
use sqlx::{Any, Transaction};

use crate::{Projection, ProjectionError, Tables};

/// Values that bind the same way on PostgreSQL and SQLite. NULLs keep their type:
/// PostgreSQL refuses a NULL of the wrong type.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Int(Option<i64>),
    Real(Option<f64>),
    Text(Option<String>),
    Bool(Option<bool>),
}

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Int(Some(v))
    }
}

impl From<Option<i64>> for SqlValue {
    fn from(v: Option<i64>) -> Self {
        SqlValue::Int(v)
    }
}

impl From<f64> for SqlValue {
    fn from(v: f64) -> Self {
        SqlValue::Real(Some(v))
    }
}

impl From<String> for SqlValue {
    fn from(v: String) -> Self {
        SqlValue::Text(Some(v))
    }
}

impl From<Option<String>> for SqlValue {
    fn from(v: Option<String>) -> Self {
        SqlValue::Text(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(Some(v.to_owned()))
    }
}

impl From<bool> for SqlValue {
    fn from(v: bool) -> Self {
        SqlValue::Bool(Some(v))
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

/// A statement with `$n` placeholders, which both dialects accept. (sqlx's
/// `QueryBuilder<Any>` writes `?`, which PostgreSQL rejects.)
struct Statement {
    sql: String,
    values: Vec<SqlValue>,
}

impl Statement {
    fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder bound to `value`.
    fn bind(&mut self, value: SqlValue) -> &mut Self {
        self.values.push(value);
        self.sql.push('$');
        self.sql.push_str(&self.values.len().to_string());
        self
    }

    fn query(self) -> AnyQuery<'static> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.sql));
        for value in self.values {
            query = match value {
                SqlValue::Int(v) => query.bind(v),
                SqlValue::Real(v) => query.bind(v),
                SqlValue::Text(v) => query.bind(v),
                SqlValue::Bool(v) => query.bind(v),
            };
        }
        query
    }
}

/// A read-model row.
pub trait Document: Sized + Send + Sync + 'static {
    /// Column names; the first is the TEXT primary key.
    const COLUMNS: &'static [&'static str];
    fn key(&self) -> &str;
    /// Values in `COLUMNS` order.
    fn values(&self) -> Vec<SqlValue>;
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error>;
}

/// A projection of one row per key.
pub trait DocumentProjection: Send + Sync + 'static {
    type Doc: Document;
    /// Stable name (checkpoint row, metrics, spans).
    const NAME: &'static str;
    /// The logical table, also the view the API reads.
    const TABLE: &'static str;
    /// DDL for one generation with a `{TABLE}` placeholder.
    const SCHEMA: &'static str;
    const SCHEMA_VERSION: u32;

    fn filter(&self) -> LogFilter {
        LogFilter::all()
    }

    /// The row an event affects, if any.
    fn key(&self, event: &StoredEvent) -> Option<String>;

    /// The row after the event (`None` deletes it).
    fn evolve(
        &self,
        current: Option<Self::Doc>,
        event: &StoredEvent,
    ) -> Result<Option<Self::Doc>, ProjectionError>;
}

/// Adapts a [`DocumentProjection`] to [`Projection`].
pub struct Documents<P>(pub P);

/// Rows (or keys) per statement at most.
///
/// A statement's text depends on how many rows it carries, and a text the connection
/// has not seen must be parsed and planned again: with any count allowed, nearly every
/// batch paid that, and on SQLite binding also grows with the square of the
/// placeholders. So a batch is cut into pieces of power-of-two sizes up to this bound:
/// a few shapes per table, each prepared once and then taken from the statement cache.
const MAX_ROWS_PER_STATEMENT: usize = 32;

/// `items` cut into pieces of 32, 16, …, 1 (largest first), so that every piece has one
/// of a few sizes.
fn statement_sized<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = rest.len().min(MAX_ROWS_PER_STATEMENT);
        let size = 1 << size.ilog2();
        let (piece, after) = rest.split_at(size);
        rest = after;
        Some(piece)
    })
}

#[async_trait]
impl<P: DocumentProjection> Projection for Documents<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn schema_version(&self) -> u32 {
        P::SCHEMA_VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        std::slice::from_ref(&P::TABLE)
    }

    fn schema(&self) -> &'static str {
        P::SCHEMA
    }

    fn filter(&self) -> LogFilter {
        self.0.filter()
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'static, Any>,
        tables: &Tables,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        let table = tables.get(P::TABLE);
        let keyed: Vec<(String, &StoredEvent)> = events
            .iter()
            .filter_map(|e| self.0.key(e).map(|k| (k, e)))
            .collect();
        if keyed.is_empty() {
            return Ok(());
        }
        let mut order: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for (key, _) in &keyed {
            if seen.insert(key.as_str()) {
                order.push(key.clone());
            }
        }

        let mut docs: HashMap<String, Option<P::Doc>> = load(tx, table, &order).await?;
        for (key, event) in keyed {
            let current = docs.remove(&key).flatten();
            let next = self.0.evolve(current, event)?;
            docs.insert(key, next);
        }

        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for key in order {
            match docs.remove(&key).flatten() {
                Some(doc) => upserts.push(doc),
                None => deletes.push(key),
            }
        }
        upsert(tx, table, upserts).await?;
        delete::<P::Doc>(tx, table, &deletes).await?;
        Ok(())
    }
}

async fn load<D: Document>(
    tx: &mut Transaction<'static, Any>,
    table: &str,
    keys: &[String],
) -> Result<HashMap<String, Option<D>>, ProjectionError> {
    let mut found = HashMap::with_capacity(keys.len());
    let columns = D::COLUMNS.join(", ");
    for chunk in statement_sized(keys) {
        let mut statement = Statement::new(format!(
            "SELECT {columns} FROM {table} WHERE {} IN (",
            D::COLUMNS[0]
        ));
        in_list(&mut statement, chunk);
        for row in statement.query().fetch_all(&mut **tx).await? {
            let doc = D::from_row(&row)?;
            found.insert(doc.key().to_owned(), Some(doc));
        }
    }
    Ok(found)
}

async fn upsert<D: Document>(
    tx: &mut Transaction<'static, Any>,
    table: &str,
    docs: Vec<D>,
) -> Result<(), ProjectionError> {
    if docs.is_empty() {
        return Ok(());
    }
    let columns = D::COLUMNS.join(", ");
    let updates = D::COLUMNS[1..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    for piece in statement_sized(&docs) {
        let mut statement = Statement::new(format!("INSERT INTO {table} ({columns}) VALUES "));
        for (i, doc) in piece.iter().enumerate() {
            statement.push(if i == 0 { "(" } else { ", (" });
            for (j, value) in doc.values().into_iter().enumerate() {
                if j > 0 {
                    statement.push(", ");
                }
                statement.bind(value);
            }
            statement.push(")");
        }
        statement.push(&format!(
            " ON CONFLICT ({}) DO UPDATE SET {updates}",
            D::COLUMNS[0]
        ));
        statement.query().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn delete<D: Document>(
    tx: &mut Transaction<'static, Any>,
    table: &str,
    keys: &[String],
) -> Result<(), ProjectionError> {
    for chunk in statement_sized(keys) {
        let mut statement =
            Statement::new(format!("DELETE FROM {table} WHERE {} IN (", D::COLUMNS[0]));
        in_list(&mut statement, chunk);
        statement.query().execute(&mut **tx).await?;
    }
    Ok(())
}

fn in_list(statement: &mut Statement, keys: &[String]) {
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            statement.push(", ");
        }
        statement.bind(SqlValue::Text(Some(key.clone())));
    }
    statement.push(")");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_into_power_of_two_pieces_that_cover_it_in_order() {
        for n in 0..200usize {
            let items: Vec<usize> = (0..n).collect();
            let pieces: Vec<&[usize]> = statement_sized(&items).collect();
            assert_eq!(pieces.concat(), items, "n = {n}");
            for piece in &pieces {
                assert!(piece.len().is_power_of_two() && piece.len() <= MAX_ROWS_PER_STATEMENT);
            }
        }
        let items = vec![0; 77];
        let sizes: Vec<usize> = statement_sized(&items).map(<[usize]>::len).collect();
        assert_eq!(sizes, vec![32, 32, 8, 4, 1]);
    }
}
