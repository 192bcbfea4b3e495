//! Throwaway databases: one per test, dropped when the test ends.

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use oms_common::config::{DatabaseConfig, DatabaseUrl};

/// The server tests create their databases on: `TEST_DATABASE_URL`, by
/// default the local PostgreSQL's maintenance database.
pub fn admin_url() -> DatabaseUrl {
    let raw = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
    DatabaseUrl::parse("TEST_DATABASE_URL", &raw).expect("TEST_DATABASE_URL is a postgres:// URL")
}

/// A database that exists for one test. Its services migrate it themselves,
/// exactly as they do in production.
pub struct TestDatabase {
    pub url: DatabaseUrl,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!("oms_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = AsyncPgConnection::establish(admin.expose())
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "cannot reach PostgreSQL at {admin} ({err}); start it with `just postgres` \
                 or point TEST_DATABASE_URL at a server"
                )
            });
        conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        Self {
            url: admin.with_database(&name),
            name,
        }
    }

    /// Names a database that does not exist yet (but is dropped like any
    /// other when the test ends), to test that services create it.
    pub fn not_yet_created() -> Self {
        let name = format!("oms_test_{}", uuid::Uuid::new_v4().simple());
        Self {
            url: admin_url().with_database(&name),
            name,
        }
    }

    pub fn config(&self) -> DatabaseConfig {
        DatabaseConfig {
            url: self.url.clone(),
            pool_size: 5,
            read_pool_size: 2,
        }
    }

    /// Opens a connection with `search_path` set to `schema`.
    pub async fn connect(&self, schema: &str) -> AsyncPgConnection {
        let mut conn = AsyncPgConnection::establish(self.url.expose())
            .await
            .expect("connect to test database");
        conn.batch_execute(&format!("SET search_path TO {schema}"))
            .await
            .expect("set search_path");
        conn
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = admin_url();
        let name = self.name.clone();
        // Drop runs outside any async context we could borrow, so the clean-up
        // gets a small runtime of its own on a plain thread.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut conn) = AsyncPgConnection::establish(admin.expose()).await {
                    let _ = conn
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
