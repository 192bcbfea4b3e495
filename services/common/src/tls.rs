//! TLS for the gRPC ports (rustls through tonic): a certificate for every
//! server, client certificates required where `TLS_CLIENT_CA_FILE` says so
//! (mutual TLS), and the gateway's client side towards the order service.

use std::path::PathBuf;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{ConfigError, var};

/// A server's TLS settings: `TLS_CERT_FILE` and `TLS_KEY_FILE` (PEM), and
/// with `TLS_CLIENT_CA_FILE` every client must present a certificate that
/// CA signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

/// A TLS file that cannot be used. Start-up fails with it.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct TlsFileError {
    path: String,
    source: std::io::Error,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        path: path.display().to_string(),
        source,
    })
}

impl ServerTls {
    /// `None` when `TLS_CERT_FILE` is unset: the port serves plaintext.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let (cert, key) = (var("TLS_CERT_FILE"), var("TLS_KEY_FILE"));
        let client_ca_file = var("TLS_CLIENT_CA_FILE").map(PathBuf::from);
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert_file: cert.into(),
                key_file: key.into(),
                client_ca_file,
            })),
            (None, None) if client_ca_file.is_none() => Ok(None),
            (None, None) => Err(ConfigError::new(
                "TLS_CLIENT_CA_FILE",
                "",
                "needs TLS_CERT_FILE and TLS_KEY_FILE: client certificates are asked for over TLS",
            )),
            (Some(_), None) => Err(ConfigError::new(
                "TLS_KEY_FILE",
                "",
                "required with TLS_CERT_FILE",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "TLS_CERT_FILE",
                "",
                "required with TLS_KEY_FILE",
            )),
        }
    }

    /// Reads the files into tonic's configuration.
    pub fn load(&self) -> Result<ServerTlsConfig, TlsFileError> {
        let identity = Identity::from_pem(read(&self.cert_file)?, read(&self.key_file)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

/// How a client reaches a TLS server: the CA that signed its certificate,
/// the name to check it against, and a certificate of its own for servers
/// that ask for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: PathBuf,
    /// The name the server's certificate must carry; instances are reached
    /// by address, so the URL's host is not it.
    pub server_name: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    /// From `{prefix}_CA_FILE` (which turns TLS on), `{prefix}_TLS_NAME`,
    /// `{prefix}_CERT_FILE` and `{prefix}_KEY_FILE`.
    pub fn from_env(prefix: &str) -> Result<Option<Self>, ConfigError> {
        let name = |suffix: &str| format!("{prefix}_{suffix}");
        let Some(ca_file) = var(&name("CA_FILE")) else {
            for suffix in ["CERT_FILE", "KEY_FILE", "TLS_NAME"] {
                if var(&name(suffix)).is_some() {
                    return Err(ConfigError::new(
                        &name(suffix),
                        "",
                        format_args!("needs {} to turn TLS on", name("CA_FILE")),
                    ));
                }
            }
            return Ok(None);
        };
        let (cert, key) = (var(&name("CERT_FILE")), var(&name("KEY_FILE")));
        if cert.is_some() != key.is_some() {
            return Err(ConfigError::new(
                &name("CERT_FILE"),
                "",
                format_args!("{} and {} go together", name("CERT_FILE"), name("KEY_FILE")),
            ));
        }
        Ok(Some(Self {
            ca_file: ca_file.into(),
            server_name: var(&name("TLS_NAME")),
            cert_file: cert.map(PathBuf::from),
            key_file: key.map(PathBuf::from),
        }))
    }

    pub fn load(&self) -> Result<ClientTlsConfig, TlsFileError> {
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca_file)?));
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(config)
    }
}
