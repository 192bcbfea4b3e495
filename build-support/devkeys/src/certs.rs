//! A development certificate authority and the certificates it signs, for
//! `just certs` and the TLS tests: one server certificate every service can
//! present (it names each service's host name, `localhost` and 127.0.0.1)
//! and one client certificate for the gateway's calls to the order
//! service. A real deployment takes its certificates from its own CA.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The names the server certificate is valid for.
pub const SERVER_NAMES: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "gateway",
    "order-service",
    "payment-service",
    "notification-service",
];

/// The files `write` makes in its directory.
pub struct CertFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl CertFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }
}

/// Makes a new CA, a server and a client certificate in `dir`, unless the
/// CA certificate is there already.
pub fn write(dir: &Path) -> anyhow::Result<CertFiles> {
    let files = CertFiles::in_dir(dir);
    if files.ca_cert.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = certificate_authority("oms development CA")?;
    let (server_cert, server_key) = leaf(&ca, "oms service", SERVER_NAMES, true)?;
    let (client_cert, client_key) = leaf(&ca, "gateway", &["gateway"], false)?;
    crate::write_private(&files.server_key, &server_key)?;
    crate::write_private(&files.client_key, &client_key)?;
    std::fs::write(&files.server_cert, server_cert)?;
    std::fs::write(&files.client_cert, client_cert)?;
    // Written last: its presence says the rest is complete.
    std::fs::write(&files.ca_cert, ca.pem())?;
    Ok(files)
}

/// A self-signed CA; its private key is never written, so nothing else can
/// ever be signed by it.
pub fn certificate_authority(name: &str) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

/// A certificate for `names` signed by `ca`, for a server or a client, and
/// its private key, both as PEM.
pub fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    common_name: &str,
    names: &[&str],
    server: bool,
) -> anyhow::Result<(String, String)> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}
