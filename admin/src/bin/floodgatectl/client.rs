//! The connection to a sidecar's admin plane: the channel (plain or TLS), the bearer token,
//! per-call deadlines, and [`Failure`], the error with the exit code scripts rely on.

use std::time::Duration;

use floodgate_admin::pb::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::args::Global;

/// A failure with the exit code scripts rely on.
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        let code = match s.code() {
            Unauthenticated | PermissionDenied => 4,
            InvalidArgument | NotFound | FailedPrecondition => 5,
            Unavailable | DeadlineExceeded => 3,
            _ => 1,
        };
        let what = match s.code() {
            Unauthenticated => "not authenticated",
            PermissionDenied => "not allowed",
            InvalidArgument => "invalid argument",
            NotFound => "not found",
            Unavailable => "sidecar unreachable",
            _ => "refused",
        };
        Failure(code, format!("{what}: {}", s.message()))
    }
}

pub(crate) async fn connect(g: &Global) -> Result<AdminClient<Channel>, Failure> {
    let scheme = if g.ca_file.is_some() { "https" } else { "http" };
    let url = if g.addr.contains("://") {
        g.addr.clone()
    } else {
        format!("{scheme}://{}", g.addr)
    };
    let mut endpoint = Channel::from_shared(url.clone())
        .map_err(|e| Failure(2, format!("--addr `{}` is not an address: {e}", g.addr)))?
        .connect_timeout(Duration::from_secs(3));
    if let Some(ca) = &g.ca_file {
        let read = |f: &str, flag: &str| {
            std::fs::read(f).map_err(|e| Failure(2, format!("{flag} `{f}` cannot be read: {e}")))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read(ca, "--ca-file")?),
        );
        if let (Some(c), Some(k)) = (&g.cert_file, &g.key_file) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read(c, "--cert-file")?,
                read(k, "--key-file")?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure(2, format!("TLS settings refused: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        Failure(
            3,
            format!(
                "cannot reach the sidecar's admin plane at {url}: {e} (is admin.listen set, and is --addr right?)"
            ),
        )
    })?;
    Ok(AdminClient::new(channel))
}

pub(crate) fn token(g: &Global) -> Result<Option<String>, Failure> {
    if let Ok(t) = std::env::var("FLOODGATE_TOKEN") {
        return Ok(Some(t.trim().to_string()));
    }
    let Some(file) = &g.token_file else {
        return Ok(None);
    };
    let t = std::fs::read_to_string(file)
        .map_err(|e| Failure(2, format!("--token-file `{file}` cannot be read: {e}")))?;
    Ok(Some(t.trim().to_string()))
}

/// A unary call: answered within 10 s or failed.
pub(crate) fn request<T>(msg: T, token: &Option<String>) -> Result<tonic::Request<T>, Failure> {
    let mut r = stream_request(msg, token)?;
    r.set_timeout(Duration::from_secs(10));
    Ok(r)
}

/// A streaming call: open until interrupted.
pub(crate) fn stream_request<T>(
    msg: T,
    token: &Option<String>,
) -> Result<tonic::Request<T>, Failure> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        let v = format!("Bearer {t}")
            .parse()
            .map_err(|_| Failure(2, "the token holds characters a header cannot carry".into()))?;
        r.metadata_mut().insert("authorization", v);
    }
    Ok(r)
}
