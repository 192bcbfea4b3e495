//! CloudEvents (Kafka protocol binding, binary mode) headers for our events.
//!
//! The payload is the protobuf message itself; the envelope travels in record
//! headers: `ce_specversion`, `ce_id`, `ce_type`, `ce_source`, `ce_time`,
//! `ce_subject` (the order id) and `content-type`. `ce_type` is the event
//! message's full protobuf name, so a consumer can tell what it received
//! before decoding it.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::orders::events::v1::{OrderCreated, PaymentFailed, PaymentSucceeded, ProcessPayment};

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/protobuf";

/// An event payload with a stable CloudEvents type.
pub trait Event: prost::Message + Default {
    /// The CloudEvents `ce_type`: the message's full protobuf name.
    const TYPE: &'static str;
}

impl Event for OrderCreated {
    const TYPE: &'static str = "orders.events.v1.OrderCreated";
}

impl Event for ProcessPayment {
    const TYPE: &'static str = "orders.events.v1.ProcessPayment";
}

impl Event for PaymentSucceeded {
    const TYPE: &'static str = "orders.events.v1.PaymentSucceeded";
}

impl Event for PaymentFailed {
    const TYPE: &'static str = "orders.events.v1.PaymentFailed";
}

/// The CloudEvents attributes of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEnvelope {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub subject: String,
    pub time: DateTime<Utc>,
}

/// Why a record's headers are not a valid envelope.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("unsupported ce_specversion {0:?}")]
    UnsupportedSpecVersion(String),
    #[error("unsupported content-type {0:?}")]
    UnsupportedContentType(String),
    #[error("ce_time {0:?} is not an RFC 3339 timestamp")]
    BadTime(String),
}

impl EventEnvelope {
    /// Creates the envelope of a new event of type `E` about `subject`.
    pub fn new<E: Event>(source: &str, subject: impl Into<String>) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            event_type: E::TYPE.to_owned(),
            source: source.to_owned(),
            subject: subject.into(),
            time: Utc::now(),
        }
    }

    /// Renders the envelope as Kafka record headers.
    pub fn to_headers(&self) -> BTreeMap<String, Vec<u8>> {
        let time = self.time.to_rfc3339_opts(SecondsFormat::Micros, true);
        [
            ("ce_specversion", SPEC_VERSION),
            ("ce_id", &self.id),
            ("ce_type", &self.event_type),
            ("ce_source", &self.source),
            ("ce_subject", &self.subject),
            ("ce_time", &time),
            ("content-type", CONTENT_TYPE),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.as_bytes().to_vec()))
        .collect()
    }

    /// Reads and checks the envelope from Kafka record headers.
    pub fn from_headers(headers: &BTreeMap<String, Vec<u8>>) -> Result<Self, EnvelopeError> {
        let spec_version = header(headers, "ce_specversion")?;
        if spec_version != SPEC_VERSION {
            return Err(EnvelopeError::UnsupportedSpecVersion(
                spec_version.to_owned(),
            ));
        }
        let content_type = header(headers, "content-type")?;
        if content_type != CONTENT_TYPE {
            return Err(EnvelopeError::UnsupportedContentType(
                content_type.to_owned(),
            ));
        }
        let time = header(headers, "ce_time")?;
        let time = DateTime::parse_from_rfc3339(time)
            .map_err(|_| EnvelopeError::BadTime(time.to_owned()))?
            .with_timezone(&Utc);
        Ok(Self {
            id: header(headers, "ce_id")?.to_owned(),
            event_type: header(headers, "ce_type")?.to_owned(),
            source: header(headers, "ce_source")?.to_owned(),
            // Optional in CloudEvents; our producers always set it.
            subject: header(headers, "ce_subject").unwrap_or_default().to_owned(),
            time,
        })
    }
}

fn header<'a>(
    headers: &'a BTreeMap<String, Vec<u8>>,
    name: &'static str,
) -> Result<&'a str, EnvelopeError> {
    let value = headers
        .get(name)
        .ok_or(EnvelopeError::MissingHeader(name))?;
    std::str::from_utf8(value).map_err(|_| EnvelopeError::NotUtf8(name))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::google::r#type::Money;

    #[test]
    fn envelope_survives_a_round_trip_through_headers() {
        let envelope = EventEnvelope::new::<OrderCreated>("/gateway", "order-1");
        let headers = envelope.to_headers();
        assert_eq!(headers["ce_type"], b"orders.events.v1.OrderCreated");
        assert_eq!(headers["content-type"], b"application/protobuf");
        assert_eq!(headers["ce_specversion"], b"1.0");
        let decoded = EventEnvelope::from_headers(&headers).unwrap();
        // ce_time is rendered with microsecond precision.
        assert_eq!(decoded.id, envelope.id);
        assert_eq!(decoded.subject, "order-1");
        assert_eq!(decoded.source, "/gateway");
        assert!(
            (decoded.time - envelope.time)
                .num_microseconds()
                .unwrap()
                .abs()
                < 1
        );
    }

    #[test]
    fn envelope_without_type_is_rejected() {
        let mut headers = EventEnvelope::new::<ProcessPayment>("/x", "o").to_headers();
        headers.remove("ce_type");
        assert_eq!(
            EventEnvelope::from_headers(&headers),
            Err(EnvelopeError::MissingHeader("ce_type"))
        );
    }

    #[test]
    fn envelope_with_foreign_content_type_is_rejected() {
        let mut headers = EventEnvelope::new::<ProcessPayment>("/x", "o").to_headers();
        headers.insert("content-type".into(), b"application/json".to_vec());
        assert!(matches!(
            EventEnvelope::from_headers(&headers),
            Err(EnvelopeError::UnsupportedContentType(_))
        ));
    }

    #[test]
    fn event_payload_round_trips_through_protobuf() {
        let event = PaymentSucceeded {
            order_id: "o-1".into(),
            payment_id: "p-1".into(),
            customer_id: "c-1".into(),
            amount: Some(Money {
                currency_code: "EUR".into(),
                units: 12,
                nanos: 340_000_000,
            }),
            complete_time: None,
        };
        let bytes = event.encode_to_vec();
        assert_eq!(PaymentSucceeded::decode(bytes.as_slice()).unwrap(), event);
    }
}
