//! Keys and tokens for tests that run the services with `AUTH_MODE=jwt`.

use std::path::PathBuf;

use oms_devkeys::{DEV_AUDIENCE, DEV_ISSUER, DevKeys, SigningKey};
use tonic::metadata::MetadataValue;

/// The leeway the auth tests give the services, in seconds: short, so an
/// expired token is refused without waiting long.
pub const TEST_LEEWAY_SECS: u64 = 5;

/// A key pair of the test's own, in a directory no other test uses.
pub struct TestKeys {
    pub dir: PathBuf,
    pub key: SigningKey,
}

impl TestKeys {
    pub fn create() -> Self {
        let dir =
            std::env::temp_dir().join(format!("oms-test-keys-{}", uuid::Uuid::new_v4().simple()));
        let key = DevKeys::new(&dir).load_or_create().expect("test keys");
        Self { dir, key }
    }

    /// The environment that turns authentication on with these keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AUTH_MODE", "jwt".to_owned()),
            (
                "AUTH_JWKS_FILE",
                DevKeys::new(&self.dir).jwks_file().display().to_string(),
            ),
            ("AUTH_ISSUER", DEV_ISSUER.to_owned()),
            ("AUTH_AUDIENCE", DEV_AUDIENCE.to_owned()),
            ("AUTH_LEEWAY_SECONDS", TEST_LEEWAY_SECS.to_string()),
        ]
    }

    /// A valid token for `subject` with `scopes`, for ten minutes.
    pub fn token(&self, subject: &str, scopes: &str) -> String {
        self.key.token(subject, scopes, 600).expect("sign")
    }
}

impl Drop for TestKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `message` as a call carrying `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    with_authorization(message, &format!("Bearer {token}"))
}

/// `message` with a raw `authorization` value.
pub fn with_authorization<T>(message: T, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = value.parse().expect("ASCII authorization value");
    request.metadata_mut().insert("authorization", value);
    request
}
