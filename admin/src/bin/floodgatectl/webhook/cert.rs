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
    let write = |name: &str, text: &str| {
        let path = a.out_dir.join(name);
        std::fs::write(&path, text).map_err(|e| fail(&format!("{}: {e}", path.display())))?;
        Ok::<_, Failure>(path)
    };
    let cert_path = write("tls.crt", &cert)?;
    let key_path = write("tls.key", &key)?;
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
