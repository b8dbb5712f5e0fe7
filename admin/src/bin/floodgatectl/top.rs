//! `floodgatectl top`: the load of one sidecar (its `Status`), or of every sidecar of the
//! fleet (`FleetStatus`, with `--fleet`), as a table refreshed every `--interval`.
//!
//! Two ways out. On a terminal it is a live view: raw mode and the alternate screen, a
//! redraw each interval, `q`, Esc or Ctrl-C to quit; the terminal is given back by
//! [`Screen`]'s `Drop` (and by the panic hook it installs), so an error, a panic or SIGTERM
//! leave the shell as it was. With `--once`, with `-o json|yaml`, or when standard output is
//! not a terminal (a pipe, a file, CI), it prints one snapshot with the CLI's own table
//! renderer and exits: what a script wants, and nothing on a pipe that a reader must strip.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, queue, style, terminal};
use floodgate_admin::pb;
use floodgate_admin::pb::admin_client::AdminClient;
use serde::Serialize;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::args::Output;
use crate::client::{explain, request, Failure, Stop};
use crate::out::{encode, Out};
use crate::render::human_duration;
use crate::table::{Align::Left, Align::Right, Table};

/// One sidecar's load, as `top` shows it (and `-o json|yaml` prints it).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct SidecarTop {
    /// The admin address asked (--addr).
    pub(crate) sidecar: String,
    /// The sidecar's version; empty from one older than the field.
    pub(crate) version: String,
    /// Degradation level in force: full, degraded, minimal.
    pub(crate) level: String,
    /// Worst load indicator level: ok, warning, critical.
    pub(crate) load: String,
    /// Responses per second.
    pub(crate) rps: f64,
    /// Share of the app's answers that failed (0..1).
    pub(crate) error_rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
    /// Requests waiting in the queue.
    pub(crate) queue_depth: u32,
    /// queue.max_size; absent without a queue.
    pub(crate) queue_capacity: Option<u32>,
    /// Requests in flight to the app.
    pub(crate) inflight: u32,
    /// queue.max_concurrency; absent without a queue (then nothing caps it).
    pub(crate) workers: Option<u32>,
    /// Every circuit breaker and its state: closed, half_open, open.
    pub(crate) breakers: Vec<pb::Breaker>,
    /// Overrides in force.
    pub(crate) overrides: u32,
    /// Requests refused by policy, by reason: the total since the sidecar started, and the
    /// rate since the previous reading (absent for a first reading).
    pub(crate) shed: Vec<ShedTop>,
}

/// Refusals of one reason.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct ShedTop {
    pub(crate) reason: String,
    pub(crate) total: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_second: Option<f64>,
}

impl SidecarTop {
    pub(crate) fn new(addr: &str, s: &pb::StatusReply) -> Self {
        // Every indicator is in every reply (the sidecar lists all of them, configured or
        // not); 0 stands in for one an older sidecar might leave out.
        let indicator = |name: &str| {
            s.indicators
                .iter()
                .find(|i| i.name == name)
                .map_or(0.0, |i| i.value)
        };
        let q = s.queue.unwrap_or_default();
        Self {
            sidecar: addr.to_string(),
            version: s.version.clone(),
            level: s
                .degradation
                .as_ref()
                .map_or_else(String::new, |d| d.level.clone()),
            load: s.level.clone(),
            rps: indicator("request_rate"),
            error_rate: indicator("error_rate"),
            p50_ms: indicator("latency_p50_ms"),
            p95_ms: indicator("latency_p95_ms"),
            p99_ms: indicator("latency_p99_ms"),
            queue_depth: q.depth,
            queue_capacity: q.configured.then_some(q.max_size),
            inflight: q.inflight,
            workers: q.configured.then_some(q.max_concurrency),
            breakers: s.breakers.clone(),
            overrides: s.overrides,
            shed: s
                .shed
                .iter()
                .map(|x| ShedTop {
                    reason: x.reason.clone(),
                    total: x.total,
                    per_second: None,
                })
                .collect(),
        }
    }

    /// Fills the shed rates from the `previous` reading, `secs` seconds earlier.
    pub(crate) fn rates_since(&mut self, previous: &SidecarTop, secs: f64) {
        if secs <= 0.0 {
            return;
        }
        for x in &mut self.shed {
            if let Some(p) = previous.shed.iter().find(|p| p.reason == x.reason) {
                x.per_second = Some(x.total.saturating_sub(p.total) as f64 / secs);
            }
        }
    }

    /// `rate_limited=3.0/s,queue_full=1.0/s`, the reasons refusing now (as the breaker cell
    /// names tripped breakers); totals when there is no rate yet; `-` when none.
    fn shed_cell(&self) -> String {
        let parts: Vec<String> = self
            .shed
            .iter()
            .filter_map(|x| match x.per_second {
                Some(r) if r > 0.0 => Some(format!("{}={r:.1}/s", x.reason)),
                Some(_) => None,
                None if x.total > 0 => Some(format!("{}={}", x.reason, x.total)),
                None => None,
            })
            .collect();
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(",")
        }
    }
}

/// The fleet's load, one row per expected sidecar (`-o json|yaml` prints this).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct FleetTop {
    /// The fleet's override version.
    pub(crate) fleet_version: u64,
    /// Busiest first; stale ones (their numbers as old as their last heartbeat) last.
    pub(crate) sidecars: Vec<pb::Sidecar>,
}

impl FleetTop {
    pub(crate) fn new(f: &pb::FleetStatusReply) -> Self {
        let mut sidecars = f.sidecars.clone();
        sidecars.sort_by(|a, b| {
            a.stale
                .cmp(&b.stale)
                .then(b.rps.total_cmp(&a.rps))
                .then_with(|| a.id.cmp(&b.id))
        });
        Self {
            fleet_version: f.version,
            sidecars,
        }
    }
}

/// What one poll brought.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Snapshot {
    One(SidecarTop),
    Fleet(FleetTop),
}

impl Snapshot {
    /// `-o json|yaml`'s text, `None` for a table.
    fn encode(&self, format: Output) -> Result<Option<String>, Failure> {
        match self {
            Snapshot::One(s) => encode(format, s),
            Snapshot::Fleet(f) => encode(format, f),
        }
    }

    /// The table: a header row, then one row per sidecar.
    pub(crate) fn table(&self) -> String {
        match self {
            Snapshot::One(s) => one_table(s),
            Snapshot::Fleet(f) => fleet_table(f),
        }
    }
}

fn percent(share: f64) -> String {
    format!("{:.2}%", share * 100.0)
}

/// `used/cap`, or `used` alone when nothing caps it.
fn of(used: u32, cap: Option<u32>) -> String {
    cap.map_or_else(|| used.to_string(), |c| format!("{used}/{c}"))
}

/// The breakers in one cell: `-` without any, `closed` when all are, else the others by name
/// (`upstream=open,feature:reco=half_open`): the ones worth a look.
fn breaker_cell(b: &[pb::Breaker]) -> String {
    if b.is_empty() {
        return "-".into();
    }
    let tripped: Vec<String> = b
        .iter()
        .filter(|b| b.state != "closed")
        .map(|b| format!("{}={}", b.name, b.state))
        .collect();
    if tripped.is_empty() {
        "closed".into()
    } else {
        tripped.join(",")
    }
}

fn one_table(s: &SidecarTop) -> String {
    let mut t = Table::new(&[
        ("sidecar", Left),
        ("level", Left),
        ("load", Left),
        ("rps", Right),
        ("errors", Right),
        ("p50_ms", Right),
        ("p95_ms", Right),
        ("p99_ms", Right),
        ("queue", Right),
        ("in_flight", Right),
        ("breaker", Left),
        ("shed", Left),
    ]);
    t.row(vec![
        s.sidecar.clone(),
        s.level.clone(),
        s.load.clone(),
        format!("{:.1}", s.rps),
        percent(s.error_rate),
        format!("{:.1}", s.p50_ms),
        format!("{:.1}", s.p95_ms),
        format!("{:.1}", s.p99_ms),
        s.queue_capacity
            .map_or_else(|| "-".into(), |c| format!("{}/{c}", s.queue_depth)),
        of(s.inflight, s.workers),
        breaker_cell(&s.breakers),
        s.shed_cell(),
    ]);
    t.render()
}

fn fleet_table(f: &FleetTop) -> String {
    let mut t = Table::new(&[
        ("sidecar", Left),
        ("pod", Left),
        ("state", Left),
        ("seen", Right),
        ("rps", Right),
        ("errors", Right),
        ("p95_ms", Right),
        ("config", Right),
        ("applied", Right),
    ]);
    for s in &f.sidecars {
        t.row(vec![
            s.id.clone(),
            if s.pod.is_empty() { "-" } else { &s.pod }.to_string(),
            if s.stale { "STALE" } else { "live" }.into(),
            format!("{} ago", human_duration(s.seen_seconds_ago)),
            format!("{:.1}", s.rps),
            percent(s.error_rate),
            format!("{:.1}", s.p95_ms),
            s.config_version.to_string(),
            s.applied_version.to_string(),
        ]);
    }
    t.render()
}

/// One poll: `Status` of the sidecar at `addr`, or `FleetStatus` through it.
async fn poll(
    mut c: AdminClient<Channel>,
    token: Option<String>,
    addr: String,
    fleet: bool,
) -> Result<Snapshot, Stop> {
    Ok(if fleet {
        let f = c
            .fleet_status(request(pb::FleetStatusRequest {}, &token)?)
            .await?;
        Snapshot::Fleet(FleetTop::new(&f.into_inner()))
    } else {
        let s = c.status(request(pb::StatusRequest {}, &token)?).await?;
        Snapshot::One(SidecarTop::new(&addr, &s.into_inner()))
    })
}

/// What `top` was asked for.
pub(crate) struct Options {
    pub(crate) addr: String,
    pub(crate) fleet: bool,
    pub(crate) interval: Duration,
    pub(crate) once: bool,
    pub(crate) format: Output,
}

/// Runs `floodgatectl top`.
pub(crate) async fn top(
    c: &mut AdminClient<Channel>,
    token: &Option<String>,
    o: &Options,
    out: &mut Out,
) -> Result<(), Stop> {
    // The first poll happens before the screen is taken: a sidecar that cannot be asked
    // (unreachable, wrong token, no Redis for --fleet) ends with its exit code and message on
    // a normal terminal, as every other command does.
    let first = poll(c.clone(), token.clone(), o.addr.clone(), o.fleet).await?;
    if let Some(text) = first.encode(o.format)? {
        return out.put(&text);
    }
    if o.once || !std::io::stdout().is_terminal() {
        return out.put(&first.table());
    }
    live(c, token, o, out, first).await
}

/// A poll under way, kept across loop turns so a key press is never kept waiting by it.
type Poll = Pin<Box<dyn Future<Output = Result<Snapshot, Stop>>>>;

/// The live view, until a quit key, SIGTERM/SIGHUP, or the terminal goes away.
async fn live(
    c: &AdminClient<Channel>,
    token: &Option<String>,
    o: &Options,
    out: &mut Out,
    first: Snapshot,
) -> Result<(), Stop> {
    let mut screen = Screen::enter(out)?;
    let mut view = View {
        snapshot: first,
        updated: std::time::SystemTime::now(),
        error: None,
    };
    screen.draw(&frame(o, &view))?;
    let mut keys = EventStream::new();
    let mut next = Instant::now() + o.interval;
    let mut pending: Option<Poll> = None;
    let terminated = terminated();
    tokio::pin!(terminated);
    loop {
        let in_flight = pending.is_some();
        tokio::select! {
            _ = tokio::time::sleep_until(next), if !in_flight => {
                pending = Some(Box::pin(poll(c.clone(), token.clone(), o.addr.clone(), o.fleet)));
                next += o.interval;
                // After a stall (a suspended process, a slow sidecar) poll at the pace
                // asked, not in a burst making up for the missed ones.
                let now = Instant::now();
                if next < now {
                    next = now + o.interval;
                }
            }
            got = async {
                match pending.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if in_flight => {
                pending = None;
                match got {
                    Ok(mut s) => {
                        let secs = view.updated.elapsed().map_or(0.0, |d| d.as_secs_f64());
                        if let (Snapshot::One(new), Snapshot::One(old)) = (&mut s, &view.snapshot) {
                            new.rates_since(old, secs);
                        }
                        view.snapshot = s;
                        view.updated = std::time::SystemTime::now();
                        view.error = None;
                    }
                    // Shown, not fatal: a sidecar restarting or a blip should not close the
                    // view an engineer is watching the incident in.
                    Err(stop) => view.error = Some(stop_text(&stop, &o.addr)),
                }
                screen.draw(&frame(o, &view))?;
            }
            ev = keys.next() => match ev {
                Some(Ok(Event::Key(k))) if quits(&k) => return Ok(()),
                Some(Ok(Event::Resize(..))) => screen.draw(&frame(o, &view))?,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Err(Failure(1, format!("cannot read the terminal: {e}")).into())
                }
                None => return Ok(()),
            },
            () = &mut terminated => return Ok(()),
        }
    }
}

/// SIGTERM or SIGHUP (a closed terminal window): end through the same path as `q`, so the
/// terminal is restored. (Ctrl-C arrives as a key in raw mode, not as SIGINT.)
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            return;
        }
    }
    std::future::pending::<()>().await;
}

fn stop_text(stop: &Stop, addr: &str) -> String {
    match stop {
        Stop::Fail(Failure(_, m)) => m.clone(),
        Stop::Call(s) => explain(s, addr).1,
        Stop::PipeClosed => "standard output closed".into(),
    }
}

/// `q`, `Q`, Esc or Ctrl-C.
fn quits(k: &KeyEvent) -> bool {
    // Windows reports releases too; one press is one key.
    k.kind == KeyEventKind::Press
        && match k.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => k.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// What the live view shows: the last good snapshot, and the last poll's failure if it failed.
struct View {
    snapshot: Snapshot,
    updated: std::time::SystemTime,
    error: Option<String>,
}

/// The live view's lines: a title, the table, and when it was read (or why it is not fresh).
fn frame(o: &Options, v: &View) -> Vec<String> {
    let what = if o.fleet { "fleet via " } else { "" };
    let mut lines = vec![
        format!(
            "floodgatectl top - {what}{} - every {} - q to quit",
            o.addr,
            humantime::format_duration(o.interval)
        ),
        String::new(),
    ];
    lines.extend(v.snapshot.table().lines().map(str::to_string));
    lines.push(String::new());
    let at = humantime::format_rfc3339_seconds(v.updated);
    lines.push(match &v.error {
        None => format!("updated {at}"),
        Some(e) => format!("last poll failed: {e}; showing {at}'s"),
    });
    lines
}

/// The terminal taken over by the live view: raw mode, the alternate screen, no cursor.
/// Dropping it gives everything back, whichever way the view ends.
struct Screen<'a> {
    out: &'a mut Out,
}

impl<'a> Screen<'a> {
    fn enter(out: &'a mut Out) -> Result<Self, Failure> {
        terminal::enable_raw_mode().map_err(tty_failure)?;
        // From here on the guard exists, so a failure below still restores raw mode.
        let screen = Self { out };
        // A panic's message would be printed on the alternate screen and vanish with it;
        // restoring first keeps it readable. `restore` is harmless when done twice.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore(&mut std::io::stdout());
            previous(info);
        }));
        queue!(
            screen.out.writer(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .and_then(|()| screen.out.writer().flush())
        .map_err(tty_failure)?;
        Ok(screen)
    }

    /// Draws `lines` from the top left, each cut to the terminal's width so none wraps.
    fn draw(&mut self, lines: &[String]) -> Result<(), Failure> {
        let width = terminal::size().map_or(u16::MAX, |(w, _)| w);
        let w = self.out.writer();
        // Line by line over what is there, clearing each line's rest, rather than clearing
        // the screen first: no flicker, and raw mode's `\n` does not return the carriage.
        queue!(w, terminal::BeginSynchronizedUpdate).map_err(tty_failure)?;
        for (row, line) in lines.iter().enumerate() {
            let cut: String = line.chars().take(usize::from(width)).collect();
            queue!(
                w,
                cursor::MoveTo(0, u16::try_from(row).unwrap_or(u16::MAX)),
                style::Print(cut),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )
            .map_err(tty_failure)?;
        }
        queue!(
            w,
            terminal::Clear(terminal::ClearType::FromCursorDown),
            terminal::EndSynchronizedUpdate
        )
        .and_then(|()| w.flush())
        .map_err(tty_failure)
    }
}

impl Drop for Screen<'_> {
    fn drop(&mut self) {
        restore(self.out.writer());
    }
}

/// Leaves the alternate screen, shows the cursor, ends raw mode; errors are ignored, as
/// there is nothing better to do with them on the way out.
fn restore(w: &mut impl Write) {
    let _ = queue!(w, cursor::Show, terminal::LeaveAlternateScreen).and_then(|()| w.flush());
    let _ = terminal::disable_raw_mode();
}

fn tty_failure(e: std::io::Error) -> Failure {
    Failure(1, format!("cannot drive the terminal: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> pb::StatusReply {
        let ind = |name: &str, value| pb::Indicator {
            name: name.into(),
            value,
            level: "ok".into(),
            warning: f64::NAN,
            critical: f64::NAN,
        };
        pb::StatusReply {
            level: "warning".into(),
            version: "0.1.0".into(),
            degradation: Some(pb::Degradation {
                level: "degraded".into(),
                ..Default::default()
            }),
            queue: Some(pb::Queue {
                configured: true,
                depth: 3,
                max_size: 100,
                inflight: 2,
                max_concurrency: 8,
                drain_rate_per_second: 0.0,
            }),
            breakers: vec![pb::Breaker {
                name: "upstream".into(),
                state: "closed".into(),
            }],
            indicators: vec![
                ind("request_rate", 12.5),
                ind("latency_p50_ms", 1.25),
                ind("latency_p95_ms", 9.0),
                ind("latency_p99_ms", 20.0),
                ind("error_rate", 0.025),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn one_sidecar_is_a_header_and_a_row_with_every_column() {
        let s = Snapshot::One(SidecarTop::new("127.0.0.1:9901", &status()));
        let text = s.table();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [
                vec![
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
                    "shed"
                ],
                vec![
                    "127.0.0.1:9901",
                    "degraded",
                    "warning",
                    "12.5",
                    "2.50%",
                    "1.2",
                    "9.0",
                    "20.0",
                    "3/100",
                    "2/8",
                    "closed",
                    "-"
                ],
            ],
            "{text}"
        );
    }

    #[test]
    fn without_a_queue_or_breaker_the_cells_say_so() {
        let mut st = status();
        st.queue = Some(pb::Queue {
            inflight: 4,
            ..Default::default()
        });
        st.breakers = vec![
            pb::Breaker {
                name: "upstream".into(),
                state: "open".into(),
            },
            pb::Breaker {
                name: "feature:reco".into(),
                state: "closed".into(),
            },
        ];
        let one = SidecarTop::new("a", &st);
        assert_eq!((one.queue_capacity, one.workers), (None, None));
        let row = Snapshot::One(one).table();
        let cells: Vec<&str> = row.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(&cells[8..], ["-", "4", "upstream=open", "-"], "{row}");
        assert_eq!(breaker_cell(&[]), "-");
    }

    #[test]
    fn shed_is_totals_at_first_then_rates_between_two_readings() {
        let mut st = status();
        let shed = |limited, full| {
            vec![
                pb::Shed {
                    reason: "rate_limited".into(),
                    total: limited,
                },
                pb::Shed {
                    reason: "queue_full".into(),
                    total: full,
                },
            ]
        };
        st.shed = shed(10, 0);
        let first = SidecarTop::new("a", &st);
        assert_eq!(first.shed_cell(), "rate_limited=10");
        st.shed = shed(40, 5);
        let mut second = SidecarTop::new("a", &st);
        second.rates_since(&first, 2.0);
        assert_eq!(second.shed_cell(), "rate_limited=15.0/s,queue_full=2.5/s");
        // Nothing refused between the two: no reason listed.
        let mut third = SidecarTop::new("a", &st);
        third.rates_since(&second, 1.0);
        assert_eq!(third.shed_cell(), "-");
    }

    #[test]
    fn the_fleet_is_one_row_per_sidecar_busiest_first_stale_last() {
        let sc = |id: &str, rps, stale| pb::Sidecar {
            id: id.into(),
            pod: format!("pod-{id}"),
            rps,
            stale,
            error_rate: 0.5,
            p95_ms: 7.0,
            seen_seconds_ago: 1,
            config_version: 2,
            applied_version: 3,
        };
        let f = FleetTop::new(&pb::FleetStatusReply {
            version: 3,
            sidecars: vec![
                sc("a", 1.0, false),
                sc("b", 99.0, true),
                sc("c", 5.0, false),
            ],
            ..Default::default()
        });
        let text = Snapshot::Fleet(f).table();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            ["sidecar", "pod", "state", "seen", "rps", "errors", "p95_ms", "config", "applied"]
        );
        let ids: Vec<&str> = lines[1..].iter().map(|l| l[0]).collect();
        assert_eq!(ids, ["c", "a", "b"], "{text}");
        assert_eq!(
            lines[1],
            ["c", "pod-c", "live", "1s", "ago", "5.0", "50.00%", "7.0", "2", "3"]
        );
        assert_eq!(lines[3][2], "STALE");
    }

    #[test]
    fn the_live_frame_has_a_title_the_table_and_the_last_failure() {
        let o = Options {
            addr: "127.0.0.1:9901".into(),
            fleet: false,
            interval: Duration::from_secs(1),
            once: false,
            format: Output::Table,
        };
        let mut v = View {
            snapshot: Snapshot::One(SidecarTop::new("127.0.0.1:9901", &status())),
            updated: std::time::UNIX_EPOCH,
            error: None,
        };
        let lines = frame(&o, &v);
        assert_eq!(
            lines[0],
            "floodgatectl top - 127.0.0.1:9901 - every 1s - q to quit"
        );
        assert!(lines[2].starts_with("sidecar "), "{lines:?}");
        assert_eq!(lines.last().unwrap(), "updated 1970-01-01T00:00:00Z");
        v.error = Some("sidecar unreachable: x".into());
        assert!(frame(&o, &v)
            .last()
            .unwrap()
            .starts_with("last poll failed: sidecar unreachable: x;"));
    }

    #[test]
    fn quit_keys() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }
}
