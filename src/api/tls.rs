//! The rustls configuration: built once per process and per trust settings, then shared by
//! every login the process runs (a display manager runs many, the agent all of them), until a
//! file it was built from changes or the agent is told to reload (SIGHUP).

use crate::cache::{AnchorCache, FileId};
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

/// A configuration and what it was built from: the settings, and the identity of each file read
/// (the system bundle, then `ca_file`) as it was just before the build.
struct Built {
    roots: Roots,
    ca_file: Option<PathBuf>,
    files: Files,
    config: Arc<rustls::ClientConfig>,
}

type Files = [Option<(PathBuf, FileId)>; 2];

static CONFIGS: Lazy<Mutex<Vec<Built>>> = Lazy::new(|| Mutex::new(Vec::new()));

/// The files a configuration for these settings reads, as they are now. Taken before reading
/// them: a file changed during the build only makes the next call build again.
fn files_now(roots: Roots, ca_file: Option<&Path>) -> Files {
    let bundle = (roots == Roots::System)
        .then(system_bundle)
        .flatten()
        // The bundle may be a link (RHEL): its target is what counts.
        .and_then(|p| Some((p.to_path_buf(), FileId::of(&std::fs::metadata(p).ok()?))));
    let ca = ca_file.and_then(|p| {
        Some((
            p.to_path_buf(),
            FileId::of(&std::fs::symlink_metadata(p).ok()?),
        ))
    });
    [bundle, ca]
}

fn system_bundle() -> Option<&'static Path> {
    SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file())
}

/// The client configuration for these trust settings. Errors say which file is wrong. The same
/// `Arc` comes back until a file it was built from changes: a holder of connections made with
/// an older one (the agent) knows them verified with the old anchors.
/// `cache_dir` (the root-only cache folder) keeps the system bundle's decoded anchors between
/// processes. A changed `ca_file` or system bundle (replaced, rewritten, chmod-ed) gets a new
/// configuration: the anchors and the checks on the file are never older than the file.
pub fn client_config(
    roots: Roots,
    ca_file: Option<&Path>,
    cache_dir: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let files = files_now(roots, ca_file);
    let mut configs = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    let same = |b: &Built| b.roots == roots && b.ca_file.as_deref() == ca_file;
    if let Some(b) = configs.iter().find(|b| same(b) && b.files == files) {
        return Ok(b.config.clone());
    }
    let config = Arc::new(build(roots, ca_file, cache_dir)?);
    // The old one for these settings goes, and any other whose files changed since (a
    // long-lived process, the agent, would otherwise keep one per CA file it ever saw).
    configs.retain(|b| !same(b) && files_now(b.roots, b.ca_file.as_deref()) == b.files);
    configs.push(Built {
        roots,
        ca_file: ca_file.map(Path::to_path_buf),
        files,
        config: config.clone(),
    });
    Ok(config)
}

/// Drops every configuration (the agent's SIGHUP): the next connection reads the CA files anew.
pub fn forget_trust() {
    CONFIGS.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
            const NO_BUNDLE: &str = "no system CA bundle found (install ca-certificates, or set [api] roots = \"builtin\")";
            let bundle = system_bundle().ok_or_else(|| NO_BUNDLE.to_string())?;
            let cache = cache_dir.and_then(|d| AnchorCache::new(d, bundle));
            match cache.as_ref().and_then(AnchorCache::load) {
                Some(anchors) => store.roots = anchors,
                None => {
                    add_pem(&mut store, bundle, &read_bundle(bundle)?)?;
                    if let Some(c) = &cache {
                        c.store(&store.roots);
                    }
                }
            }
        }
        Roots::None => {}
    }
    if let Some(ca) = ca_file {
        // The file decides whom the module trusts: it gets the config's own checks.
        let text = crate::config::read_trusted(ca, MAX_PEM_FILE)
            .map_err(|e| format!("[api] ca_file {e}"))?;
        let added = add_pem(&mut store, ca, &text)?;
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

fn add_pem(store: &mut RootCertStore, path: &Path, text: &str) -> Result<usize, String> {
    let certs = pem_certificates(path, text)?;
    let (added, _ignored) = store.add_parsable_certificates(certs);
    Ok(added)
}

/// Debian's bundle is about 220 KB; this only stops a runaway file.
const MAX_PEM_FILE: u64 = 16 * 1024 * 1024;
const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The distribution's bundle: its own package's file (it may be a link, as on RHEL).
fn read_bundle(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE).read_to_string(&mut text))
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?;
    Ok(text)
}

/// The `CERTIFICATE` sections of a PEM file's text, in order; other sections are skipped.
///
/// Trust anchors are public, so this decodes with the fast (not constant-time) base64 decoder:
/// `rustls-pki-types`' constant-time decoder, meant for private keys, spent about 6 M
/// instructions (two thirds of a login) on Debian's 146-certificate bundle.
fn pem_certificates(path: &Path, text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let fail =
        |e: &dyn std::fmt::Display| format!("{}: cannot read certificates: {e}", path.display());
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
        let bundle = bundle();
        let ours = read_pem_certificates(bundle).unwrap();
        let theirs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(bundle)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(!ours.is_empty());
        assert_eq!(ours, theirs);
    }

    /// tests/setup.sh installs ca-certificates.
    fn bundle() -> &'static Path {
        system_bundle().expect("a system CA bundle (apt-get install ca-certificates)")
    }

    fn read_pem_certificates(p: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
        pem_certificates(p, &read_bundle(p)?)
    }

    #[test]
    fn the_anchor_cache_gives_back_what_the_bundle_gives() {
        let bundle = bundle();
        let mut parsed = RootCertStore::empty();
        assert!(add_pem(&mut parsed, bundle, &read_bundle(bundle).unwrap()).unwrap() > 50);
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
