//! Development keys: an ES256 key pair whose public half is a JSON Web Key
//! Set the services verify with, and tokens signed with the private half.
//! For `just run`, `just token` and the tests; a real deployment takes its
//! key set from its identity provider and never holds a private key.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub mod certs;

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
    pub algorithm: Algorithm,
    key: EncodingKey,
    /// The key set holding the public half, as JSON.
    pub jwks: String,
}

impl SigningKey {
    /// A new P-256 (ES256) key pair with id `kid`.
    pub fn generate(kid: &str) -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::from_pem(kid, &pair.serialize_pem(), Algorithm::ES256)
    }

    /// A new Ed25519 (EdDSA) key pair with id `kid`.
    pub fn generate_ed25519(kid: &str) -> anyhow::Result<Self> {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        Self::from_pem(kid, &pair.serialize_pem(), Algorithm::EdDSA)
    }

    fn from_pem(kid: &str, pem: &str, algorithm: Algorithm) -> anyhow::Result<Self> {
        let (key, key_algorithm) = match algorithm {
            Algorithm::EdDSA => (
                EncodingKey::from_ed_pem(pem.as_bytes()).context("not an Ed25519 private key")?,
                KeyAlgorithm::EdDSA,
            ),
            _ => (
                EncodingKey::from_ec_pem(pem.as_bytes()).context("not a P-256 private key")?,
                KeyAlgorithm::ES256,
            ),
        };
        let mut jwk = match algorithm {
            // jsonwebtoken derives EC public keys only; an Ed25519 public
            // key is just its 32 bytes (RFC 8037).
            Algorithm::EdDSA => Jwk {
                common: Default::default(),
                algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x: URL_SAFE_NO_PAD.encode(rcgen::KeyPair::from_pem(pem)?.public_key_raw()),
                }),
            },
            _ => Jwk::from_encoding_key(&key, algorithm)?,
        };
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.key_algorithm = Some(key_algorithm);
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks = serde_json::to_string_pretty(&JwkSet { keys: vec![jwk] })?;
        Ok(Self {
            kid: kid.to_owned(),
            algorithm,
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
        self.sign(Header::new(self.algorithm), &claims)
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
    /// owner only) if the directory has none yet. One process makes keys
    /// at a time (a lock file), and the private key, written last and
    /// renamed into place, marks a complete pair: nobody loads half of one,
    /// and of two processes starting at once the second loads the first's.
    /// (The directory may be a mount point, so it is not itself renamed.)
    pub fn load_or_create(&self) -> anyhow::Result<SigningKey> {
        if let Some(key) = self.load()? {
            return Ok(key);
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let lock = self.dir.join(".creating");
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                // Another process may have finished between our look and
                // the lock: its keys stand.
                let made = match self.load() {
                    Ok(Some(key)) => Ok(key),
                    _ => self.write_new(),
                };
                let _ = std::fs::remove_file(&lock);
                made
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                for _ in 0..100 {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    if let Some(key) = self.load()? {
                        return Ok(key);
                    }
                }
                anyhow::bail!(
                    "another process is making keys in {} (remove {} if none is)",
                    self.dir.display(),
                    lock.display()
                )
            }
            Err(err) => Err(err).with_context(|| format!("cannot create {}", lock.display())),
        }
    }

    fn load(&self) -> anyhow::Result<Option<SigningKey>> {
        let pem_path = self.dir.join(PRIVATE_KEY_FILE);
        if !pem_path.exists() {
            return Ok(None);
        }
        let pem = read(&pem_path)?;
        let kid = read(&self.dir.join(KEY_ID_FILE))?;
        SigningKey::from_pem(kid.trim(), &pem, Algorithm::ES256).map(Some)
    }

    fn write_new(&self) -> anyhow::Result<SigningKey> {
        let kid = format!("dev-{}", unix_now());
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let pem = pair.serialize_pem();
        let key = SigningKey::from_pem(&kid, &pem, Algorithm::ES256)?;
        std::fs::write(self.dir.join(KEY_ID_FILE), &kid)?;
        std::fs::write(self.jwks_file(), &key.jwks)?;
        let staged = self
            .dir
            .join(format!(".{PRIVATE_KEY_FILE}.{}", unix_nanos()));
        write_private(&staged, &pem)?;
        std::fs::rename(&staged, self.dir.join(PRIVATE_KEY_FILE))?;
        Ok(key)
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub(crate) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
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
