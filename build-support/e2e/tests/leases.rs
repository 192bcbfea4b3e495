//! Partition leases against a real PostgreSQL: partitions are shared fairly
//! and move only when they must; a batch fetched under a lease that expired
//! or was taken over commits nothing, so no effect appears twice and no
//! stored offset moves backwards; a takeover waits for a commit in flight.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use diesel::QueryResult;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use oms_common::consumer::{
    CommitError, EventHandler, Fence, InboundRecord, Position, Rejection, commit_records,
};
use oms_common::db::{self, DbPool};
use oms_common::membership::{Membership, MembershipConfig};
use oms_common::outbox::OutboxMessage;
use oms_common::schema::{consumer_offsets, outbox};
use oms_testkit::TestDatabase;

const SCHEMA: &str = "lease_test";
const TOPIC: &str = "orders";

async fn database() -> (TestDatabase, DbPool) {
    let db = TestDatabase::create().await;
    db::prepare(&db.url, SCHEMA, db::PLATFORM_MIGRATIONS)
        .await
        .expect("migrate");
    let pool = db::pool(&db.config(), SCHEMA, "lease-test");
    (db, pool)
}

fn member(pool: &DbPool, id: &str, lease_ms: u64) -> Membership {
    let config = MembershipConfig::new(
        id.to_owned(),
        Duration::from_millis(lease_ms),
        Duration::from_millis(lease_ms / 4),
    )
    .expect("valid timings");
    Membership::new(config, pool.clone())
}

fn six_partitions() -> Vec<(String, i32)> {
    (0..6).map(|p| (TOPIC.to_owned(), p)).collect()
}

/// One round, handing back at once what is beyond the share (as the
/// consumer does once those partitions' tasks stop); the partitions held
/// afterwards.
async fn round(member: &Membership) -> Vec<i32> {
    let (round, _) = member
        .round(&six_partitions(), &BTreeSet::new())
        .await
        .expect("round");
    let mut held: Vec<i32> = round.held.iter().map(|lease| lease.partition).collect();
    for (topic, partition) in &round.give_up {
        let epoch = round
            .held
            .iter()
            .find(|lease| lease.partition == *partition)
            .expect("held")
            .epoch;
        member
            .release(topic, *partition, epoch)
            .await
            .expect("release");
        held.retain(|p| p != partition);
    }
    held.sort_unstable();
    held
}

#[tokio::test]
async fn partitions_are_shared_fairly_and_move_only_when_they_must() {
    let (_db, pool) = database().await;
    let (a, b, c) = (
        member(&pool, "a", 10_000),
        member(&pool, "b", 10_000),
        member(&pool, "c", 10_000),
    );
    assert_eq!(round(&a).await, [0, 1, 2, 3, 4, 5]);
    // b joins: nothing is free until a hands back what is beyond its share.
    assert_eq!(round(&b).await, Vec::<i32>::new());
    assert_eq!(round(&a).await, [0, 1, 2]);
    assert_eq!(round(&b).await, [3, 4, 5]);
    // c joins: each of the others gives up one partition, and only one.
    assert_eq!(round(&c).await, Vec::<i32>::new());
    assert_eq!(round(&a).await, [0, 1]);
    assert_eq!(round(&b).await, [3, 4]);
    assert_eq!(round(&c).await, [2, 5]);
    // Holding their share, nobody moves.
    for _ in 0..2 {
        assert_eq!(round(&a).await, [0, 1]);
        assert_eq!(round(&b).await, [3, 4]);
        assert_eq!(round(&c).await, [2, 5]);
    }
    // c leaves: its partitions go back to the others.
    c.leave().await.expect("leave");
    assert_eq!(round(&a).await, [0, 1, 2]);
    assert_eq!(round(&b).await, [3, 4, 5]);
}

/// A handler whose every record causes one outbox row: the effect a zombie
/// must not repeat.
struct OneEffectPerRecord;

impl EventHandler for OneEffectPerRecord {
    type Event = Vec<u8>;

    fn decode(&self, record: &InboundRecord) -> Result<Vec<u8>, Rejection> {
        Ok(record.payload.clone())
    }

    async fn apply(
        &self,
        _conn: &mut AsyncPgConnection,
        events: Vec<Vec<u8>>,
    ) -> QueryResult<Vec<OutboxMessage>> {
        Ok(events
            .into_iter()
            .map(|payload| OutboxMessage {
                topic: "effects".into(),
                key: payload.clone(),
                payload,
                headers: Default::default(),
            })
            .collect())
    }
}

fn records(offsets: std::ops::Range<i64>) -> Vec<InboundRecord> {
    offsets
        .map(|offset| InboundRecord {
            topic: TOPIC.into(),
            partition: 0,
            offset,
            key: None,
            payload: format!("record {offset}").into_bytes(),
            headers: Default::default(),
            timestamp: chrono::Utc::now(),
        })
        .collect()
}

async fn commit(
    pool: &DbPool,
    fence: &Fence,
    offsets: std::ops::Range<i64>,
) -> Result<(), CommitError> {
    let at = Position {
        topic: TOPIC,
        partition: 0,
        new_offset: offsets.end,
        fence,
    };
    commit_records(pool, &OneEffectPerRecord, &at, &records(offsets), 0)
        .await
        .map(|_| ())
}

async fn fence_of(member: &Membership, partition: i32) -> Fence {
    let (round, _) = member
        .round(&six_partitions(), &BTreeSet::new())
        .await
        .expect("round");
    let lease = round
        .held
        .iter()
        .find(|lease| lease.partition == partition)
        .expect("the partition is held");
    Fence {
        owner: Arc::from(member.instance_id()),
        epoch: lease.epoch,
    }
}

async fn stored_offset(db: &TestDatabase) -> i64 {
    consumer_offsets::table
        .select(consumer_offsets::next_offset)
        .first(&mut db.connect(SCHEMA).await)
        .await
        .expect("stored offset")
}

async fn effects(db: &TestDatabase) -> i64 {
    outbox::table
        .count()
        .get_result(&mut db.connect(SCHEMA).await)
        .await
        .expect("count effects")
}

#[tokio::test]
async fn a_zombie_commits_nothing_and_offsets_never_move_back() {
    let (db, pool) = database().await;
    let (zombie, successor) = (
        member(&pool, "zombie", 1_000),
        member(&pool, "successor", 1_000),
    );
    let old = fence_of(&zombie, 0).await;
    commit(&pool, &old, 0..5).await.expect("the owner commits");

    // The owner pauses past its lease; nobody has taken over yet, and its
    // commit is refused already: the lease has expired.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let refused = commit(&pool, &old, 5..8).await;
    assert!(
        matches!(refused, Err(CommitError::LeaseLost { .. })),
        "{refused:?}"
    );

    // Another instance takes over under a new epoch and reads on.
    let new = fence_of(&successor, 0).await;
    assert!(new.epoch > old.epoch);
    commit(&pool, &new, 5..10)
        .await
        .expect("the successor commits");

    // The zombie resumes with the batch it had fetched: refused, rolled
    // back whole, and the offset stays where the successor put it.
    let refused = commit(&pool, &old, 5..8).await;
    assert!(
        matches!(refused, Err(CommitError::LeaseLost { .. })),
        "{refused:?}"
    );
    assert_eq!(stored_offset(&db).await, 10);
    assert_eq!(effects(&db).await, 10, "each record's effect exactly once");

    // Even taking a lease back under its old name does not revive the old
    // epoch: the zombie rejoins and gets a new one.
    successor.leave().await.expect("leave");
    let rejoined = fence_of(&zombie, 0).await;
    assert!(rejoined.epoch > new.epoch);
    let refused = commit(&pool, &old, 10..12).await;
    assert!(
        matches!(refused, Err(CommitError::LeaseLost { .. })),
        "{refused:?}"
    );
    commit(&pool, &rejoined, 10..12)
        .await
        .expect("commits under the new epoch");
    assert_eq!((stored_offset(&db).await, effects(&db).await), (12, 12));
}

#[tokio::test]
async fn a_takeover_waits_for_the_commit_in_flight() {
    let (db, pool) = database().await;
    let (owner, successor) = (
        member(&pool, "owner", 1_000),
        member(&pool, "successor", 1_000),
    );
    let fence = fence_of(&owner, 0).await;
    // A batch transaction of the owner holds its lease row while the lease
    // expires: the lock its fencing write takes (FOR SHARE) until it
    // commits, taken here by hand to hold the transaction open.
    let mut in_flight = db.connect(SCHEMA).await;
    in_flight
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM partition_leases \
             WHERE topic = '{TOPIC}' AND partition_id = 0 AND epoch = {} FOR SHARE",
            fence.epoch
        ))
        .await
        .expect("hold the lease row");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (round, _) = successor
        .round(&six_partitions(), &BTreeSet::new())
        .await
        .expect("round");
    let taken: Vec<i32> = round.acquired.iter().map(|lease| lease.partition).collect();
    assert_eq!(
        taken,
        [1, 2, 3, 4, 5],
        "partition 0 waits for the commit in flight"
    );
    in_flight.batch_execute("COMMIT").await.expect("commit");
    let (round, _) = successor
        .round(&six_partitions(), &BTreeSet::new())
        .await
        .expect("round");
    let taken: Vec<i32> = round.acquired.iter().map(|lease| lease.partition).collect();
    assert_eq!(taken, [0]);
}
