//! `floodgatectl top` against real sidecars: the one-shot table and JSON for scripts, the
//! fleet's rows through Redis, and the live view driven through a real terminal (tmux):
//! it draws, quits on `q` and Ctrl-C, and leaves the terminal as it found it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::admin::{admitted, fleet_config, fleet_synced, Admin, LIMITED};
use crate::support::{eventually, floodgatectl, http_get, Upstream};

/// The one-sidecar table's header, as `top --once` prints it.
const HEAD: [&str; 12] = [
    "sidecar",
    "level",
    "load",
    "rps",
    "errors",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "queue",
    "in_flight",
    "breaker",
    "shed",
];

fn cells(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_prints_a_header_and_the_sidecars_row_and_json_for_scripts() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    // 3 pass the limit, 2 are refused: responses the request rate counts.
    assert_eq!(admitted(a.fg.port, 5).await, 3);
    let json = || -> serde_json::Value {
        serde_json::from_str(&a.op(&["top", "--once", "-o", "json"])).unwrap()
    };
    // The rate is the sweeper's, once a second: wait for it to see the traffic.
    eventually(Duration::from_secs(10), "rps seen", || async {
        json()["rps"].as_f64().unwrap() > 0.0
    })
    .await;
    let v = json();
    assert_eq!(v["sidecar"], a.addr.as_str(), "{v}");
    assert_eq!(v["level"], "full", "{v}");
    assert_eq!(
        (&v["queue_capacity"], &v["workers"]),
        (&100.into(), &8.into())
    );
    assert_eq!(v["breakers"], serde_json::json!([]), "{v}");
    for f in ["error_rate", "p50_ms", "p95_ms", "p99_ms"] {
        assert!(v[f].is_f64(), "{f}: {v}");
    }

    let out = a.op(&["top", "--once"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(cells(lines[0]), HEAD, "{out}");
    let row = cells(lines[1]);
    assert_eq!(row.len(), HEAD.len(), "{out}");
    assert_eq!(row[0], a.addr, "{out}");
    // Shed by reason: a first reading has no rate yet, so the total since start.
    assert_eq!(&row[8..], ["0/100", "0/8", "-", "rate_limited=2"], "{out}");
    let shed = v["shed"].as_array().unwrap();
    let limited = shed.iter().find(|x| x["reason"] == "rate_limited").unwrap();
    assert_eq!(limited["total"], 2, "{v}");

    // Not a terminal (the output is a pipe here) and no --once: the same one table, and
    // the command ends rather than redrawing into a pipe.
    let out = a.op(&["top"]);
    assert_eq!(cells(out.lines().next().unwrap()), HEAD, "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let yaml: serde_json::Value =
        serde_yaml::from_str(&a.op(&["top", "--once", "-o", "yaml"])).unwrap();
    assert_eq!(yaml["sidecar"], a.addr.as_str());
}

/// The indicators `top` shows, as `GET /status` reports them now, by name.
async fn status_indicators(port: u16) -> std::collections::BTreeMap<String, f64> {
    let (_, _, body) = http_get(port, "/status").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["indicators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_string(),
                i["value"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// After a load, `top --once` shows the numbers `/status` reports at the same moment. With
/// no new requests the latency percentiles and the error rate hold still and must be equal;
/// the request rate is the span's count over the time covered so far, so it only falls while
/// the span fills: `top`'s lies between the `/status` readings taken just before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_after_a_load_shows_what_status_reports_at_the_same_moment() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, "").await;
    for _ in 0..200 {
        http_get(a.fg.port, "/").await.unwrap();
    }
    // Logged (and so in the load indicators) a moment after the client has its answer.
    a.fg.wait_metric(
        "http_requests_total{method=\"GET\",route=\"default\",status=\"200\"}",
        200.0,
    )
    .await;
    let before = status_indicators(a.fg.metrics_port).await;
    let top: serde_json::Value =
        serde_json::from_str(&a.op(&["top", "--once", "-o", "json"])).unwrap();
    let after = status_indicators(a.fg.metrics_port).await;
    for (field, indicator) in [
        ("error_rate", "error_rate"),
        ("p50_ms", "latency_p50_ms"),
        ("p95_ms", "latency_p95_ms"),
        ("p99_ms", "latency_p99_ms"),
    ] {
        assert_eq!(
            before[indicator], after[indicator],
            "{indicator} held still"
        );
        assert_eq!(
            top[field].as_f64(),
            Some(before[indicator]),
            "{field} vs /status {indicator}: {top} / {before:?}"
        );
    }
    assert!(before["latency_p50_ms"] > 0.0, "{before:?}");
    let rps = top["rps"].as_f64().unwrap();
    assert!(
        after["request_rate"] <= rps && rps <= before["request_rate"] && rps > 0.0,
        "rps {rps} between /status's {} and {}",
        before["request_rate"],
        after["request_rate"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_fleet_once_has_a_row_per_sidecar() {
    let redis = crate::redis_support::RedisServer::start().await;
    let up = Upstream::start("app").await;
    let cfg = fleet_config(&redis.url());
    let (a, b) = (Admin::start(&up, &cfg).await, Admin::start(&up, &cfg).await);
    fleet_synced(&a).await;
    fleet_synced(&b).await;
    let fleet = || -> serde_json::Value {
        serde_json::from_str(&a.op(&["--fleet", "top", "--once", "-o", "json"])).unwrap()
    };
    eventually(
        Duration::from_secs(10),
        "both sidecars heard from",
        || async { fleet()["sidecars"].as_array().unwrap().len() == 2 },
    )
    .await;
    let out = a.op(&["--fleet", "top", "--once"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        cells(lines[0]),
        ["sidecar", "pod", "state", "seen", "rps", "errors", "p95_ms", "config", "applied"],
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");
    for row in &lines[1..] {
        assert_eq!(cells(row)[2], "live", "{out}");
    }
}

/// A tmux server of the test's own (its socket in a temporary directory, no user config),
/// killed when the test ends however it ends.
struct Tmux {
    dir: tempfile::TempDir,
}

impl Tmux {
    fn start() -> Self {
        let t = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        // A plain sh with a prompt of its own, in a pane big enough for the table.
        let ok = t
            .cmd(&["new-session", "-d", "-s", "top", "-x", "200", "-y", "40"])
            .arg("env PS1='ready$ ' sh")
            .status()
            .unwrap_or_else(|e| panic!("tmux cannot start ({e}); scripts/test.sh installs it"))
            .success();
        assert!(ok, "tmux new-session failed");
        t
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S")
            .arg(self.dir.path().join("sock"))
            .args(["-f", "/dev/null"])
            .args(args)
            .env("TERM", "xterm-256color");
        c
    }

    fn out(&self, args: &[&str]) -> String {
        let o = self.cmd(args).output().unwrap();
        assert!(o.status.success(), "tmux {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        self.out(&["capture-pane", "-p", "-t", "top"])
    }

    /// A pane variable: `alternate_on`, `cursor_flag`, ...
    fn var(&self, name: &str) -> String {
        self.out(&[
            "display-message",
            "-p",
            "-t",
            "top",
            &format!("#{{{name}}}"),
        ])
        .trim()
        .to_string()
    }

    fn keys(&self, keys: &[&str]) {
        self.out(&[&["send-keys", "-t", "top"][..], keys].concat());
    }

    /// Waits until the pane shows what `done` looks for; fails with the pane's text if not
    /// within 20 s (generous: the suite runs many sidecars at once on two cores).
    async fn until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if done(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: not within 20s; the pane:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).status();
    }
}

/// Runs `top` in the pane, checks the live table, quits with `quit`, and checks the shell
/// got back its screen, cursor and terminal settings (`stty -g` before and after).
async fn live_then_quit(t: &Tmux, a: &Admin, run: u32, quit: &str) {
    let d = t.dir.path().display();
    let line = format!(
        "clear; stty -g > {d}/before{run}; {ctl} --addr {addr} --token-file {token} top --interval 200ms; \
         echo top-exit$?-{run}; stty -g > {d}/after{run}",
        ctl = floodgatectl().display(),
        addr = a.addr,
        token = a.token("view.token").display(),
    );
    t.keys(&["-l", &line]);
    t.keys(&["Enter"]);
    let s = t
        .until("the live table", |s| {
            s.contains("q to quit") && s.lines().any(|l| l.starts_with("sidecar "))
        })
        .await;
    assert!(s.contains(&a.addr), "{s}");
    assert_eq!(
        t.var("alternate_on"),
        "1",
        "top draws on the alternate screen"
    );
    assert_eq!(t.var("cursor_flag"), "0", "top hides the cursor");
    // Redrawn each interval: the `updated` line changes within a few seconds.
    let stamp = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("updated "))
            .map(str::to_string)
    };
    let first = stamp(&s);
    t.until("a redraw", |s| stamp(s).is_some() && stamp(s) != first)
        .await;

    t.keys(&[quit]);
    let marker = format!("top-exit0-{run}");
    let s = t
        .until("top to exit 0 and the shell to return", |s| {
            s.contains(&marker) && s.trim_end().ends_with("ready$")
        })
        .await;
    assert!(!s.contains("q to quit"), "the table is gone: {s}");
    assert_eq!(t.var("alternate_on"), "0", "back on the normal screen");
    assert_eq!(t.var("cursor_flag"), "1", "the cursor is shown again");
    let read = |f: &str| std::fs::read_to_string(Path::new(&t.dir.path()).join(f)).unwrap();
    assert_eq!(
        read(&format!("before{run}")),
        read(&format!("after{run}")),
        "terminal settings (raw mode) restored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_live_view_redraws_quits_on_q_and_ctrl_c_and_restores_the_terminal() {
    let up = Upstream::start("app").await;
    let a = Admin::start(&up, LIMITED).await;
    let t = Tmux::start();
    t.until("the shell's prompt", |s| s.contains("ready$"))
        .await;
    live_then_quit(&t, &a, 1, "q").await;
    live_then_quit(&t, &a, 2, "C-c").await;
}
