//! Development keys: an ES256 key pair whose public half is a JSON Web Key
//! Set the services verify with, and tokens signed with the private half.
//! For `just run`, `just token` and the tests; a real deployment takes its
//! key set from its identity provider and never holds a private key.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

// For tests that sign malformed or hostile tokens.
pub use jsonwebtoken::{
    Algorithm as TokenAlgorithm, EncodingKey as RawEncodingKey, Header as TokenHeader, encode,
};

/// The issuer and audience of development tokens; `just run` sets
/// `AUTH_ISSUER` and `AUTH_AUDIENCE` to them.
pub const DEV_ISSUER: &str = "oms-dev";
pub const DEV_AUDIENCE: &str = "oms";

/// What a customer may do by default: create and read its own orders.
pub const CUSTOMER_SCOPES: &str = "orders:read orders:write";

const PRIVATE_KEY_FILE: &str = "signing-key.pem";
const KEY_SET_FILE: &str = "jwks.json";
const KEY_ID_FILE: &str = "kid";

/// A private key that signs tokens, and the id its public key has in the
/// key set.
pub struct SigningKey {
    pub kid: String,
    key: EncodingKey,
    /// The key set holding the public half, as JSON.
    pub jwks: String,
}

impl SigningKey {
    /// A new P-256 key pair with id `kid`.
    pub fn generate(kid: &str) -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::from_pem(kid, &pair.serialize_pem())
    }

    fn from_pem(kid: &str, pem: &str) -> anyhow::Result<Self> {
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).context("not a P-256 private key")?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks = serde_json::to_string_pretty(&JwkSet { keys: vec![jwk] })?;
        Ok(Self {
            kid: kid.to_owned(),
            key,
            jwks,
        })
    }

    /// Signs `claims` as they are, with `header` (its `kid` set to ours
    /// unless the header names one).
    pub fn sign(&self, mut header: Header, claims: &Value) -> anyhow::Result<String> {
        if header.kid.is_none() {
            header.kid = Some(self.kid.clone());
        }
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }

    /// A token for `subject` with `scopes`, valid for `lifetime_secs`.
    pub fn token(&self, subject: &str, scopes: &str, lifetime_secs: u64) -> anyhow::Result<String> {
        let claims = claims(subject, scopes, lifetime_secs);
        self.sign(Header::new(Algorithm::ES256), &claims)
    }
}

/// Standard claims for a development token.
pub fn claims(subject: &str, scopes: &str, lifetime_secs: u64) -> Value {
    let now = unix_now();
    json!({
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": subject,
        "scope": scopes,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime_secs,
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The development key pair kept in a directory (`.dev/auth` for `just
/// run`), made on first use.
pub struct DevKeys {
    dir: PathBuf,
}

impl DevKeys {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn jwks_file(&self) -> PathBuf {
        self.dir.join(KEY_SET_FILE)
    }

    /// The signing key, made and written (private key readable by the
    /// owner only) if the directory has none yet.
    pub fn load_or_create(&self) -> anyhow::Result<SigningKey> {
        let pem_path = self.dir.join(PRIVATE_KEY_FILE);
        if pem_path.exists() {
            let pem = read(&pem_path)?;
            let kid = read(&self.dir.join(KEY_ID_FILE))?;
            return SigningKey::from_pem(kid.trim(), &pem);
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let kid = format!("dev-{}", unix_now());
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let pem = pair.serialize_pem();
        let key = SigningKey::from_pem(&kid, &pem)?;
        write_private(&pem_path, &pem)?;
        std::fs::write(self.dir.join(KEY_ID_FILE), &kid)?;
        std::fs::write(self.jwks_file(), &key.jwks)?;
        Ok(key)
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_made_once_are_loaded_again_with_the_same_public_key() {
        let dir = std::env::temp_dir().join(format!("oms-devkeys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let keys = DevKeys::new(&dir);
        let made = keys.load_or_create().unwrap();
        let loaded = keys.load_or_create().unwrap();
        assert_eq!(made.kid, loaded.kid);
        assert_eq!(made.jwks, loaded.jwks);
        assert_eq!(read(&keys.jwks_file()).unwrap(), made.jwks);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
