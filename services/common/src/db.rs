//! PostgreSQL access: a bb8 pool of diesel-async connections, creation of a
//! missing database, and embedded migrations applied at start-up.
//!
//! Each service owns one PostgreSQL schema (`order_service`, ...) and sets its
//! `search_path` on every connection. The services can therefore share one
//! database, as they do by default, without their tables or their migration
//! bookkeeping colliding, or each use a database of its own.

use std::time::Duration;

use diesel::ConnectionError;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, PoolError};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::{DatabaseConfig, DatabaseUrl};

pub type DbPool = bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>;

/// The tables every service has: consumer offsets and the outbox.
pub const PLATFORM_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/platform");

/// How long a transaction may sit idle before the server ends it. Our
/// transactions only wait on the database itself, never on a call
/// elsewhere, so this is reached only by a process that stopped mid-way.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a caller waits for a pooled connection before giving up.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The same for gRPC reads and watches: well under the gateway's 5 s per
/// call, so a busy pool answers RESOURCE_EXHAUSTED before the gateway gives
/// up and takes the instance for gone.
const READ_CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection available: {0}")]
    Pool(#[from] bb8::RunError<PoolError>),
    #[error("could not connect to the database: {0}")]
    Connect(#[from] ConnectionError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
}

/// Builds the service's pool. Connections are opened lazily, so this succeeds
/// while the database is down; `prepare` is what waits for it.
///
/// Every connection says which instance it belongs to (`oms.instance_id`):
/// outbox rows and pending payments default to it, so each instance
/// publishes and settles what it wrote (see `membership`).
pub fn pool(config: &DatabaseConfig, schema: &'static str, instance_id: &str) -> DbPool {
    let size = config.pool_size;
    build_pool(
        size,
        CONNECTION_TIMEOUT,
        config,
        schema,
        schema,
        instance_id,
    )
}

/// A pool of its own for gRPC reads, `DATABASE_READ_POOL_SIZE`
/// connections, so that a flood of reads waits for these and never takes
/// the connections the consumers, the relay and the settlement need (and
/// the other way round). Its connections are named `<schema> reads` in
/// `pg_stat_activity`.
pub fn read_pool(config: &DatabaseConfig, schema: &'static str, instance_id: &str) -> DbPool {
    let name = format!("{schema} reads");
    named_pool(config.read_pool_size, config, schema, &name, instance_id)
}

/// A pool of `size` connections named `application_name`, for a service's
/// own use beside the two above.
pub fn named_pool(
    size: u32,
    config: &DatabaseConfig,
    schema: &'static str,
    application_name: &str,
    instance_id: &str,
) -> DbPool {
    let timeout = READ_CONNECTION_TIMEOUT;
    build_pool(size, timeout, config, schema, application_name, instance_id)
}

fn build_pool(
    size: u32,
    checkout_timeout: Duration,
    config: &DatabaseConfig,
    schema: &str,
    application_name: &str,
    instance_id: &str,
) -> DbPool {
    // A transaction left idle (its process paused or frozen mid-way) is
    // ended by the server, so the lease rows it locked can be taken over.
    let setup = format!(
        "SET search_path TO {schema}; SET oms.instance_id TO '{}'; \
         SET application_name TO '{application_name}'; \
         SET idle_in_transaction_session_timeout TO '{}ms'",
        instance_id.replace('\'', "''"),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    );
    let mut manager_config = ManagerConfig::default();
    manager_config.custom_setup =
        Box::new(move |url| Box::pin(connect_with(url.to_owned(), setup.clone())));
    let manager =
        AsyncDieselConnectionManager::new_with_config(config.url.expose(), manager_config);
    bb8::Pool::builder()
        .max_size(size)
        .connection_timeout(checkout_timeout)
        .build_unchecked(manager)
}

async fn connect_with(url: String, setup: String) -> Result<AsyncPgConnection, ConnectionError> {
    let mut conn = AsyncPgConnection::establish(&url).await?;
    conn.batch_execute(&setup)
        .await
        .map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// Creates the database if it is missing and the server allows it, then
/// creates the service's schema and applies the platform migrations followed
/// by the service's own.
///
/// Instances that start together take turns: each holds a session advisory
/// lock named after the schema while it migrates, so the first applies the
/// migrations and the others find nothing pending. (A session lock needs a
/// real session: behind PgBouncer in transaction mode, point
/// `DATABASE_URL` at PostgreSQL itself.)
pub async fn prepare(
    url: &DatabaseUrl,
    schema: &'static str,
    service_migrations: EmbeddedMigrations,
) -> Result<(), DbError> {
    create_database_if_missing(url).await?;
    let mut conn = AsyncPgConnection::establish(url.expose()).await?;
    conn.batch_execute(&format!(
        "SELECT pg_advisory_lock(hashtext('oms-migrations:{schema}')); \
         CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
    ))
    .await?;
    let mut wrapper: AsyncConnectionWrapper<AsyncPgConnection> = AsyncConnectionWrapper::from(conn);
    // The harness is synchronous: it blocks on the async connection, so it
    // must run off the async worker threads. The lock goes with the
    // connection when it closes, also when a migration fails.
    tokio::task::spawn_blocking(move || {
        for migrations in [PLATFORM_MIGRATIONS, service_migrations] {
            wrapper
                .run_pending_migrations(migrations)
                .map_err(|err| DbError::Migration(err.to_string()))?;
        }
        Ok(())
    })
    .await
    .map_err(|err| DbError::Migration(err.to_string()))?
}

async fn create_database_if_missing(url: &DatabaseUrl) -> Result<(), DbError> {
    match AsyncPgConnection::establish(url.expose()).await {
        Ok(_) => return Ok(()),
        // SQLSTATE 3D000 (invalid_catalog_name); diesel-async passes on only
        // the server's message, in more than one error variant.
        Err(err) if err.to_string().contains("does not exist") => {}
        Err(err) => return Err(err.into()),
    }
    let name = url.database_name();
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(DbError::Migration(format!(
            "database {name:?} does not exist and its name is not one we create automatically"
        )));
    }
    let mut admin = AsyncPgConnection::establish(url.maintenance_url().expose()).await?;
    match admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created missing database");
            Ok(())
        }
        // Another service created it at the same moment: PostgreSQL says so,
        // or, when the two collide inside the catalog, reports its index.
        Err(err)
            if err.to_string().contains("already exists")
                || err.to_string().contains("pg_database_datname_index") =>
        {
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

/// Answers whether the database accepts a trivial query right now.
pub async fn is_reachable(pool: &DbPool) -> bool {
    let probe = async {
        let mut conn = pool.get().await.ok()?;
        conn.batch_execute("SELECT 1").await.ok()
    };
    matches!(
        tokio::time::timeout(CONNECTION_TIMEOUT, probe).await,
        Ok(Some(()))
    )
}
