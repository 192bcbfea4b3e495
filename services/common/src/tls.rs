//! TLS for the gRPC ports (rustls through tonic): a certificate for every
//! server, client certificates required where `TLS_CLIENT_CA_FILE` says so
//! (mutual TLS), and the gateway's client side towards the order service.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

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

/// The longest a client may take to finish its TLS handshake: pending
/// handshakes hold memory, so a client that opens connections and never
/// completes one must not pile them up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings that cannot be used. Start-up fails with it, rather than
/// serving a port that refuses every handshake.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("the TLS settings cannot be used: {0}")]
    Unusable(String),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// A file of certificates, which must hold at least one: tonic skips what
/// it cannot parse, and a CA file of none would trust nobody.
fn read_certificates(path: &PathBuf) -> Result<Vec<u8>, TlsFileError> {
    let pem = read(path)?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(TlsFileError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(pem)
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

    /// Reads the files into tonic's configuration, and builds it once to
    /// find a key that does not match its certificate, or anything else
    /// rustls refuses, now.
    pub fn load(&self) -> Result<ServerTlsConfig, TlsFileError> {
        let identity =
            Identity::from_pem(read_certificates(&self.cert_file)?, read(&self.key_file)?);
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(Certificate::from_pem(read_certificates(ca)?));
        }
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|err| TlsFileError::Unusable(format!("{err:?}")))?;
        Ok(config)
    }
}

/// How a client reaches a TLS server: the CA that signed its certificate,
/// the name to check it against, and a certificate of its own for servers
/// that ask for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: PathBuf,
    /// The name the server's certificate must carry, when not the host name
    /// its address was resolved from.
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

    /// Reads the files, and builds a connection setting once to find
    /// anything rustls refuses now rather than at the first call.
    pub fn load(&self) -> Result<LoadedClientTls, TlsFileError> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_certificates(&self.ca_file)?));
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            config = config.identity(Identity::from_pem(read_certificates(cert)?, read(key)?));
        }
        let loaded = LoadedClientTls {
            config,
            server_name: self.server_name.clone(),
        };
        loaded.endpoint("https://localhost", "localhost")?;
        Ok(loaded)
    }
}

/// Client TLS settings read and checked, ready for any server.
#[derive(Debug, Clone)]
pub struct LoadedClientTls {
    config: ClientTlsConfig,
    server_name: Option<String>,
}

impl LoadedClientTls {
    /// The name a server reached through `host` must prove.
    pub fn server_name_for<'a>(&'a self, host: &'a str) -> &'a str {
        self.server_name.as_deref().unwrap_or(host)
    }

    /// An endpoint for `uri` over TLS. The server's certificate must name
    /// the configured server name, or else `host`: the host name the
    /// address came from, since the endpoint itself is an address.
    pub fn endpoint(&self, uri: &str, host: &str) -> Result<Endpoint, TlsFileError> {
        let name = self.server_name_for(host);
        Endpoint::from_shared(uri.to_owned())
            .and_then(|endpoint| endpoint.tls_config(self.config.clone().domain_name(name)))
            .map_err(|err| TlsFileError::Unusable(format!("{err:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificates() -> (PathBuf, oms_devkeys::certs::CertFiles) {
        let dir =
            std::env::temp_dir().join(format!("oms-tls-unit-{}", uuid::Uuid::new_v4().simple()));
        let files = oms_devkeys::certs::write(&dir).unwrap();
        (dir, files)
    }

    #[test]
    fn settings_rustls_would_refuse_stop_start_up() {
        let (dir, files) = certificates();
        let good = ServerTls {
            cert_file: files.server_cert.clone(),
            key_file: files.server_key.clone(),
            client_ca_file: Some(files.ca_cert.clone()),
        };
        assert!(good.load().is_ok());
        // The client's key with the server's certificate.
        let mismatched = ServerTls {
            key_file: files.client_key.clone(),
            ..good.clone()
        };
        assert!(matches!(mismatched.load(), Err(TlsFileError::Unusable(_))));
        // A CA file that holds no certificate would trust nobody.
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here").unwrap();
        let no_ca = ServerTls {
            client_ca_file: Some(empty.clone()),
            ..good
        };
        assert!(matches!(
            no_ca.load(),
            Err(TlsFileError::NoCertificate { .. })
        ));
        let client = ClientTls {
            ca_file: empty,
            server_name: None,
            cert_file: None,
            key_file: None,
        };
        assert!(matches!(
            client.load(),
            Err(TlsFileError::NoCertificate { .. })
        ));
        let client = ClientTls {
            ca_file: files.ca_cert.clone(),
            server_name: None,
            cert_file: Some(files.client_cert.clone()),
            key_file: Some(files.server_key.clone()),
        };
        assert!(matches!(client.load(), Err(TlsFileError::Unusable(_))));
        // The name checked is the URL's host unless one is configured.
        let mut named = ClientTls {
            ca_file: files.ca_cert.clone(),
            server_name: None,
            cert_file: None,
            key_file: None,
        };
        assert_eq!(
            named.load().unwrap().server_name_for("order-service"),
            "order-service"
        );
        named.server_name = Some("orders.internal".into());
        assert_eq!(
            named.load().unwrap().server_name_for("10.0.0.7"),
            "orders.internal"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
