//! Secrets kept beside the log (see `migrations/*/log/0002_secrets.sql`), and when each
//! API key was last used (`0003_credential_usage.sql`).

use async_trait::async_trait;

use crate::StoreError;

#[async_trait]
pub trait SecretStore: Send + Sync + 'static {
    /// Stores (or replaces) a secret.
    async fn put_secret(&self, tenant: &str, name: &str, value: &str) -> Result<(), StoreError>;
    async fn secret(&self, tenant: &str, name: &str) -> Result<Option<String>, StoreError>;
    /// The secret with this name whichever tenant holds it, with that tenant: for names
    /// that are digests of a credential presented without a tenant. `None` when no
    /// tenant, or (never expected of a digest) more than one, holds it.
    async fn find_secret(&self, name: &str) -> Result<Option<(String, String)>, StoreError>;
    /// Records that a credential (an API key id) was used at `at_ms`; never moves the
    /// time backwards.
    async fn touch_credential(
        &self,
        tenant: &str,
        credential: &str,
        at_ms: i64,
    ) -> Result<(), StoreError>;
    /// When a credential was last used, in milliseconds since the Unix epoch.
    async fn credential_last_used(
        &self,
        tenant: &str,
        credential: &str,
    ) -> Result<Option<i64>, StoreError>;
}

const LAST_USED: &str =
    "SELECT last_used_at FROM credential_usage WHERE tenant_id = $1 AND credential = $2";

const PUT: &str = "INSERT INTO secrets (tenant_id, name, value, created_at) VALUES ($1, $2, $3, $4) \
                   ON CONFLICT (tenant_id, name) DO UPDATE SET value = excluded.value, created_at = excluded.created_at";
const GET: &str = "SELECT value FROM secrets WHERE tenant_id = $1 AND name = $2";
const FIND: &str = "SELECT tenant_id, value FROM secrets WHERE name = $1 LIMIT 2";

fn only_one(mut rows: Vec<(String, String)>) -> Option<(String, String)> {
    (rows.len() == 1).then(|| rows.remove(0))
}

/// One implementation for both SQL backends: they share the schema and the SQL, and
/// differ in the pool they use and the name of the larger-of-two function.
macro_rules! sql_secret_store {
    ($store:ty, $pool:ident, $greatest:literal) => {
        #[async_trait]
        impl SecretStore for $store {
            async fn put_secret(
                &self,
                tenant: &str,
                name: &str,
                value: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(PUT)
                    .bind(tenant)
                    .bind(name)
                    .bind(value)
                    .bind(chrono::Utc::now().timestamp_millis())
                    .execute(self.$pool())
                    .await?;
                Ok(())
            }

            async fn secret(&self, tenant: &str, name: &str) -> Result<Option<String>, StoreError> {
                Ok(sqlx::query_scalar(GET)
                    .bind(tenant)
                    .bind(name)
                    .fetch_optional(self.$pool())
                    .await?)
            }

            async fn find_secret(
                &self,
                name: &str,
            ) -> Result<Option<(String, String)>, StoreError> {
                Ok(only_one(
                    sqlx::query_as(FIND)
                        .bind(name)
                        .fetch_all(self.$pool())
                        .await?,
                ))
            }

            async fn touch_credential(
                &self,
                tenant: &str,
                credential: &str,
                at_ms: i64,
            ) -> Result<(), StoreError> {
                sqlx::query(concat!(
                    "INSERT INTO credential_usage (tenant_id, credential, last_used_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (tenant_id, credential) DO UPDATE SET last_used_at = ",
                    $greatest,
                    "(credential_usage.last_used_at, excluded.last_used_at)"
                ))
                .bind(tenant)
                .bind(credential)
                .bind(at_ms)
                .execute(self.$pool())
                .await?;
                Ok(())
            }

            async fn credential_last_used(
                &self,
                tenant: &str,
                credential: &str,
            ) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::query_scalar(LAST_USED)
                    .bind(tenant)
                    .bind(credential)
                    .fetch_optional(self.$pool())
                    .await?)
            }
        }
    };
}

// Credentials' last use never moves backwards: the larger of the stored and new time.
sql_secret_store!(crate::postgres::PostgresEventStore, pool, "GREATEST");
sql_secret_store!(crate::sqlite::SqliteEventStore, read_pool, "max");
