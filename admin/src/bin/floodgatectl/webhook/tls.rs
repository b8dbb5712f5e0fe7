//! The webhook's certificate: read from PEM files, handed to every TLS handshake, and read
//! again when the files change (cert-manager renews the Secret; the kubelet swaps the
//! mounted files), so a renewal needs no restart. A bad new pair is logged and the old one
//! kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use notify::{RecursiveMode, Watcher};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate pair could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    /// A file could not be read or holds no PEM of the right kind.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The pair is not usable together.
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    /// The files cannot be watched for changes.
    #[error("cannot watch the certificate files: {0}")]
    Watch(#[from] notify::Error),
}

/// Reads and checks the pair.
fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, CertError> {
    let bad = |path: &Path, why: String| CertError::File {
        path: path.to_path_buf(),
        why,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no CERTIFICATE in it".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let signing = provider.key_provider.load_private_key(der)?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match()?;
    Ok(pair)
}

/// The current pair, for rustls.
#[derive(Debug)]
pub(crate) struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

/// The pair, loaded now (an error here stops the start), and the watcher that keeps it
/// current (keep it alive as long as the server).
pub(crate) fn watch(
    cert: &Path,
    key: &Path,
    provider: Arc<CryptoProvider>,
    on_reload: impl Fn(Result<(), String>) + Send + 'static,
) -> Result<(Arc<Reloading>, notify::RecommendedWatcher), CertError> {
    let first = load(cert, key, &provider)?;
    let resolver = Arc::new(Reloading {
        current: RwLock::new(Arc::new(first)),
    });
    let (c, k, r) = (cert.to_path_buf(), key.to_path_buf(), Arc::clone(&resolver));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if !is_change(&event) {
            return;
        }
        // Any change in the directories: a Secret volume swaps a `..data` symlink, so the
        // files' own names need not appear in the event.
        let result = load(&c, &k, &provider).map(|pair| {
            if let Ok(mut current) = r.current.write() {
                if current.cert != pair.cert {
                    *current = Arc::new(pair);
                    return true;
                }
            }
            false
        });
        match result {
            Ok(true) => on_reload(Ok(())),
            Ok(false) => {}
            Err(e) => on_reload(Err(e.to_string())),
        }
    })?;
    let mut dirs: Vec<PathBuf> = [cert, key]
        .iter()
        .map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    dirs.dedup();
    for d in dirs {
        watcher.watch(&d, RecursiveMode::NonRecursive)?;
    }
    Ok((resolver, watcher))
}

/// Whether a watcher's event may mean new files. Reading the pair opens the files, which is
/// itself an event (an access): only a change may lead to a load, or each load would trigger
/// the next, for ever.
fn is_change(event: &notify::Result<notify::Event>) -> bool {
    matches!(event, Ok(e) if !matches!(e.kind, notify::EventKind::Access(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    use notify::{Event, EventKind};

    #[test]
    fn opening_the_files_to_load_them_is_not_a_change() {
        let e = |kind| Ok(Event::new(kind));
        assert!(!is_change(&e(EventKind::Access(AccessKind::Open(
            AccessMode::Read
        )))));
        assert!(!is_change(&e(EventKind::Access(AccessKind::Close(
            AccessMode::Read
        )))));
        assert!(is_change(&e(EventKind::Modify(ModifyKind::Any))));
        assert!(is_change(&e(EventKind::Create(CreateKind::File))));
        assert!(!is_change(&Err(notify::Error::generic("gone"))));
    }
}
