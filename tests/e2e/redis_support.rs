//! Real `redis-server` processes for tests: a standalone server, or a cluster of 3 masters
//! (and optionally a replica each) made with `redis-cli --cluster create`, each on free
//! loopback ports, each test its own.

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
    /// `cluster-node-timeout` in ms, and then `cluster-require-full-coverage no` (cluster
    /// nodes only; Redis's defaults when `None`).
    node_timeout: Option<u64>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(free_port_with_bus(), false).await
    }

    async fn start_on(port: u16, cluster: bool) -> Self {
        Self::start_node(port, cluster, None).await
    }

    async fn start_node(port: u16, cluster: bool, node_timeout: Option<u64>) -> Self {
        let mut s = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            cluster,
            node_timeout,
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
            if let Some(t) = self.node_timeout {
                // Failover tests: with full coverage required (Redis's default) every master
                // answers CLUSTERDOWN while one is failed, so no shard could stay in Redis.
                cmd.args(["--cluster-node-timeout", &t.to_string()])
                    .args(["--cluster-require-full-coverage", "no"]);
            }
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

    /// Sends `sig` to the server (SIGSTOP / SIGCONT: a server that hangs, then resumes).
    #[allow(dead_code)]
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("server not running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, sig).unwrap();
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

/// Three masters, no replicas or one each, slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    /// The masters first (as created), then the replicas.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replicas.
    pub async fn start() -> Self {
        Self::start_with(0, None).await
    }

    /// Three masters with `replicas` replicas each, and `cluster-node-timeout` (ms), which
    /// also turns off `cluster-require-full-coverage`.
    pub async fn start_with(replicas: usize, node_timeout: Option<u64>) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            nodes.push(RedisServer::start_node(free_port_with_bus(), true, node_timeout).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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
        // `--cluster create` makes the first three masters; the replicas attach meanwhile.
        // Wait until every replica is one, so a failover has someone to promote.
        if replicas > 0 {
            for n in &nodes[3..] {
                while !command(n.port, &["INFO", "replication"])
                    .await
                    .is_ok_and(|r| r.contains("role:slave") && r.contains("master_link_status:up"))
                {
                    assert!(
                        Instant::now() < deadline,
                        "replicas not in sync within 15 s"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Self { nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The master (an index into `nodes`) that serves `slot` now, as node `via` sees it.
    #[allow(dead_code)]
    pub async fn master_of(&self, via: usize, slot: u16) -> Option<usize> {
        let slots = command(self.nodes[via].port, &["CLUSTER", "SLOTS"])
            .await
            .ok()?;
        let lines: Vec<&str> = slots.lines().collect();
        // RESP2 text; each entry: *N, :start, :end, *M (the master), $len, host, :port, ...
        let mut i = 0;
        while i + 6 < lines.len() {
            if let (Some(a), Some(b)) = (
                lines[i]
                    .strip_prefix(':')
                    .and_then(|v| v.parse::<u16>().ok()),
                lines[i + 1]
                    .strip_prefix(':')
                    .and_then(|v| v.parse::<u16>().ok()),
            ) {
                if lines[i + 2].starts_with('*') && (a..=b).contains(&slot) {
                    let port: u16 = lines[i + 5].strip_prefix(':')?.parse().ok()?;
                    return self.nodes.iter().position(|n| n.port == port);
                }
            }
            i += 1;
        }
        None
    }
}
