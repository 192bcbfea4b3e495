//! The SQL of membership and leases. Every expiry is computed and compared
//! by PostgreSQL's clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use diesel::QueryResult;
use diesel::sql_types::{Array, BigInt, Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::share::{held_by_topic, plan};

/// A partition lease held by this instance.
#[derive(Debug, Clone, PartialEq, Eq, diesel::QueryableByName)]
pub struct Lease {
    #[diesel(sql_type = Text)]
    pub topic: String,
    #[diesel(sql_type = Integer, column_name = partition_id)]
    pub partition: i32,
    #[diesel(sql_type = BigInt)]
    pub epoch: i64,
}

/// What one round found and did.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Every lease held now, renewed or just taken.
    pub held: Vec<Lease>,
    /// The leases taken this round (also in `held`).
    pub acquired: Vec<Lease>,
    /// Held partitions beyond this instance's share, or no longer in their
    /// topic, to hand back once their consumer has stopped.
    pub give_up: Vec<(String, i32)>,
    /// Live members, this one included.
    pub members: usize,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One round in one transaction (one clock reading): join or renew, make
/// sure every partition has a lease row, renew the leases still valid, and
/// take free or expired partitions up to the fair share.
pub(super) async fn round(
    conn: &mut AsyncPgConnection,
    instance: &str,
    lease: Duration,
    partitions: &[(String, i32)],
    releasing: &BTreeSet<(String, i32)>,
) -> QueryResult<Round> {
    let lease_ms = millis(lease);
    let topics: Vec<&str> = partitions.iter().map(|(topic, _)| topic.as_str()).collect();
    let ids: Vec<i32> = partitions.iter().map(|(_, partition)| *partition).collect();
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::sql_query(
            "INSERT INTO members (instance_id, expires_at) \
             VALUES ($1, now() + $2::float8 * interval '1 millisecond') \
             ON CONFLICT (instance_id) DO UPDATE SET expires_at = excluded.expires_at",
        )
        .bind::<Text, _>(instance)
        .bind::<BigInt, _>(lease_ms)
        .execute(conn)
        .await?;
        diesel::sql_query(
            "INSERT INTO partition_leases (topic, partition_id) \
             SELECT * FROM unnest($1::text[], $2::int4[]) ON CONFLICT DO NOTHING",
        )
        .bind::<Array<Text>, _>(&topics)
        .bind::<Array<Integer>, _>(&ids)
        .execute(conn)
        .await?;
        // An expired lease is not renewed, even if nobody took it: it is
        // taken afresh below under a new epoch, so nothing fetched under the
        // old one can commit.
        let mut held: Vec<Lease> = diesel::sql_query(
            "UPDATE partition_leases \
             SET expires_at = now() + $2::float8 * interval '1 millisecond' \
             WHERE owner = $1 AND expires_at > now() \
             RETURNING topic, partition_id, epoch",
        )
        .bind::<Text, _>(instance)
        .bind::<BigInt, _>(lease_ms)
        .load(conn)
        .await?;
        let members =
            diesel::sql_query("SELECT count(*) AS count FROM members WHERE expires_at > now()")
                .get_result::<Count>(conn)
                .await?
                .count as usize;

        let mut listed: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            listed.entry(topic.as_str()).or_default().push(*partition);
        }
        let mut give_up = Vec::new();
        let mut acquired = Vec::new();
        let counted = held
            .iter()
            .filter(|lease| !releasing.contains(&(lease.topic.clone(), lease.partition)))
            .map(|lease| (lease.topic.as_str(), lease.partition));
        let mine = held_by_topic(counted);
        for (topic, partitions) in &listed {
            let (current, gone): (Vec<i32>, Vec<i32>) = mine
                .get(topic)
                .map(|held| held.iter().partition(|p| partitions.contains(p)))
                .unwrap_or_default();
            give_up.extend(gone.into_iter().map(|p| (topic.to_string(), p)));
            let plan = plan(partitions.len(), &current, members);
            give_up.extend(plan.give_up.into_iter().map(|p| (topic.to_string(), p)));
            if plan.acquire == 0 {
                continue;
            }
            let taken: Vec<Lease> = diesel::sql_query(
                "WITH free AS ( \
                     SELECT topic, partition_id FROM partition_leases \
                     WHERE topic = $3 AND partition_id = ANY($4) \
                       AND (owner IS NULL OR expires_at <= now()) \
                     ORDER BY partition_id LIMIT $5 \
                     FOR UPDATE SKIP LOCKED) \
                 UPDATE partition_leases l \
                 SET owner = $1, epoch = l.epoch + 1, \
                     expires_at = now() + $2::float8 * interval '1 millisecond' \
                 FROM free WHERE l.topic = free.topic AND l.partition_id = free.partition_id \
                 RETURNING l.topic, l.partition_id, l.epoch",
            )
            .bind::<Text, _>(instance)
            .bind::<BigInt, _>(lease_ms)
            .bind::<Text, _>(*topic)
            .bind::<Array<Integer>, _>(partitions)
            .bind::<BigInt, _>(plan.acquire as i64)
            .load(conn)
            .await?;
            acquired.extend(taken);
        }
        // Re-taken after expiring: the old entry is gone under its epoch.
        held.retain(|lease| {
            !acquired
                .iter()
                .any(|taken| taken.topic == lease.topic && taken.partition == lease.partition)
        });
        held.extend(acquired.iter().cloned());
        Ok(Round {
            held,
            acquired,
            give_up,
            members,
        })
    })
    .await
}

const RELEASE: &str = "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity'";

pub(super) async fn release(
    conn: &mut AsyncPgConnection,
    instance: &str,
    topic: &str,
    partition: i32,
    epoch: i64,
) -> QueryResult<()> {
    diesel::sql_query(format!(
        "{RELEASE} WHERE topic = $1 AND partition_id = $2 AND owner = $3 AND epoch = $4"
    ))
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .bind::<Text, _>(instance)
    .bind::<BigInt, _>(epoch)
    .execute(conn)
    .await?;
    Ok(())
}

pub(super) async fn release_all(conn: &mut AsyncPgConnection, instance: &str) -> QueryResult<()> {
    diesel::sql_query(format!("{RELEASE} WHERE owner = $1"))
        .bind::<Text, _>(instance)
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) async fn leave(conn: &mut AsyncPgConnection, instance: &str) -> QueryResult<()> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        release_all(conn, instance).await?;
        diesel::sql_query("DELETE FROM members WHERE instance_id = $1")
            .bind::<Text, _>(instance)
            .execute(conn)
            .await?;
        Ok(())
    })
    .await
}

/// Takes the lease of one partition for an hour under `instance`, whoever
/// holds it, and returns its epoch: for the benchmark, which commits
/// batches the way consumers do, fencing check included.
pub async fn acquire_for_benchmark(
    conn: &mut AsyncPgConnection,
    instance: &str,
    topic: &str,
    partition: i32,
) -> QueryResult<i64> {
    let lease: Lease = diesel::sql_query(
        "INSERT INTO partition_leases AS l (topic, partition_id, owner, epoch, expires_at) \
         VALUES ($1, $2, $3, 1, now() + interval '1 hour') \
         ON CONFLICT (topic, partition_id) DO UPDATE \
         SET owner = $3, epoch = l.epoch + 1, expires_at = now() + interval '1 hour' \
         RETURNING topic, partition_id, epoch",
    )
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .bind::<Text, _>(instance)
    .get_result(conn)
    .await?;
    Ok(lease.epoch)
}
