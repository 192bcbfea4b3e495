//! Several instances of a service share its work through PostgreSQL: each is
//! a member while it renews its row in `members`, and the partitions of the
//! topics it consumes are shared out by leases in `partition_leases`.
//!
//! PostgreSQL's clock alone decides when a row or a lease has expired. Each
//! instance also keeps a deadline on its own monotonic clock, measured from
//! before the round that renewed it, and stops working on a lease (or, for
//! the relay, on its membership) a renewal interval before the database can
//! consider it expired. A paused or slow instance therefore stops before
//! anybody takes over, and if it resumes late, the epoch check at commit
//! (see `consumer::commit`) refuses what it did.
//!
//! What is not a partition follows membership: an outbox row or a pending
//! payment belongs to the instance that wrote it (its connections set
//! `oms.instance_id`, which the columns default to), and is adopted by
//! another once that instance is no longer a member.

mod share;
mod store;

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ConfigError, parse_in_range, var};
use crate::db::{DbError, DbPool};

pub use share::{Plan, plan};
pub use store::{Lease, Round, acquire_for_benchmark};

/// The longest instance id; it is also a PostgreSQL setting value.
const MAX_INSTANCE_ID_BYTES: usize = 128;

/// Who this instance is and how long its leases last.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// `INSTANCE_ID`: unique among the live instances of a service; by
    /// default the host name and a random suffix.
    pub instance_id: String,
    /// `LEASE_DURATION_MS` (10 s): how long a membership or a lease lasts
    /// unless renewed, so the longest a dead instance's work waits.
    pub lease: Duration,
    /// `LEASE_RENEW_INTERVAL_MS` (2 s): how often they are renewed, and how
    /// soon a partition handed back or newly shared is picked up.
    pub renew_every: Duration,
}

impl MembershipConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let instance_id = var("INSTANCE_ID").unwrap_or_else(default_instance_id);
        check_instance_id(&instance_id)?;
        let lease =
            Duration::from_millis(parse_in_range("LEASE_DURATION_MS", 10_000, 500..=600_000)?);
        let renew_every = Duration::from_millis(parse_in_range(
            "LEASE_RENEW_INTERVAL_MS",
            2_000,
            100..=120_000,
        )?);
        Self::new(instance_id, lease, renew_every)
    }

    /// Checks that a lease survives two missed renewals with room to spare:
    /// the instance stops working a renewal interval before expiry, and one
    /// slow round must not cost it its partitions.
    pub fn new(
        instance_id: String,
        lease: Duration,
        renew_every: Duration,
    ) -> Result<Self, ConfigError> {
        if renew_every.saturating_mul(3) > lease {
            return Err(ConfigError::new(
                "LEASE_RENEW_INTERVAL_MS",
                &renew_every.as_millis().to_string(),
                format_args!(
                    "must be at most a third of LEASE_DURATION_MS ({} ms), so that a lease \
                     outlives two missed renewals",
                    lease.as_millis()
                ),
            ));
        }
        Ok(Self {
            instance_id,
            lease,
            renew_every,
        })
    }

    /// A configuration for tests and tools: a fresh instance id, the
    /// default timings.
    pub fn with_instance_id(instance_id: impl Into<String>) -> Self {
        Self {
            instance_id: instance_id.into(),
            lease: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }

    /// The time before the database's expiry at which this instance stops
    /// working under a renewal it started at `sent_at`.
    fn deadline_after(&self, sent_at: Instant) -> Instant {
        sent_at + self.lease - self.renew_every
    }
}

fn check_instance_id(id: &str) -> Result<(), ConfigError> {
    let printable = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if id.len() > MAX_INSTANCE_ID_BYTES || !printable {
        return Err(ConfigError::new(
            "INSTANCE_ID",
            id,
            format_args!("use at most {MAX_INSTANCE_ID_BYTES} letters, digits and - _ . : @"),
        ));
    }
    Ok(())
}

/// The host name (a pod's name on Kubernetes) and a random suffix, so two
/// processes on one host, or a restarted one, never share an id.
fn default_instance_id() -> String {
    let host = var("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "instance".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// This instance's membership: its id, and until when it may act as a
/// member by its own clock.
#[derive(Debug)]
pub struct Membership {
    pub config: MembershipConfig,
    pool: DbPool,
    member_until: Mutex<Option<Instant>>,
}

impl Membership {
    pub fn new(config: MembershipConfig, pool: DbPool) -> Self {
        Self {
            config,
            pool,
            member_until: Mutex::new(None),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    /// Whether this instance is surely still a member: its last renewal
    /// holds for at least another renewal interval. The relay publishes
    /// only then, so rows another instance adopted are not published twice.
    pub fn is_member(&self) -> bool {
        self.member_for().is_some()
    }

    /// How much longer this instance is surely a member, if it is.
    pub fn member_for(&self) -> Option<Duration> {
        let until = (*self
            .member_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Joins or renews, keeps the leases held, takes a fair share of
    /// `partitions` (except `releasing`), and returns the leases held with
    /// the local deadline to stop working under them.
    pub async fn round(
        &self,
        partitions: &[(String, i32)],
        releasing: &std::collections::BTreeSet<(String, i32)>,
    ) -> Result<(Round, Instant), DbError> {
        let sent_at = Instant::now();
        let mut conn = self.pool.get().await?;
        let round = store::round(
            &mut conn,
            &self.config.instance_id,
            self.config.lease,
            partitions,
            releasing,
        )
        .await?;
        let deadline = self.config.deadline_after(sent_at);
        *self
            .member_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(deadline);
        Ok((round, deadline))
    }

    /// Stays a member, holding no partitions, until `shutdown`: for a relay
    /// run on its own (tests, tools).
    pub async fn stay_member(
        self: std::sync::Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let none = std::collections::BTreeSet::new();
        loop {
            if let Err(err) = self.round(&[], &none).await {
                tracing::warn!(error = %err, "cannot renew membership");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.renew_every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Gives one lease back, if it is still ours under `epoch`.
    pub async fn release(&self, topic: &str, partition: i32, epoch: i64) -> Result<(), DbError> {
        let mut conn = self.pool.get().await?;
        store::release(&mut conn, &self.config.instance_id, topic, partition, epoch).await?;
        Ok(())
    }

    /// Gives back every lease this id holds: at start-up, so leases a
    /// previous process with the same id held are taken afresh under new
    /// epochs.
    pub async fn release_all(&self) -> Result<(), DbError> {
        let mut conn = self.pool.get().await?;
        store::release_all(&mut conn, &self.config.instance_id).await?;
        Ok(())
    }

    /// Leaves: gives back every lease and deletes the member row, so the
    /// others take over at their next renewal and adopt what is left.
    pub async fn leave(&self) -> Result<(), DbError> {
        *self
            .member_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        let mut conn = self.pool.get().await?;
        store::leave(&mut conn, &self.config.instance_id).await?;
        tracing::info!(instance = %self.config.instance_id, "left: partitions handed back");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_not_well_inside_the_lease_is_refused_naming_both_variables() {
        let err =
            MembershipConfig::new("a".into(), Duration::from_secs(10), Duration::from_secs(4))
                .unwrap_err();
        assert_eq!(err.variable, "LEASE_RENEW_INTERVAL_MS");
        assert!(err.to_string().contains("LEASE_DURATION_MS"), "{err}");
        assert!(
            MembershipConfig::new("a".into(), Duration::from_secs(9), Duration::from_secs(3))
                .is_ok()
        );
    }

    #[test]
    fn default_instance_ids_differ_and_are_valid() {
        let (a, b) = (default_instance_id(), default_instance_id());
        assert_ne!(a, b);
        check_instance_id(&a).expect("valid");
        assert!(check_instance_id("bad id; DROP").is_err());
    }
}
