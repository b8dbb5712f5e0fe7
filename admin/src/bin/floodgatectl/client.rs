//! The connection to a sidecar's admin plane: the channel (plain or TLS), the bearer token,
//! per-call deadlines, and [`Failure`], the error with the exit code scripts rely on.

use std::time::Duration;

use floodgate_admin::pb::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::args::{Global, DEFAULT_ADDR};

/// A failure with the exit code scripts rely on.
pub(crate) struct Failure(pub(crate) u8, pub(crate) String);

/// Why a command stopped before its end.
pub(crate) enum Stop {
    /// A failure of our own making (arguments, files, output).
    Fail(Failure),
    /// The call failed; [`explain`] turns it into words once the address is at hand.
    Call(tonic::Status),
    /// Standard output was closed (`| head`): end quietly, as `ls | head` does.
    PipeClosed,
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Fail(f)
    }
}

impl From<tonic::Status> for Stop {
    fn from(s: tonic::Status) -> Self {
        Stop::Call(s)
    }
}

/// What an admin call's failure means, with its exit code. `addr` is --addr, named when the
/// peer turns out not to be an admin plane at all.
pub(crate) fn explain(s: &tonic::Status, addr: &str) -> Failure {
    use tonic::Code::*;
    if let Some(what) = not_an_admin_plane(s) {
        return Failure(
            3,
            format!(
                "{addr} answered but is not a Floodgate admin plane ({what}the admin port is \
                 admin.listen, default {DEFAULT_ADDR})"
            ),
        );
    }
    if s.code() == Unknown && s.message() == "transport error" {
        // The peer took the connection and closed it on the first call: an HTTP/1-only
        // server (the metrics port, say) does that to an HTTP/2 preface, and so does a
        // sidecar that stops mid-call. Both are "unreachable" to a script.
        return Failure(
            3,
            format!(
                "{addr} closed the connection: {} (is --addr the admin port? that is \
                 admin.listen, default {DEFAULT_ADDR})",
                innermost(s)
            ),
        );
    }
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

/// `Some(hint)` when the peer spoke HTTP but not Floodgate's admin gRPC. tonic reports these
/// only in words, so the words are what is matched.
fn not_an_admin_plane(s: &tonic::Status) -> Option<String> {
    // Only the data plane marks its own answers; the admin plane never does.
    if let Some(reason) = s.metadata().get("floodgate-reason") {
        let reason = reason.to_str().unwrap_or("?");
        return Some(format!(
            "it is a Floodgate proxy port: its answer says floodgate-reason: {reason}; "
        ));
    }
    let m = s.message();
    let http_not_grpc =
        // An HTTP body where a gRPC frame belongs (its first byte read as the flag).
        m.contains("invalid compression flag")
        // An HTTP answer with no gRPC status (a 404 page, say).
        || m.starts_with("grpc-status header missing")
        // Bytes that are not HTTP/2 frames: an HTTP/1 server answering the preface.
        || (s.code() == tonic::Code::Internal && m.starts_with("h2 protocol error"))
        // A gRPC server without floodgate.admin.v1.Admin.
        || s.code() == tonic::Code::Unimplemented;
    http_not_grpc.then(|| "is it the proxy port? ".to_string())
}

/// The root cause of `s`, in words: tonic's own message is often just "transport error".
fn innermost(s: &tonic::Status) -> String {
    let mut e: &dyn std::error::Error = s;
    while let Some(next) = e.source() {
        e = next;
    }
    e.to_string()
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

/// The bearer token. A --token-file given on the command line wins; then FLOODGATE_TOKEN,
/// the token itself (how CI secrets arrive); then FLOODGATE_TOKEN_FILE.
pub(crate) fn token(g: &Global, file_on_command_line: bool) -> Result<Option<String>, Failure> {
    if !file_on_command_line {
        if let Ok(t) = std::env::var("FLOODGATE_TOKEN") {
            if !t.trim().is_empty() {
                return Ok(Some(t.trim().to_string()));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(s: &tonic::Status) -> (u8, String) {
        let Failure(code, msg) = explain(s, "127.0.0.1:8080");
        (code, msg)
    }

    #[test]
    fn http_that_is_not_the_admin_plane_is_named_with_exit_3() {
        let mut proxy = tonic::Status::unavailable("upstream_timeout: ...");
        proxy
            .metadata_mut()
            .insert("floodgate-reason", "upstream_timeout".parse().unwrap());
        for s in [
            proxy,
            // What tonic says of an HTTP app's body ('h' = 104) and of a 404 page.
            tonic::Status::internal(
                "protocol error: received message with invalid compression flag: 104 (valid \
                 flags are 0 and 1) while receiving response with status: 200 OK",
            ),
            tonic::Status::unknown("grpc-status header missing, mapped from HTTP status code 404"),
            tonic::Status::internal("h2 protocol error: http2 error"),
            tonic::Status::unimplemented(""),
        ] {
            let (code, msg) = exit(&s);
            assert_eq!(code, 3, "{msg}");
            assert!(
                msg.starts_with("127.0.0.1:8080 answered but is not a Floodgate admin plane (")
                    && msg.ends_with("the admin port is admin.listen, default 127.0.0.1:9901)"),
                "{msg}"
            );
        }
    }

    #[test]
    fn the_admin_plane_own_answers_keep_their_codes() {
        assert_eq!(exit(&tonic::Status::unauthenticated("no token")).0, 4);
        assert_eq!(exit(&tonic::Status::not_found("no limit `x`")).0, 5);
        let (code, msg) = exit(&tonic::Status::unavailable("redis unreachable"));
        assert_eq!(
            (code, msg.as_str()),
            (3, "sidecar unreachable: redis unreachable")
        );
    }
}
