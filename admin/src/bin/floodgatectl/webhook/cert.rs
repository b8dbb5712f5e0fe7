//! `floodgatectl inject serve-cert`: a self-signed certificate and key for the webhook's
//! Service names, for clusters without cert-manager, and the caBundle that the
//! MutatingWebhookConfiguration must carry to trust it.

use base64::Engine as _;

use crate::args::ServeCertArgs;
use crate::client::Failure;

/// Writes `tls.crt` and `tls.key` in `--out-dir`; returns the caBundle line for stdout.
pub(crate) fn serve_cert(a: &ServeCertArgs) -> Result<String, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure(2, format!("inject serve-cert: {e}"));
    let mut names = vec![
        format!("{}.{}.svc", a.service, a.namespace),
        format!("{}.{}.svc.cluster.local", a.service, a.namespace),
    ];
    names.extend(a.extra_name.iter().cloned());
    let pair = rcgen::generate_simple_self_signed(names.clone()).map_err(|e| fail(&e))?;
    let (cert, key) = (pair.cert.pem(), pair.signing_key.serialize_pem());
    std::fs::create_dir_all(&a.out_dir)
        .map_err(|e| fail(&format!("{}: {e}", a.out_dir.display())))?;
    // The key readable by its owner only; the certificate is public. Written fresh (new
    // file, then renamed over the old one) so no reader sees half of either.
    let write = |name: &str, text: &str, mode: u32| {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = a.out_dir.join(name);
        let tmp = a.out_dir.join(format!(".{name}.tmp"));
        let err = |e: std::io::Error| fail(&format!("{}: {e}", path.display()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok::<_, Failure>(path)
    };
    let key_path = write("tls.key", &key, 0o600)?;
    let cert_path = write("tls.crt", &cert, 0o644)?;
    eprintln!(
        "floodgatectl inject serve-cert: wrote {} and {} for {}; the caBundle (stdout) goes in \
         the MutatingWebhookConfiguration's webhooks[].clientConfig.caBundle",
        cert_path.display(),
        key_path.display(),
        names.join(", ")
    );
    Ok(format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(cert.as_bytes())
    ))
}
