//! The rustls configuration: built once per process and per (roots, ca_file), then shared by
//! every login the process runs (a display manager runs many).

use crate::cache::AnchorCache;
use crate::config::Roots;
use base64::Engine as _;
use once_cell::sync::Lazy;
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
/// `cache_dir` (the root-only cache folder) keeps the system bundle's decoded anchors between
/// processes.
pub fn client_config(
    roots: Roots,
    ca_file: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let key = (roots, ca_file.map(Path::to_path_buf));
    let mut configs = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, cfg)) = configs.iter().find(|(k, _)| *k == key) {
        return Ok(cfg.clone());
    }
    let cfg = Arc::new(build(roots, ca_file, cache_dir)?);
    configs.push((key, cfg.clone()));
    Ok(cfg)
}

fn build(
    roots: Roots,
    ca_file: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Result<rustls::ClientConfig, String> {
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
            let cache = cache_dir.and_then(|d| AnchorCache::new(d, bundle));
            match cache.as_ref().and_then(AnchorCache::load) {
                Some(anchors) => store.roots = anchors,
                None => {
                    add_pem(&mut store, bundle)?;
                    if let Some(c) = &cache {
                        c.store(&store.roots);
                    }
                }
            }
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
    let certs = read_pem_certificates(path)?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    Ok(added)
}

/// Debian's bundle is about 220 KB; this only stops a runaway file.
const MAX_PEM_FILE: u64 = 16 * 1024 * 1024;
const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The `CERTIFICATE` sections of a PEM file, in order; other sections are skipped.
///
/// Trust anchors are public, so this decodes with the fast (not constant-time) base64 decoder:
/// `rustls-pki-types`' constant-time decoder, meant for private keys, spent about 6 M
/// instructions (two thirds of a login) on Debian's 146-certificate bundle.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use std::io::Read;
    let fail =
        |e: &dyn std::fmt::Display| format!("{}: cannot read certificates: {e}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE).read_to_string(&mut text))
        .map_err(|e| fail(&e))?;
    let mut certs = Vec::new();
    let mut b64 = String::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if !inside {
            inside = line == BEGIN;
            b64.clear();
        } else if line == END {
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| fail(&format_args!("bad base64 in a certificate ({e})")))?;
            certs.push(CertificateDer::from(der));
            inside = false;
        } else if line.starts_with("-----") {
            return Err(fail(&"a certificate section has no END line"));
        } else {
            b64.push_str(line);
        }
    }
    if inside {
        return Err(fail(&"a certificate section has no END line"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn reads_the_same_certificates_as_rustls() {
        let bundle = system_bundle();
        let ours = read_pem_certificates(bundle).unwrap();
        let theirs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(bundle)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!ours.is_empty());
        assert_eq!(ours, theirs);
    }

    /// tests/setup.sh installs ca-certificates.
    fn system_bundle() -> &'static Path {
        SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .expect("a system CA bundle (apt-get install ca-certificates)")
    }

    #[test]
    fn the_anchor_cache_gives_back_what_the_bundle_gives() {
        let bundle = system_bundle();
        let mut parsed = RootCertStore::empty();
        assert!(add_pem(&mut parsed, bundle).unwrap() > 50);
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache");
        let cache = AnchorCache::new(&cache_dir, bundle).unwrap();
        assert!(cache.load().is_none());
        // build() fills the cache on a miss and reads it on a hit.
        build(Roots::System, None, Some(&cache_dir)).unwrap();
        assert_eq!(cache.load().unwrap(), parsed.roots);
        build(Roots::System, None, Some(&cache_dir)).unwrap();
        // Another bundle (here: another path) has another identity: no hit.
        let copy = dir.path().join("bundle.pem");
        std::fs::copy(bundle, &copy).unwrap();
        assert!(AnchorCache::new(&cache_dir, &copy)
            .unwrap()
            .load()
            .is_none());
        // A cut file is refused, not half-read.
        let file = cache_dir.join("anchors-system.bin");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        assert!(cache.load().is_none());
    }

    #[test]
    fn skips_other_sections_and_refuses_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pem");
        std::fs::write(
            &p,
            "junk\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(read_pem_certificates(&p).unwrap().is_empty());
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read_pem_certificates(&p).is_err());
        std::fs::write(&p, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        assert!(read_pem_certificates(&p).is_err());
        assert!(read_pem_certificates(&dir.path().join("missing")).is_err());
    }
}
