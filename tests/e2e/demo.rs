//! `scripts/demo.sh` as a new user runs it: on free ports (its `FLOODGATE_DEMO_*` variables),
//! with a temporary working folder and the binaries this test run built. The commands it prints
//! are run exactly as printed (bash and curl) and must do what their comments say; Ctrl-C (SIGINT
//! to its process group, as a terminal sends it) or SIGTERM stops everything it started. And the
//! demo app's `/slow?ms=` and `/fail`, and shellcheck on every shell script of the repository
//! (`scripts/test.sh` installs curl and shellcheck).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::support::{floodgatectl, free_port, http_get, Upstream};

/// The last line demo.sh prints once everything is up.
const READY: &str = "Floodgate's log (one line per request) follows.";

struct Demo {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    metrics_port: u16,
    admin_port: u16,
    app_port: u16,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Polls `cond` every 20 ms until it holds; fails the test after `limit`.
fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Demo {
    /// Starts demo.sh and waits for its instructions; retried on new ports if one was taken
    /// meanwhile (tests run in parallel).
    fn start() -> Self {
        // The binaries of this build: the script then skips cargo (which this test runs under).
        let bin = Path::new(env!("CARGO_BIN_EXE_floodgate"))
            .parent()
            .unwrap()
            .to_path_buf();
        floodgatectl();
        assert!(bin.join("floodgate-demo-upstream").exists());
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (port, metrics_port, admin_port, app_port) =
                (free_port(), free_port(), free_port(), free_port());
            let child = Command::new("bash")
                .arg(repo().join("scripts/demo.sh"))
                .env("FLOODGATE_DEMO_PORT", port.to_string())
                .env("FLOODGATE_DEMO_METRICS_PORT", metrics_port.to_string())
                .env("FLOODGATE_DEMO_ADMIN_PORT", admin_port.to_string())
                .env("FLOODGATE_DEMO_APP_PORT", app_port.to_string())
                .env("FLOODGATE_DEMO_DIR", dir.path().join("work"))
                .env("FLOODGATE_DEMO_BIN", &bin)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.path().join("out")).unwrap())
                .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
                // Its own process group, as a shell's job: Ctrl-C signals the whole group.
                .process_group(0)
                .spawn()
                .unwrap();
            let mut demo = Self {
                child,
                dir,
                port,
                metrics_port,
                admin_port,
                app_port,
            };
            let start = Instant::now();
            loop {
                if demo.out().contains(READY) {
                    return demo;
                }
                if let Some(status) = demo.child.try_wait().unwrap() {
                    let err = demo.err();
                    if err.contains("cannot listen on") {
                        break;
                    }
                    panic!(
                        "demo.sh exited ({status}) before it was ready:\n{}{err}",
                        demo.out()
                    );
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "demo.sh not ready within 60 s:\n{}{}",
                    demo.out(),
                    demo.err()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no free ports after 3 tries");
    }

    fn out(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out")).unwrap_or_default()
    }

    fn err(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err")).unwrap_or_default()
    }

    /// The commands printed for "another terminal", in order (comment lines left out).
    fn commands(&self) -> Vec<String> {
        let out = self.out();
        let (_, rest) = out.split_once("In another terminal:").unwrap();
        let (block, _) = rest.split_once(READY).unwrap();
        block
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// The first printed command `pick` accepts.
    fn command(&self, pick: impl Fn(&str) -> bool) -> String {
        self.commands()
            .into_iter()
            .find(|c| pick(c))
            .unwrap_or_else(|| panic!("no such command printed:\n{}", self.out()))
    }

    /// Runs a printed command with bash, after the printed `export` line as a reader would
    /// have it in their terminal; returns its standard output (curl's progress meter goes to
    /// standard error). Fails unless it exits 0.
    fn run(&self, command: &str) -> String {
        let export = self.command(|c| c.starts_with("export PATH="));
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -e\n{export}\n{command}"))
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "`{command}` failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    /// Waits for demo.sh to exit; returns its exit code.
    fn wait_exit(&mut self) -> i32 {
        let mut code = None;
        wait_for(Duration::from_secs(15), "demo.sh exits", || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code.unwrap()
    }

    /// No process of demo.sh's group is left, and none of its ports answers.
    fn assert_nothing_left(&self) {
        wait_for(
            Duration::from_secs(5),
            "every process of the demo gone",
            || killpg(self.pgid(), None) == Err(nix::errno::Errno::ESRCH),
        );
        for port in [self.port, self.metrics_port, self.admin_port, self.app_port] {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "port {port} still answers"
            );
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A failed test must not leave the demo running.
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn demo_script_runs_and_every_printed_step_does_what_it_says_until_ctrl_c() {
    let mut demo = Demo::start();
    let u = format!("http://127.0.0.1:{}", demo.port);
    let hello = format!("curl -i {u}/api/hello");

    // A request passes, with the limit's fields.
    let out = demo.run(&demo.command(|c| c == hello));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("ratelimit-policy: \"api_rate_limiter\";q=10;w=10"),
        "{out}"
    );
    assert!(
        out.contains("ratelimit: \"api_rate_limiter\";r=9;"),
        "{out}"
    );
    // The burst: 429s, and the next request shows the refusal.
    let burst = demo.run(&demo.command(|c| c.starts_with("for ") && c.contains("/api/hello")));
    assert!(burst.contains("200 ") && burst.contains("429"), "{burst}");
    let out = demo.run(&hello);
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    for field in [
        "retry-after: ",
        "ratelimit-policy: ",
        "ratelimit: \"api_rate_limiter\";r=0;",
        "floodgate-reason: rate_limited",
        "content-type: application/problem+json",
    ] {
        assert!(out.contains(field), "{field} in:\n{out}");
    }

    // The admin plane with the printed token file.
    let export = demo.command(|c| c.starts_with("export PATH="));
    assert!(
        export.contains(&format!(
            "FLOODGATE_TOKEN_FILE=\"{}\"",
            demo.dir.path().join("work/operator.token").display()
        )),
        "{export}"
    );
    let out = demo.run("floodgatectl status");
    assert!(
        out.contains("api_rate_limiter") && out.contains("degradation full"),
        "{out}"
    );
    let out = demo.run(&demo.command(|c| c.starts_with("floodgatectl limits scale")));
    assert!(out.contains("api_rate_limiter 10 -> 20 for 10m"), "{out}");

    // Static fallback.
    demo.run("floodgatectl feature disable recommendations");
    let out = demo.run(&demo.command(|c| c.contains("/api/recommendations")));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("floodgate-reason: degraded"), "{out}");
    assert!(out.ends_with("\r\n\r\n[]"), "{out}");
    // Cached fallback: the answer seen while on, again; a query never seen is a 503.
    let first = demo.run(&demo.command(|c| c.starts_with("curl -s") && c.contains("q=shoes")));
    assert_eq!(first, "hello from demo-upstream\n");
    demo.run("floodgatectl feature disable search");
    let out = demo.run(&demo.command(|c| c.starts_with("curl -i") && c.contains("q=shoes")));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("floodgate-reason: degraded") && out.contains("age: "),
        "{out}"
    );
    assert!(out.ends_with("hello from demo-upstream\n"), "{out}");
    let out = demo.run(&demo.command(|c| c.contains("q=hats")));
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("floodgate-reason: degraded"), "{out}");
    demo.run(&demo.command(|c| c.starts_with("floodgatectl feature reset")));
    assert!(
        demo.run(&format!("curl -si {u}/api/recommendations"))
            .ends_with("hello from demo-upstream\n"),
        "the feature is back on"
    );

    // The queue: some reach the app, the rest are refused by the queue.
    let out = demo.run(&demo.command(|c| c.contains("/slow?ms=")));
    assert!(out.contains("200") && out.contains("503"), "{out}");

    // The breaker: /fail's 500s open it; then every route gets 503 circuit_open.
    let out = demo.run(&demo.command(|c| c.contains("/fail")));
    assert!(out.starts_with("500 500 500 500 500 "), "{out}");
    let root = demo.command(|c| c == format!("curl -i {u}/"));
    wait_for(Duration::from_secs(5), "breaker open", || {
        demo.run(&root).contains("floodgate-reason: circuit_open")
    });
    let out = demo.run("floodgatectl breakers");
    assert!(out.contains("upstream  open"), "{out}");

    let out = demo.run(&demo.command(|c| c.contains("/metrics")));
    assert!(
        out.contains("floodgate_shed_total{reason=\"circuit_open\"}"),
        "{out}"
    );
    let out = demo.run(&demo.command(|c| c.ends_with("/status")));
    assert!(out.contains("\"indicators\""), "{out}");

    // Ctrl-C: the terminal signals the whole foreground job.
    killpg(demo.pgid(), Signal::SIGINT).unwrap();
    assert_eq!(demo.wait_exit(), 130, "{}", demo.err());
    demo.assert_nothing_left();
}

#[test]
fn demo_script_writes_its_working_copy_and_token_and_stops_on_sigterm() {
    let mut demo = Demo::start();
    let work = demo.dir.path().join("work");
    let config = std::fs::read_to_string(work.join("floodgate.yaml")).unwrap();
    assert!(
        config.contains(&format!("listen: 127.0.0.1:{}", demo.port)),
        "{config}"
    );
    assert!(
        config.contains(&format!("address: 127.0.0.1:{}", demo.app_port)),
        "{config}"
    );
    assert!(
        config.contains(&format!("file: {}/operator.token", work.display())),
        "{config}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(work.join("operator.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the token is for its owner only: {mode:o}");
    // No admin port in the message unless it moved from floodgatectl's default.
    let export = demo.command(|c| c.starts_with("export PATH="));
    assert!(
        export.ends_with(&format!(" FLOODGATE_ADDR=127.0.0.1:{}", demo.admin_port)),
        "{export}"
    );

    // SIGTERM to the script alone (as `kill PID` does): it stops what it started.
    nix::sys::signal::kill(demo.pgid(), Signal::SIGTERM).unwrap();
    assert_eq!(demo.wait_exit(), 143, "{}", demo.err());
    demo.assert_nothing_left();
}

#[tokio::test]
async fn demo_app_answers_slow_after_the_delay_and_fail_with_500() {
    let up = Upstream::start("app").await;
    let start = Instant::now();
    let (status, _, body) = http_get(up.port, "/slow?ms=300").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "app slept 300 ms\n"));
    assert!(start.elapsed() >= Duration::from_millis(300));
    let (status, _, body) = http_get(up.port, "/slow?x=1").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "app slept 0 ms\n"));
    let (status, _, body) = http_get(up.port, "/fail").await.unwrap();
    assert_eq!((status, body.as_str()), (500, "app: /fail always fails\n"));
    // Everything else as before.
    let (status, _, body) = http_get(up.port, "/failing/not").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "hello from app\n"));
}

#[test]
fn every_shell_script_passes_shellcheck() {
    let mut scripts = vec![PathBuf::from(".ci/run")];
    for dir in ["scripts", "bench"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                scripts.push(path.strip_prefix(repo()).unwrap().to_path_buf());
            }
        }
    }
    assert!(scripts.len() >= 4, "{scripts:?}");
    // -x follows `. scripts/lib.sh`, which is relative to the repository root.
    crate::support::run_ok(
        Command::new("shellcheck")
            .arg("-x")
            .args(&scripts)
            .current_dir(repo()),
    );
}

/// The README's "Five minutes with the demo" block, run as a reader pastes it (the demo's
/// default ports and paths swapped for this test's), so the README and the demo cannot drift.
#[test]
fn the_readmes_five_minute_walk_does_what_it_says_against_the_demo() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let (_, section) = readme
        .split_once("## Five minutes with the demo")
        .expect("the README's demo walk");
    let (_, block) = section.split_once("```sh\n").unwrap();
    let (block, _) = block.split_once("```").unwrap();
    let demo = Demo::start();
    let bin = Path::new(env!("CARGO_BIN_EXE_floodgate")).parent().unwrap();
    let work = demo.dir.path().join("work");
    let script = block
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", demo.port))
        .replace("$PWD/target/debug", &bin.display().to_string())
        .replace("$PWD/.demo", &work.display().to_string());
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e\nexport FLOODGATE_ADDR=127.0.0.1:{}\n{script}",
            demo.admin_port
        ))
        .current_dir(demo.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the README's walk failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "ratelimit-policy",
        " 429",
        "floodgate-reason: degraded",
        "limit:api_rate_limiter",
        "max_requests 20",
        "500 500 500 500 500 503",
    ] {
        assert!(
            text.to_lowercase().contains(&want.to_lowercase()),
            "{want:?} not in what the README's walk printed:\n{text}"
        );
    }
}
