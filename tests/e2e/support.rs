//! Helpers for end-to-end tests: start the real `floodgate` binary on free loopback ports in
//! front of a real upstream, wait for conditions with deadlines, and talk raw HTTP.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floodgate::demo::{self, DemoStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real HTTP upstream (the demo server) running in the test's runtime.
pub struct Upstream {
    pub port: u16,
    pub stats: Arc<DemoStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(DemoStats::default());
        let (n, s) = (name.to_string(), stats.clone());
        let task = tokio::spawn(async move { demo::serve(listener, &n, s).await });
        Self { port, stats, task }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running `floodgate` process with its own config directory.
pub struct Sidecar {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// The minimal config around `upstream_port`, with `extra` YAML appended.
pub fn config_yaml(port: u16, metrics_port: u16, upstream_port: u16, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:{port}\nupstream:\n  address: 127.0.0.1:{upstream_port}\n  connect_timeout_ms: 500\n  read_timeout_ms: 2000\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\nserver:\n  drain_timeout_ms: 10000\n{extra}"
    )
}

impl Sidecar {
    /// Starts floodgate in front of `upstream_port` and waits until `/readyz` says ready.
    /// Tests run in parallel, so a port found free may be taken before floodgate binds it:
    /// that one case is retried with new ports.
    pub async fn start(upstream_port: u16, extra: &str) -> Self {
        Self::start_custom(|port, metrics_port| {
            config_yaml(port, metrics_port, upstream_port, extra)
        })
        .await
    }

    /// Like [`Sidecar::start`] with the whole config written by `yaml(port, metrics_port)`.
    pub async fn start_custom(yaml: impl Fn(u16, u16) -> String) -> Self {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("floodgate.yaml");
            let (port, metrics_port) = (free_port(), free_port());
            std::fs::write(&config, yaml(port, metrics_port)).unwrap();
            match Self::try_start(dir, config, port, metrics_port, &[]).await {
                Ok(s) => return s,
                Err(log) if log.contains("cannot listen on") => continue,
                Err(log) => panic!("floodgate exited before ready:\n{log}"),
            }
        }
        panic!("no free ports after 3 tries");
    }

    /// Starts floodgate on an already written config.
    pub async fn start_with(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        metrics_port: u16,
    ) -> Self {
        Self::start_with_args(dir, config, port, metrics_port, &[]).await
    }

    /// Starts floodgate with what `setup(port, metrics_port)` returns (its dir, config file and
    /// extra arguments) on two free ports, retried with new ports if one was taken meanwhile
    /// (tests run in parallel), as [`Sidecar::start_custom`] does.
    pub async fn start_retrying(
        setup: impl Fn(u16, u16) -> (tempfile::TempDir, PathBuf, Vec<String>),
    ) -> Self {
        Self::start_command_retrying(|port, metrics_port| {
            let (dir, config, args) = setup(port, metrics_port);
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
            cmd.arg("--config").arg(&config).args(args);
            (dir, config, cmd)
        })
        .await
    }

    /// Like [`Sidecar::start_retrying`] with the whole command written by `setup` (another
    /// `floodgate` than this build's, e.g. one run from the image's root filesystem): its dir
    /// (the log goes there), its config file and the command that starts floodgate on
    /// `port` and `metrics_port`.
    pub async fn start_command_retrying(
        setup: impl Fn(u16, u16) -> (tempfile::TempDir, PathBuf, Command),
    ) -> Self {
        for _ in 0..3 {
            let (port, metrics_port) = (free_port(), free_port());
            let (dir, config, cmd) = setup(port, metrics_port);
            match Self::spawn_ready(dir, config, port, metrics_port, cmd).await {
                Ok(s) => return s,
                Err(log) if log.contains("cannot listen on") => continue,
                Err(log) => panic!("floodgate exited before ready:\n{log}"),
            }
        }
        panic!("no free ports after 3 tries");
    }

    /// Like [`Sidecar::start_with`] with more command-line arguments; `port` and
    /// `metrics_port` are where they make floodgate listen.
    pub async fn start_with_args(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        metrics_port: u16,
        args: &[String],
    ) -> Self {
        match Self::try_start(dir, config, port, metrics_port, args).await {
            Ok(s) => s,
            Err(log) => panic!("floodgate exited before ready:\n{log}"),
        }
    }

    async fn try_start(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        metrics_port: u16,
        args: &[String],
    ) -> Result<Self, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
        cmd.arg("--config").arg(&config).args(args);
        Self::spawn_ready(dir, config, port, metrics_port, cmd).await
    }

    /// Like [`Sidecar::start_retrying`], with environment variables for floodgate too.
    pub async fn start_retrying_env(
        setup: impl Fn(
            u16,
            u16,
        ) -> (
            tempfile::TempDir,
            PathBuf,
            Vec<String>,
            Vec<(String, String)>,
        ),
    ) -> Self {
        for _ in 0..3 {
            let (port, metrics_port) = (free_port(), free_port());
            let (dir, config, args, env) = setup(port, metrics_port);
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_floodgate"));
            cmd.arg("--config").arg(&config).args(&args).envs(env);
            match Self::spawn_ready(dir, config, port, metrics_port, cmd).await {
                Ok(s) => return s,
                Err(log) if log.contains("cannot listen on") => continue,
                Err(log) => panic!("floodgate exited before ready:\n{log}"),
            }
        }
        panic!("no free ports after 3 tries");
    }

    /// Starts `cmd` (floodgate on `port` and `metrics_port`), its stderr into `dir`'s log,
    /// and waits until `/readyz` says ready; the log if it exits first.
    async fn spawn_ready(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        metrics_port: u16,
        mut cmd: Command,
    ) -> Result<Self, String> {
        let log = std::fs::File::create(dir.path().join("floodgate.log")).unwrap();
        let child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut s = Self {
            child,
            port,
            metrics_port,
            dir,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _, _)) = http_get(metrics_port, "/readyz").await {
                return Ok(s);
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("exit status {status}\n{}", s.log()));
            }
            assert!(
                Instant::now() < deadline,
                "floodgate not ready within 15 s:\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything floodgate logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("floodgate.log")).unwrap_or_default()
    }

    /// Replaces the config file the way editors and `kubectl` do: write aside, then rename.
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".floodgate.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// The value of one metric sample (exact name with labels) from `/metrics`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, _, body) = http_get(self.metrics_port, "/metrics").await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits (at most 5 s, generous for a loaded CI machine) for a metric sample to reach
    /// `want`. Per-request metrics are recorded after the response is sent, so a client may
    /// see the answer first.
    pub async fn wait_metric(&self, sample: &str, want: f64) {
        let start = Instant::now();
        loop {
            let got = self.metric(sample).await;
            if got == Some(want) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{sample} is {got:?}, want {want}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` until it holds or `limit` passes; returns how long it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends raw bytes on a new connection and reads until the server closes or `limit` passes.
pub async fn raw(port: u16, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A one-shot HTTP/1.1 GET; returns status, headers and body.
pub async fn http_get(port: u16, path: &str) -> Result<(u16, http::HeaderMap, String), String> {
    let client = client();
    let resp = client
        .get(format!("http://127.0.0.1:{port}{path}").parse().unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

/// An HTTP/2 cleartext (prior knowledge) client, as gRPC clients are.
pub fn h2c_client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A pooled keep-alive HTTP/1.1 client.
pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// The `floodgatectl` binary, built next to `floodgate` (`scripts/test.sh` builds every
/// binary of the workspace before the tests).
pub fn floodgatectl() -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_floodgate")).with_file_name("floodgatectl");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs `cmd` to completion and returns its standard output; fails the test, with the command
/// and everything it printed, unless it exits 0 (or cannot be started: scripts/test.sh installs
/// the tools the tests use).
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown} ({e}); scripts/test.sh installs it"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One raw HTTP/1.1 client connection, read as a keep-alive client reads it: a response head,
/// then exactly `Content-Length` bytes of body, then the next request on the same socket.
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// A response read off a [`RawConn`]: status, lower-cased header names, body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RawConn {
    pub async fn connect(port: u16) -> Self {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// [`RawConn::send`] that reports a closed connection instead of failing.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// A whole response if one is already there (waits at most 1 ms for bytes).
    pub async fn poll_response(&mut self) -> Option<RawResponse> {
        tokio::time::timeout(Duration::from_millis(1), self.fill())
            .await
            .ok()?
            .ok()?;
        tokio::time::timeout(Duration::from_secs(2), self.read_response())
            .await
            .ok()?
            .ok()
    }

    /// Reads one whole response (10 s at most). `Err` says what happened instead: EOF or a
    /// reset before a whole response, or nothing within the time.
    pub async fn response(&mut self) -> Result<RawResponse, String> {
        tokio::time::timeout(Duration::from_secs(10), self.read_response())
            .await
            .map_err(|_| "no response within 10 s".to_string())?
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Err(format!(
                "EOF ({} bytes read: {:?})",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("read error: {e}")),
        }
    }

    async fn read_response(&mut self) -> Result<RawResponse, String> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line in {head:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < end + len {
            self.fill().await?;
        }
        let body = self.buf[end..end + len].to_vec();
        self.buf.drain(..end + len);
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// True when the server has closed the connection (EOF or reset) within 5 s.
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}
