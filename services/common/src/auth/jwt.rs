//! Verifies bearer JWTs with the issuer's public keys.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::caller::Scopes;
use super::config::JwtSettings;

/// Why a key set cannot be used. Start-up fails with it.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("cannot read the key set {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a JSON Web Key Set: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error(
        "{path} holds no usable key: every key needs a `kid` and must be an ES256 (P-256) or EdDSA (Ed25519) public key"
    )]
    NoUsableKey { path: String },
    #[error("{path} has two keys with kid {kid:?}: a token could not say which one signed it")]
    DuplicateKeyId { path: String, kid: String },
}

/// A key set as written, each key kept raw: one key we cannot read must not
/// stop the others from being used.
#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

/// The verified identity a token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub scopes: Scopes,
}

/// Why a token was refused. Logged, never told to the caller: it hears
/// "invalid token" whatever failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unreadable header: {0}")]
    Header(jsonwebtoken::errors::Error),
    #[error("no `kid` in the header")]
    MissingKeyId,
    #[error("unknown `kid` {0:?}")]
    UnknownKeyId(String),
    #[error("algorithm {found:?} does not match key {kid:?} ({expected:?})")]
    WrongAlgorithm {
        kid: String,
        found: Algorithm,
        expected: Algorithm,
    },
    #[error("{0}")]
    Rejected(jsonwebtoken::errors::Error),
    #[error("empty `sub`")]
    EmptySubject,
}

struct VerificationKey {
    key: DecodingKey,
    validation: Validation,
}

/// The keys of one issuer, by `kid`, each bound to its one algorithm: a
/// token cannot pick how it is checked.
pub struct JwtVerifier {
    keys: HashMap<String, VerificationKey>,
    leeway_secs: u64,
    /// Tokens verified already, by their exact text, until they expire: a
    /// client sends one token for many calls, and a signature check costs
    /// far more than the call.
    verified: Mutex<HashMap<String, Verified>>,
}

struct Verified {
    identity: Identity,
    /// Unix seconds past which the token is no longer accepted (its `exp`
    /// plus the leeway).
    valid_until: u64,
}

/// Tokens remembered at most; past it the expired ones are dropped, and if
/// that is not enough, all of them.
const MAX_VERIFIED_TOKENS: usize = 10_000;

/// The claims we read. `sub` is the customer; `scope` is RFC 9068's
/// space-separated list.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: String,
    exp: u64,
}

impl JwtVerifier {
    pub fn from_settings(settings: &JwtSettings) -> Result<Self, KeySetError> {
        let path = settings.jwks_file.display().to_string();
        let text =
            std::fs::read_to_string(&settings.jwks_file).map_err(|source| KeySetError::Read {
                path: path.clone(),
                source,
            })?;
        Self::from_jwks_json(&text, settings, &path)
    }

    fn from_jwks_json(text: &str, settings: &JwtSettings, path: &str) -> Result<Self, KeySetError> {
        let set: RawKeySet = serde_json::from_str(text).map_err(|source| KeySetError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut keys = HashMap::new();
        for raw in set.keys {
            let kid = raw.get("kid").cloned();
            // Identity providers publish RSA keys, encryption keys and
            // curves we do not take; we never accept them, but they need
            // not stop the service.
            let Some((kid, algorithm, key)) = serde_json::from_value::<Jwk>(raw)
                .ok()
                .as_ref()
                .and_then(usable_key)
            else {
                tracing::warn!(
                    ?kid,
                    "ignoring a key that is not an ES256 or EdDSA signing key with a kid"
                );
                continue;
            };
            if keys.contains_key(&kid) {
                return Err(KeySetError::DuplicateKeyId {
                    path: path.to_owned(),
                    kid,
                });
            }
            let validation = validation(algorithm, settings);
            keys.insert(kid, VerificationKey { key, validation });
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey {
                path: path.to_owned(),
            });
        }
        tracing::info!(
            keys = keys.len(),
            key_set = path,
            "token verification keys loaded"
        );
        Ok(Self {
            keys,
            leeway_secs: settings.leeway.as_secs(),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies a compact JWS and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let now = unix_now();
        {
            let mut verified = self.lock_verified();
            match verified.get(token) {
                Some(known) if now <= known.valid_until => return Ok(known.identity.clone()),
                Some(_) => {
                    verified.remove(token);
                }
                None => {}
            }
        }
        let (identity, exp) = self.check(token)?;
        let mut verified = self.lock_verified();
        if verified.len() >= MAX_VERIFIED_TOKENS {
            verified.retain(|_, known| now <= known.valid_until);
            if verified.len() >= MAX_VERIFIED_TOKENS {
                verified.clear();
            }
        }
        let valid_until = exp.saturating_add(self.leeway_secs);
        verified.insert(
            token.to_owned(),
            Verified {
                identity: identity.clone(),
                valid_until,
            },
        );
        Ok(identity)
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, Verified>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks the token's signature and claims; returns who it names and
    /// its `exp`.
    fn check(&self, token: &str) -> Result<(Identity, u64), TokenError> {
        // `alg: none` and algorithms we do not know fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(TokenError::Header)?;
        let kid = header.kid.ok_or(TokenError::MissingKeyId)?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| TokenError::UnknownKeyId(kid.clone()))?;
        let expected = key.validation.algorithms[0];
        if header.alg != expected {
            return Err(TokenError::WrongAlgorithm {
                kid,
                found: header.alg,
                expected,
            });
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(TokenError::Rejected)?
            .claims;
        if claims.sub.is_empty() {
            return Err(TokenError::EmptySubject);
        }
        let identity = Identity {
            subject: claims.sub,
            scopes: Scopes::parse(&claims.scope),
        };
        Ok((identity, claims.exp))
    }
}

/// The key's id, its one algorithm and its decoding key, when it is a
/// public key we accept.
fn usable_key(jwk: &Jwk) -> Option<(String, Algorithm, DecodingKey)> {
    let kid = jwk.common.key_id.clone().filter(|kid| !kid.is_empty())?;
    // A key meant for something else than verifying signatures is not ours.
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|key_use| *key_use != PublicKeyUse::Signature)
    {
        return None;
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|operations| !operations.contains(&KeyOperations::Verify))
    {
        return None;
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    // A key that names an algorithm must name its own.
    let declared = jwk.common.key_algorithm;
    let consistent = match declared {
        None => true,
        Some(KeyAlgorithm::ES256) => algorithm == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => algorithm == Algorithm::EdDSA,
        Some(_) => false,
    };
    if !consistent {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, algorithm, key))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn validation(algorithm: Algorithm, settings: &JwtSettings) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.leeway = settings.leeway.as_secs();
    validation
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_devkeys::SigningKey;

    fn settings() -> JwtSettings {
        JwtSettings {
            jwks_file: "unused".into(),
            issuer: "issuer".into(),
            audience: "audience".into(),
            leeway: std::time::Duration::from_secs(0),
        }
    }

    #[test]
    fn a_key_set_without_an_accepted_key_is_refused() {
        // An RSA key and an EC key without a kid: neither may verify.
        let jwks = r#"{"keys":[
            {"kty":"RSA","kid":"r","n":"sXch","e":"AQAB"},
            {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let refused = JwtVerifier::from_jwks_json(jwks, &settings(), "test");
        assert!(matches!(refused, Err(KeySetError::NoUsableKey { .. })));
    }

    #[test]
    fn an_ec_key_with_a_kid_is_accepted_and_bound_to_es256() {
        let jwks = r#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let verifier = JwtVerifier::from_jwks_json(jwks, &settings(), "test").unwrap();
        assert_eq!(
            verifier.keys["k1"].validation.algorithms,
            vec![Algorithm::ES256]
        );
    }

    /// One key set holding the public halves of `keys`.
    fn key_set(keys: &[&SigningKey]) -> String {
        let all: Vec<serde_json::Value> = keys
            .iter()
            .flat_map(|key| {
                let set: serde_json::Value = serde_json::from_str(&key.jwks).unwrap();
                set["keys"].as_array().unwrap().clone()
            })
            .collect();
        serde_json::json!({ "keys": all }).to_string()
    }

    fn dev_settings() -> JwtSettings {
        JwtSettings {
            issuer: oms_devkeys::DEV_ISSUER.into(),
            audience: oms_devkeys::DEV_AUDIENCE.into(),
            ..settings()
        }
    }

    #[test]
    fn es256_and_eddsa_tokens_verify_and_name_their_subject_and_scopes() {
        let ec = SigningKey::generate("ec").unwrap();
        let ed = SigningKey::generate_ed25519("ed").unwrap();
        let verifier =
            JwtVerifier::from_jwks_json(&key_set(&[&ec, &ed]), &dev_settings(), "test").unwrap();
        for key in [&ec, &ed] {
            let token = key.token("alice", "orders:read", 60).unwrap();
            let identity = verifier.verify(&token).unwrap();
            assert_eq!(identity.subject, "alice");
            assert!(identity.scopes.read && !identity.scopes.write);
        }
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_changed_one_is_checked_again() {
        let key = SigningKey::generate("ec").unwrap();
        let verifier =
            JwtVerifier::from_jwks_json(&key_set(&[&key]), &dev_settings(), "t").unwrap();
        let token = key.token("alice", "orders:read", 1).unwrap();
        assert!(verifier.verify(&token).is_ok());
        assert!(verifier.verify(&token).is_ok(), "remembered");
        // The signature changed: not the remembered token.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let forged = format!("{signed}.{}", signature.chars().rev().collect::<String>());
        assert!(verifier.verify(&forged).is_err());
        // Past `exp` (leeway 0 here) the remembered token is refused too.
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(matches!(
            verifier.verify(&token),
            Err(TokenError::Rejected(_))
        ));
    }

    #[test]
    fn a_token_cannot_choose_another_algorithm_than_its_keys() {
        let ec = SigningKey::generate("shared").unwrap();
        let ed = SigningKey::generate_ed25519("shared").unwrap();
        let verifier =
            JwtVerifier::from_jwks_json(&key_set(&[&ec]), &dev_settings(), "test").unwrap();
        // Signed with EdDSA, naming the ES256 key's id.
        let token = ed.token("alice", "orders:read", 60).unwrap();
        assert!(matches!(
            verifier.verify(&token),
            Err(TokenError::WrongAlgorithm { .. })
        ));
    }

    #[test]
    fn two_keys_with_one_kid_are_refused() {
        let first = SigningKey::generate("same").unwrap();
        let second = SigningKey::generate("same").unwrap();
        let refused =
            JwtVerifier::from_jwks_json(&key_set(&[&first, &second]), &dev_settings(), "t");
        assert!(matches!(refused, Err(KeySetError::DuplicateKeyId { .. })));
    }

    #[test]
    fn keys_we_do_not_take_are_skipped_without_stopping_the_others() {
        let ec = SigningKey::generate("ec").unwrap();
        let mut set: serde_json::Value = serde_json::from_str(&key_set(&[&ec])).unwrap();
        let keys = set["keys"].as_array_mut().unwrap();
        let mut for_encryption = keys[0].clone();
        for_encryption["kid"] = "enc".into();
        for_encryption["use"] = "enc".into();
        keys.push(for_encryption);
        keys.push(
            serde_json::json!({"kty": "EC", "crv": "secp256k1", "kid": "k", "x": "AA", "y": "AA"}),
        );
        keys.push(serde_json::json!({"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AA"}));
        let verifier = JwtVerifier::from_jwks_json(&set.to_string(), &dev_settings(), "t").unwrap();
        assert_eq!(verifier.keys.len(), 1);
        assert!(verifier.keys.contains_key("ec"));
    }

    #[test]
    fn a_key_declaring_another_algorithm_than_its_own_is_ignored() {
        let jwks = r#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"k1","alg":"HS256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        assert!(JwtVerifier::from_jwks_json(jwks, &settings(), "test").is_err());
    }
}
