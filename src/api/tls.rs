//! The rustls configuration: built once per process and per (roots, ca_file), then shared by
//! every login the process runs (a display manager runs many).

use crate::config::Roots;
use once_cell::sync::Lazy;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where distributions keep their CA bundle. Read directly: the `SSL_CERT_*` variables of the
/// host process must not decide whom the module trusts.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

type Key = (Roots, Option<PathBuf>);
type Built = Vec<(Key, Arc<rustls::ClientConfig>)>;
static CONFIGS: Lazy<Mutex<Built>> = Lazy::new(|| Mutex::new(Vec::new()));

/// The client configuration for these trust settings. Errors say which file is wrong.
pub fn client_config(
    roots: Roots,
    ca_file: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let key = (roots, ca_file.map(Path::to_path_buf));
    let mut configs = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, cfg)) = configs.iter().find(|(k, _)| *k == key) {
        return Ok(cfg.clone());
    }
    let cfg = Arc::new(build(roots, ca_file)?);
    configs.push((key, cfg.clone()));
    Ok(cfg)
}

fn build(roots: Roots, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::Builtin => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::System => {
            let bundle = SYSTEM_BUNDLES
                .iter()
                .map(Path::new)
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    "no system CA bundle found (install ca-certificates, or set [api] roots = \"builtin\")"
                        .to_string()
                })?;
            add_pem(&mut store, bundle)?;
        }
        Roots::None => {}
    }
    if let Some(ca) = ca_file {
        let added = add_pem(&mut store, ca)?;
        if added == 0 {
            return Err(format!(
                "[api] ca_file {}: no certificate in it; give a PEM file",
                ca.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(cfg)
}

fn add_pem(store: &mut RootCertStore, path: &Path) -> Result<usize, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    Ok(added)
}
