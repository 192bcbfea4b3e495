//! Topic names. Every name can carry a prefix (`KAFKA_TOPIC_PREFIX`) so that
//! several deployments or test runs can share one broker.

pub const ORDER_CREATED: &str = "order-created";
pub const PROCESS_PAYMENT: &str = "process-payment";
pub const PAYMENT_SUCCEEDED: &str = "payment-succeeded";
pub const PAYMENT_FAILED: &str = "payment-failed";

/// The suffix of a topic's dead-letter topic.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// Resolves base topic names to the full names used on the broker.
#[derive(Debug, Clone, Default)]
pub struct TopicNames {
    prefix: String,
}

impl TopicNames {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The broker's name for the base topic `base`.
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }
}

/// The dead-letter topic of the full topic name `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}{DEAD_LETTER_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_applies_to_every_topic() {
        let names = TopicNames::new("test-1-");
        assert_eq!(names.name(ORDER_CREATED), "test-1-order-created");
        assert_eq!(
            dead_letter_topic(&names.name(PROCESS_PAYMENT)),
            "test-1-process-payment.dlq"
        );
        assert_eq!(
            TopicNames::default().name(PAYMENT_SUCCEEDED),
            "payment-succeeded"
        );
    }
}
