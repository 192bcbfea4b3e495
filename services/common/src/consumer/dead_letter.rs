//! Dead letters: the copy of a record that cannot be processed, for its
//! `<topic>.dlq`, with headers that say why and where it came from.

use std::collections::BTreeMap;

use chrono::{SecondsFormat, Utc};

use super::{InboundRecord, Rejection};
use crate::outbox::OutboxMessage;
use crate::topics::dead_letter_topic;

/// The copy of a poison record for its dead-letter topic: the original key,
/// payload and headers, plus why and where from.
pub(super) fn dead_letter(record: &InboundRecord, rejection: &Rejection) -> OutboxMessage {
    let mut headers: BTreeMap<String, Vec<u8>> = record
        .headers
        .iter()
        .map(|(name, value)| (storable_header_name(name), value.clone()))
        .collect();
    headers.extend(dead_letter_headers(
        &record.topic,
        record.partition,
        record.offset,
        &rejection.0,
    ));
    OutboxMessage {
        topic: dead_letter_topic(&record.topic),
        key: record.key.clone().unwrap_or_default(),
        payload: record.payload.clone(),
        headers,
    }
}

/// The dead letter of a record the client could not even read: no key,
/// payload or headers, only where it was and why it was skipped.
pub(super) fn skipped_record(
    topic: &str,
    partition: i32,
    offset: i64,
    error: &str,
) -> OutboxMessage {
    OutboxMessage {
        topic: dead_letter_topic(topic),
        key: Vec::new(),
        payload: Vec::new(),
        headers: dead_letter_headers(
            topic,
            partition,
            offset,
            &format!("skipped: the record could not be read ({error})"),
        ),
    }
}

fn dead_letter_headers(
    topic: &str,
    partition: i32,
    offset: i64,
    reason: &str,
) -> BTreeMap<String, Vec<u8>> {
    [
        ("dlq_reason", reason.to_owned()),
        ("dlq_source_topic", topic.to_owned()),
        ("dlq_source_partition", partition.to_string()),
        ("dlq_source_offset", offset.to_string()),
        (
            "dlq_time",
            Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.into_bytes()))
    .collect()
}

/// Header names go to a PostgreSQL `text[]`, which cannot hold NUL: in a
/// name with NUL, NUL and `%` are percent-encoded. Values are `bytea` and
/// kept as they are.
fn storable_header_name(name: &str) -> String {
    if !name.contains('\0') {
        return name.to_owned();
    }
    name.chars()
        .map(|c| match c {
            '\0' => "%00".to_owned(),
            '%' => "%25".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_with_nul_are_encoded_and_others_kept() {
        assert_eq!(storable_header_name("ce_id"), "ce_id");
        assert_eq!(storable_header_name("50%"), "50%");
        assert_eq!(storable_header_name("a\0b%"), "a%00b%25");
    }
}
