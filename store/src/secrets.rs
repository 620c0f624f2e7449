//! Secrets kept beside the log (see `migrations/*/log/0002_secrets.sql`).

use async_trait::async_trait;

use crate::StoreError;

#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Stores (or replaces) a secret.
    async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> Result<(), StoreError>;
    async fn secret(&self, tenant: &str, name: &str) -> Result<Option<String>, StoreError>;
}

const PUT: &str = "INSERT INTO secrets (tenant_id, name, value, created_at) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (tenant_id, name) DO UPDATE SET value = excluded.value, created_at = excluded.created_at";
const GET: &str = "SELECT value FROM secrets WHERE tenant_id = $1 AND name = $2";

#[async_trait]
impl SecretStore for crate::postgres::PostgresEventStore {
    async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(PUT)
            .bind(tenant)
            .bind(name)
            .bind(value)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn secret(&self, tenant: &str, name: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(GET)
            .bind(tenant)
            .bind(name)
            .fetch_optional(self.pool())
            .await?)
    }
}

#[async_trait]
impl SecretStore for crate::sqlite::SqliteEventStore {
    async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> Result<(), StoreError> {
        sqlx::query(PUT)
            .bind(tenant)
            .bind(name)
            .bind(value)
            .bind(chrono::Utc::now().timestamp_millis())
            .execute(self.read_pool())
            .await?;
        Ok(())
    }

    async fn secret(&self, tenant: &str, name: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(GET)
            .bind(tenant)
            .bind(name)
            .fetch_optional(self.read_pool())
            .await?)
    }
}
