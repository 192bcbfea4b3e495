//! `AUTH_*` settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{ConfigError, parse_in_range, var};

use super::limits::RateLimitConfig;

/// Who is checked, and how often each caller may call.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub limits: RateLimitConfig,
}

#[derive(Debug, Clone)]
pub enum AuthMode {
    Disabled,
    Jwt(JwtSettings),
}

/// What a token must satisfy, and where the public keys are.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// A JSON Web Key Set (RFC 7517) holding the issuer's public keys.
    pub jwks_file: PathBuf,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must name.
    pub audience: String,
    /// Clock difference tolerated when checking `exp` and `nbf`.
    pub leeway: Duration,
}

impl AuthConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            mode: AuthMode::from_env()?,
            limits: RateLimitConfig::from_env()?,
        })
    }

    /// Nobody checked and no limits: for tests about other things.
    pub fn disabled() -> Self {
        Self {
            mode: AuthMode::Disabled,
            limits: RateLimitConfig::UNLIMITED,
        }
    }
}

impl AuthMode {
    /// `AUTH_MODE` is `jwt` unless set to `disabled`; `jwt` needs
    /// `AUTH_JWKS_FILE`, `AUTH_ISSUER` and `AUTH_AUDIENCE`, and there are no
    /// defaults for them: a guessed issuer would accept the wrong tokens.
    fn from_env() -> Result<Self, ConfigError> {
        let mode = var("AUTH_MODE").unwrap_or_else(|| "jwt".into());
        match mode.trim() {
            "disabled" => Ok(Self::Disabled),
            "jwt" => Ok(Self::Jwt(JwtSettings {
                jwks_file: required("AUTH_JWKS_FILE")?.into(),
                issuer: required("AUTH_ISSUER")?,
                audience: required("AUTH_AUDIENCE")?,
                leeway: Duration::from_secs(parse_in_range("AUTH_LEEWAY_SECONDS", 30, 0..=300)?),
            })),
            _ => Err(ConfigError::new(
                "AUTH_MODE",
                &mode,
                "expected `jwt` or `disabled`",
            )),
        }
    }
}

fn required(name: &str) -> Result<String, ConfigError> {
    var(name).ok_or_else(|| {
        ConfigError::new(
            name,
            "",
            "required with AUTH_MODE=jwt (set AUTH_MODE=disabled for local experiments without tokens)",
        )
    })
}
