//! Instances that start together on an empty database migrate it once and
//! all start cleanly.

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;

use oms_common::db;
use oms_testkit::TestDatabase;

const SCHEMA: &str = "concurrent_start";

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_starting_at_once_migrate_a_new_database_once() {
    let db = TestDatabase::not_yet_created();
    for round in 0..3 {
        let schema: &'static str = Box::leak(format!("{SCHEMA}_{round}").into_boxed_str());
        let starts = (0..3).map(|_| db::prepare(&db.url, schema, db::PLATFORM_MIGRATIONS));
        for (instance, started) in futures::future::join_all(starts)
            .await
            .into_iter()
            .enumerate()
        {
            if let Err(err) = started {
                panic!("instance {instance} of round {round} failed to migrate: {err}");
            }
        }
        let applied: Count = diesel::sql_query(format!(
            "SELECT count(*) AS count FROM {schema}.__diesel_schema_migrations"
        ))
        .get_result(&mut db.connect(schema).await)
        .await
        .expect("migrations recorded");
        assert_eq!(
            applied.count,
            platform_migrations(),
            "each platform migration recorded once"
        );
    }
}

/// The platform migrations in the source tree.
fn platform_migrations() -> i64 {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/platform");
    std::fs::read_dir(dir).expect("migrations/platform").count() as i64
}
