//! How many partitions of each topic an instance should hold: at most
//! ceil(partitions / members), and no change while it holds its share, so
//! partitions move only when an owner leaves, dies or holds too many.

use std::collections::BTreeMap;

/// What one instance does with one topic this round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Free or expired partitions to take, at most.
    pub acquire: usize,
    /// Held partitions to hand back: the highest-numbered beyond the share.
    pub give_up: Vec<i32>,
}

/// The plan for a topic with `partitions` partitions, of which this instance
/// holds `held`, among `members` live instances (itself included).
pub fn plan(partitions: usize, held: &[i32], members: usize) -> Plan {
    let share = partitions.div_ceil(members.max(1));
    let mut held = held.to_vec();
    held.sort_unstable();
    if held.len() > share {
        Plan {
            acquire: 0,
            give_up: held.split_off(share),
        }
    } else {
        Plan {
            acquire: share - held.len(),
            give_up: Vec::new(),
        }
    }
}

/// Counts held partitions per topic.
pub(super) fn held_by_topic<'a>(
    held: impl Iterator<Item = (&'a str, i32)>,
) -> BTreeMap<&'a str, Vec<i32>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in held {
        by_topic.entry(topic).or_default().push(partition);
    }
    by_topic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_instance_takes_every_partition() {
        assert_eq!(plan(6, &[], 1).acquire, 6);
    }

    #[test]
    fn a_second_member_makes_the_first_give_up_half() {
        let first = plan(6, &[0, 1, 2, 3, 4, 5], 2);
        assert_eq!(first.give_up, [3, 4, 5]);
        assert_eq!(plan(6, &[], 2).acquire, 3);
    }

    #[test]
    fn three_members_hold_two_each_and_a_fourth_is_a_standby_or_shares() {
        assert_eq!(plan(6, &[0, 1, 2], 3).give_up, [2]);
        assert_eq!(plan(6, &[3, 4], 3), Plan::default());
        // Four members: each may hold two, so one of them may hold none.
        assert_eq!(plan(6, &[0, 1], 4), Plan::default());
        assert_eq!(plan(6, &[], 4).acquire, 2);
    }

    #[test]
    fn holding_the_share_changes_nothing() {
        assert_eq!(plan(6, &[1, 4, 5], 2), Plan::default());
        assert_eq!(plan(1, &[0], 3), Plan::default());
    }
}
