//! Configuration from environment variables: a default for everything, then
//! the environment, then validation. Every error names its variable.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A bad configuration value, naming the variable it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid {variable}={value:?}: {reason}")]
pub struct ConfigError {
    pub variable: String,
    pub value: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: &str, value: &str, reason: impl fmt::Display) -> Self {
        Self {
            variable: variable.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Returns the variable's value, or `None` when it is unset or empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// Parses the variable, or returns `default` when it is unset.
pub fn parse_var<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(value) => value
            .trim()
            .parse()
            .map_err(|err| ConfigError::new(name, &value, err)),
    }
}

/// Parses an integer variable and checks it lies in `range`.
pub fn parse_in_range<T>(
    name: &str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + fmt::Display + Copy,
    T::Err: fmt::Display,
{
    let value = parse_var(name, default)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::new(
            name,
            &value.to_string(),
            format_args!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

/// Reads a listen address such as `0.0.0.0:50051`.
pub fn listen_addr(name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
    let value = var(name).unwrap_or_else(|| default.to_owned());
    value
        .parse()
        .map_err(|_| ConfigError::new(name, &value, "expected HOST:PORT with a numeric host"))
}

/// Kafka's default `message.max.bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Where the Kafka brokers are and how topics are named and sized.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    pub topic_prefix: String,
    pub partitions: i32,
    /// How long the broker may hold a consumer's fetch open waiting for
    /// data. tansu always waits this long, even with data ready, and polls
    /// while it waits, so the default is 0; with Apache Kafka, which answers
    /// as soon as data arrives, a few hundred ms costs nothing.
    pub fetch_max_wait_ms: i32,
    /// The least time between the starts of two fetches of a partition;
    /// records arriving meanwhile share one fetch and one transaction.
    pub fetch_min_interval: Duration,
    /// The longest a consumer pauses between fetches of a partition that
    /// keeps coming back empty (it starts at 2 ms and doubles). Bounds the
    /// extra latency of the first record after a quiet spell.
    pub fetch_max_idle_pause: Duration,
    /// The largest record batch the broker accepts, in bytes (Kafka's
    /// `message.max.bytes`, 1 MiB by default). Produce requests are split
    /// to stay under it, and a single record that cannot fit is refused
    /// before it is sent.
    pub max_message_bytes: usize,
    /// How long a partition may have records waiting without a commit
    /// before the service reports NOT_SERVING (`STALL_SECONDS`).
    pub stall_after: Duration,
    /// Replicas of each topic the services create
    /// (`KAFKA_REPLICATION_FACTOR`; production: 3).
    pub replication_factor: i16,
}

impl KafkaConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let raw = var("KAFKA_BROKERS").unwrap_or_else(|| "127.0.0.1:9092".to_owned());
        let brokers: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|broker| !broker.is_empty())
            .map(str::to_owned)
            .collect();
        if brokers.is_empty() {
            return Err(ConfigError::new("KAFKA_BROKERS", &raw, "no broker given"));
        }
        for broker in &brokers {
            let port = broker.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(ConfigError::new(
                    "KAFKA_BROKERS",
                    &raw,
                    format_args!("{broker:?} is not HOST:PORT"),
                ));
            }
        }
        let topic_prefix = std::env::var("KAFKA_TOPIC_PREFIX").unwrap_or_default();
        if let Some(bad) = topic_prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(ConfigError::new(
                "KAFKA_TOPIC_PREFIX",
                &topic_prefix,
                format_args!("{bad:?} is not allowed in a Kafka topic name"),
            ));
        }
        Ok(Self {
            brokers,
            topic_prefix,
            partitions: parse_in_range("KAFKA_TOPIC_PARTITIONS", 6, 1..=1000)?,
            fetch_max_wait_ms: parse_in_range("KAFKA_FETCH_MAX_WAIT_MS", 0, 0..=5_000)?,
            fetch_min_interval: Duration::from_millis(parse_in_range(
                "KAFKA_FETCH_MIN_INTERVAL_MS",
                5,
                0..=1_000,
            )?),
            fetch_max_idle_pause: Duration::from_millis(parse_in_range(
                "KAFKA_FETCH_MAX_IDLE_PAUSE_MS",
                25,
                0..=10_000,
            )?),
            max_message_bytes: parse_in_range(
                "KAFKA_MAX_MESSAGE_BYTES",
                DEFAULT_MAX_MESSAGE_BYTES,
                16 * 1024..=100 * 1024 * 1024,
            )?,
            stall_after: Duration::from_secs(parse_in_range("STALL_SECONDS", 60, 1..=86_400)?),
            replication_factor: parse_in_range("KAFKA_REPLICATION_FACTOR", 1, 1..=32)?,
        })
    }
}

/// A PostgreSQL connection URL whose password never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(url::Url);

impl DatabaseUrl {
    pub fn parse(variable: &str, value: &str) -> Result<Self, ConfigError> {
        let url =
            url::Url::parse(value).map_err(|err| ConfigError::new(variable, "<redacted>", err))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(ConfigError::new(
                variable,
                &redact(&url),
                "expected a postgres:// URL",
            ));
        }
        if url.path().trim_start_matches('/').is_empty() {
            return Err(ConfigError::new(
                variable,
                &redact(&url),
                "the URL names no database",
            ));
        }
        Ok(Self(url))
    }

    /// Reads `specific` (for example `ORDER_DATABASE_URL`), then
    /// `DATABASE_URL`, then the default.
    pub fn from_env(specific: &str) -> Result<Self, ConfigError> {
        const DEFAULT: &str = "postgres://postgres:postgres@127.0.0.1:5432/orders";
        match (var(specific), var("DATABASE_URL")) {
            (Some(value), _) => Self::parse(specific, &value),
            (None, Some(value)) => Self::parse("DATABASE_URL", &value),
            (None, None) => Self::parse("DATABASE_URL", DEFAULT),
        }
    }

    /// The full URL, password included: only for opening connections.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The database's name.
    pub fn database_name(&self) -> String {
        self.0.path().trim_start_matches('/').to_owned()
    }

    /// The same server's maintenance database, used to create this one.
    pub fn maintenance_url(&self) -> Self {
        let mut url = self.0.clone();
        url.set_path("/postgres");
        Self(url)
    }

    /// The same server with another database.
    pub fn with_database(&self, name: &str) -> Self {
        let mut url = self.0.clone();
        url.set_path(&format!("/{name}"));
        Self(url)
    }
}

fn redact(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", redact(&self.0))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// The database settings of one service.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DatabaseUrl,
    /// Connections for the consumers, the relay and the workers.
    pub pool_size: u32,
    /// Connections for gRPC reads and watches, apart from the above.
    pub read_pool_size: u32,
}

impl DatabaseConfig {
    /// Reads the service's database settings; `specific` is its own URL
    /// variable, such as `ORDER_DATABASE_URL`.
    pub fn from_env(specific: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            url: DatabaseUrl::from_env(specific)?,
            pool_size: parse_in_range("DATABASE_POOL_SIZE", 10, 1..=200)?,
            read_pool_size: parse_in_range("DATABASE_READ_POOL_SIZE", 3, 1..=200)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_hides_its_password() {
        let url =
            DatabaseUrl::parse("DATABASE_URL", "postgres://app:s3cret@db:5432/orders").unwrap();
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(!url.to_string().contains("s3cret"));
        assert_eq!(url.database_name(), "orders");
        assert!(url.maintenance_url().expose().ends_with("/postgres"));
    }

    #[test]
    fn database_url_errors_name_the_variable() {
        let err = DatabaseUrl::parse("ORDER_DATABASE_URL", "mysql://x/y").unwrap_err();
        assert_eq!(err.variable, "ORDER_DATABASE_URL");
        assert!(err.to_string().contains("ORDER_DATABASE_URL"));
        let err = DatabaseUrl::parse("DATABASE_URL", "postgres://x:5432").unwrap_err();
        assert!(err.reason.contains("no database"));
    }

    #[test]
    fn listen_addr_rejects_garbage() {
        let err = listen_addr("NO_SUCH_VARIABLE_FOR_TESTS", "not-an-address").unwrap_err();
        assert_eq!(err.variable, "NO_SUCH_VARIABLE_FOR_TESTS");
    }
}
