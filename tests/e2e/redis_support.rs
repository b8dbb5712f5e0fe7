//! Real `redis-server` processes for tests: a standalone server, or a 3-master cluster made
//! with `redis-cli --cluster create`, each on free loopback ports, each test its own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port that is free, with its cluster-bus port (port + 10000) free too.
fn free_port_with_bus() -> u16 {
    loop {
        let p = crate::support::free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// Sends one command in RESP and returns the raw reply.
pub async fn command(port: u16, args: &[&str]) -> Result<String, std::io::Error> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("redis reply timeout"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One `redis-server`.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    cluster: bool,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port_with_bus(), false).await
    }

    async fn start_on(port: u16, cluster: bool) -> Self {
        let mut s = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            cluster,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(self.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server not found: run scripts/test.sh, which installs it"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !command(self.port, &["PING"])
            .await
            .is_ok_and(|r| r.starts_with("+PONG"))
        {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} not up within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Redis's clock, in milliseconds since the epoch (`TIME`).
    pub async fn time_ms(&self) -> u64 {
        let r = command(self.port, &["TIME"]).await.unwrap();
        let nums: Vec<u64> = r.lines().filter_map(|l| l.parse().ok()).collect();
        nums[0] * 1000 + nums[1] / 1000
    }

    #[allow(dead_code)]
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters, no replicas, slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_on(free_port_with_bus(), true).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli not found: run scripts/test.sh, which installs it");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in &nodes {
            while !command(n.port, &["CLUSTER", "INFO"])
                .await
                .is_ok_and(|r| r.contains("cluster_state:ok"))
            {
                assert!(Instant::now() < deadline, "cluster not ok within 15 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Self { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
