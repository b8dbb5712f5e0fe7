//! Command-line wiring: the addresses a deployment decides (`floodgate --listen ...
//! --upstream ...`, or `--listener NAME=LISTEN,UPSTREAM` for several ports), laid over the
//! file's. A sidecar injector knows the pod's ports; the ConfigMap holds the policy and can be
//! shared by apps whose ports differ. Applied at start and on every reload, so a reload never
//! moves a listener back to the file's address.

use std::net::SocketAddr;
use std::path::Path;

use crate::model::{Listener, Upstream};
use crate::raw::UpstreamProtocol;
use crate::validate::{
    admin_in_clear, is_host_port, listener_clashes, unknown_listener, valid_listener_name,
};
use crate::{Config, ConfigErrors, FieldError, LoadError};

/// Addresses given on the command line; `None` keeps the file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wiring {
    /// Replaces `listen` (the one-listener form).
    pub listen: Option<SocketAddr>,
    /// Replaces `upstream.address` (`host:port`; the one-listener form).
    pub upstream: Option<String>,
    /// `--listener NAME=LISTEN,UPSTREAM`: when given, the listeners are exactly these.
    pub listeners: Vec<ListenerWiring>,
    /// Replaces (or sets) `metrics.listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Replaces `admin.listen`; the file must have an `admin` section.
    pub admin_listen: Option<SocketAddr>,
}

/// One `--listener NAME=LISTEN,UPSTREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerWiring {
    /// The listener's name.
    pub name: String,
    /// Where it accepts traffic.
    pub listen: SocketAddr,
    /// The app's `host:port` behind it.
    pub upstream: String,
    /// The protocol to the app, when given (`,h2c` after the upstream); else the file's
    /// listener's, or `auto`.
    pub protocol: Option<UpstreamProtocol>,
}

/// A `--listener` value that is not `NAME=LISTEN,UPSTREAM[,PROTOCOL]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{given}` is not NAME=LISTEN,UPSTREAM[,PROTOCOL] (e.g. `grpc=0.0.0.0:15081,127.0.0.1:9999,h2c`): {why}")]
pub struct BadListener {
    /// As given.
    pub given: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl std::str::FromStr for ListenerWiring {
    type Err = BadListener;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| BadListener {
            given: s.to_string(),
            why,
        };
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| bad("no `=` after the name"))?;
        if !valid_listener_name(name) {
            return Err(bad("the name takes letters, digits, `-` and `_`"));
        }
        let (listen, upstream) = rest
            .split_once(',')
            .ok_or_else(|| bad("no `,` between the listen address and the upstream"))?;
        let listen = listen
            .parse::<SocketAddr>()
            .ok()
            .filter(|a| a.port() != 0)
            .ok_or_else(|| bad("the listen address is not `ip:port` with a non-zero port"))?;
        let (upstream, protocol) = match upstream.split_once(',') {
            None => (upstream, None),
            Some((u, p)) => (
                u,
                Some(match p {
                    "auto" => UpstreamProtocol::Auto,
                    "http1" => UpstreamProtocol::Http1,
                    "h2c" => UpstreamProtocol::H2c,
                    _ => return Err(bad("the protocol after the upstream is auto, http1 or h2c")),
                }),
            ),
        };
        if !is_host_port(upstream) {
            return Err(bad("the upstream is not `host:port` with a non-zero port"));
        }
        Ok(Self {
            name: name.to_string(),
            listen,
            upstream: upstream.to_string(),
            protocol,
        })
    }
}

impl Wiring {
    /// Lays the command-line addresses over `config`, then checks what the file's validation
    /// checks for them: a `host:port` upstream, one port per listener, and that every route's
    /// listener still exists.
    pub fn apply(&self, config: &mut Config, origin: &Path) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(FieldError {
                path: path.to_string(),
                line: None,
                message,
            })
        };
        let one_listener_flags = self.listen.is_some() || self.upstream.is_some();
        if one_listener_flags && !self.listeners.is_empty() {
            err(
                "listeners",
                "give either `--listener` (several ports) or `--listen`/`--upstream` (one), not both".into(),
            );
        } else if one_listener_flags && config.named_listeners {
            err(
                "listeners",
                "`--listen`/`--upstream` set the one-listener form's addresses, but the file has `listeners:`; use `--listener NAME=LISTEN,UPSTREAM` for each".into(),
            );
        } else if let [only] = config.listeners.as_mut_slice() {
            if let Some(a) = self.listen {
                only.listen = a;
            }
            if let Some(u) = &self.upstream {
                if is_host_port(u) {
                    only.upstream.address.clone_from(u);
                } else {
                    err(
                        "upstream.address",
                        format!("`--upstream {u}` is not `host:port` with a non-zero port (e.g. `127.0.0.1:3000`)"),
                    );
                }
            }
        }
        if !self.listeners.is_empty() {
            let mut seen: Vec<&str> = Vec::new();
            let mut wired = Vec::new();
            for w in &self.listeners {
                if seen.contains(&w.name.as_str()) {
                    err(
                        "listeners",
                        format!("`--listener {}=...` is given twice", w.name),
                    );
                    continue;
                }
                seen.push(&w.name);
                // The file's listener of that name keeps its timeouts and protocol. A file in
                // the one-listener form (a shared policy ConfigMap, as the injector writes for
                // several ports) lends its one upstream's settings to every wired listener, so
                // adding a port does not reset the timeouts the file set; otherwise a new
                // listener gets the defaults.
                let base = config.listener(&w.name).or(if config.named_listeners {
                    None
                } else {
                    config.listeners.first()
                });
                let mut upstream = match base {
                    Some(l) => Upstream {
                        address: w.upstream.clone(),
                        ..l.upstream.clone()
                    },
                    None => Upstream::with_address(w.upstream.clone()),
                };
                if let Some(p) = w.protocol {
                    upstream.protocol = p;
                }
                wired.push(Listener {
                    name: w.name.clone(),
                    listen: w.listen,
                    upstream,
                });
            }
            config.listeners = wired;
            config.named_listeners = true;
            let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
            for (i, r) in config.routes.iter().enumerate() {
                if let Some(problem) = r
                    .listener
                    .as_deref()
                    .and_then(|l| unknown_listener(l, &names))
                {
                    err(
                        &format!("routes[{i}].match.listener"),
                        format!("{problem} (after the command-line `--listener`s)"),
                    );
                }
            }
        }
        if let Some(a) = self.metrics_listen {
            config.metrics_listen = Some(a);
        }
        if let Some(a) = self.admin_listen {
            match config.admin.as_mut() {
                Some(admin) => {
                    admin.listen = a;
                    // The file was checked with its own address; the one in effect is this.
                    if let Some(problem) = admin_in_clear(admin, &format!("`--admin-listen {a}`")) {
                        err("admin.listen", problem);
                    }
                }
                None => err(
                    "admin",
                    format!(
                        "`--admin-listen {a}` needs an `admin` section (with `tokens`) in the file"
                    ),
                ),
            }
        }
        let mut ports: Vec<(String, Option<SocketAddr>)> = config
            .listeners
            .iter()
            .map(|l| (config.listen_key(&l.name), Some(l.listen)))
            .collect();
        ports.push(("metrics.listen".into(), config.metrics_listen));
        ports.push((
            "admin.listen".into(),
            config.admin.as_ref().map(|a| a.listen),
        ));
        for (path, addr, other) in listener_clashes(&ports) {
            err(
                path,
                format!("{addr} is already used by `{other}` (after the command-line addresses); each listener needs its own port"),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors {
                origin: origin.to_path_buf(),
                errors,
            })
        }
    }

    /// Reads and validates the file at `path`, then lays these addresses over it.
    pub fn load(&self, path: &Path) -> Result<Config, LoadError> {
        let mut config = crate::load(path)?;
        self.apply(&mut config, path)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "listen: 127.0.0.1:8080\nupstream: { address: 127.0.0.1:3000 }\nmetrics: { listen: 127.0.0.1:9090 }\n";

    fn config() -> Config {
        crate::parse(FILE, Path::new("f.yaml")).expect("valid")
    }

    #[test]
    fn empty_wiring_keeps_the_file() {
        let mut c = config();
        Wiring::default()
            .apply(&mut c, Path::new("f.yaml"))
            .expect("ok");
        assert_eq!(format!("{c:?}"), format!("{:?}", config()));
    }

    #[test]
    fn addresses_replace_the_files() {
        let mut c = config();
        let w = Wiring {
            listen: Some("0.0.0.0:15080".parse().expect("addr")),
            upstream: Some("127.0.0.1:8080".into()),
            metrics_listen: Some("0.0.0.0:15090".parse().expect("addr")),
            admin_listen: None,
            listeners: Vec::new(),
        };
        w.apply(&mut c, Path::new("f.yaml")).expect("ok");
        assert_eq!(c.listeners[0].listen.to_string(), "0.0.0.0:15080");
        assert_eq!(c.listeners[0].upstream.address, "127.0.0.1:8080");
        assert_eq!(
            c.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("0.0.0.0:15090")
        );
    }

    #[test]
    fn admin_listen_off_loopback_needs_tls_or_allow_insecure() {
        let with_admin = |extra: &str| {
            let file = format!(
                "{FILE}admin:\n  listen: 127.0.0.1:9901\n  tokens: [{{ file: /t, role: viewer }}]\n{extra}"
            );
            crate::parse(&file, Path::new("f.yaml")).expect("valid")
        };
        let w = Wiring {
            admin_listen: Some("0.0.0.0:15901".parse().expect("addr")),
            ..Wiring::default()
        };
        let mut c = with_admin("");
        let e = w
            .apply(&mut c, Path::new("f.yaml"))
            .expect_err("clear text on the pod network")
            .to_string();
        assert!(
            e.contains(
                "admin.listen: `--admin-listen 0.0.0.0:15901` is not a loopback address and \
                 `admin.tls` is not set, so bearer tokens would cross the network in clear text; \
                 set `admin.tls`, bind `127.0.0.1:15901`, or set `admin.allow_insecure: true`"
            ),
            "{e}"
        );
        let mut c = with_admin("  allow_insecure: true\n");
        w.apply(&mut c, Path::new("f.yaml"))
            .expect("allowed on purpose");
        let mut c = with_admin("  tls: { cert_file: /c, key_file: /k }\n");
        w.apply(&mut c, Path::new("f.yaml")).expect("TLS");
        let mut c = with_admin("");
        let loopback = Wiring {
            admin_listen: Some("[::1]:15901".parse().expect("addr")),
            ..Wiring::default()
        };
        loopback
            .apply(&mut c, Path::new("f.yaml"))
            .expect("loopback");
    }

    #[test]
    fn bad_wiring_names_the_flag_and_the_field() {
        let mut c = config();
        let w = Wiring {
            listen: Some("127.0.0.1:9090".parse().expect("addr")),
            upstream: Some("localhost".into()),
            metrics_listen: None,
            admin_listen: Some("127.0.0.1:9901".parse().expect("addr")),
            listeners: Vec::new(),
        };
        let e = w
            .apply(&mut c, Path::new("f.yaml"))
            .expect_err("invalid")
            .to_string();
        assert!(
            e.contains("upstream.address: `--upstream localhost` is not `host:port`"),
            "{e}"
        );
        assert!(
            e.contains("admin: `--admin-listen 127.0.0.1:9901` needs an `admin` section"),
            "{e}"
        );
        assert!(
            e.contains("metrics.listen: 127.0.0.1:9090 is already used by `listen`"),
            "{e}"
        );
    }

    #[test]
    fn a_listener_flag_parses_name_listen_and_upstream() {
        let w: ListenerWiring = "grpc=0.0.0.0:15081,127.0.0.1:9999".parse().expect("valid");
        assert_eq!(w.name, "grpc");
        assert_eq!(w.listen.to_string(), "0.0.0.0:15081");
        assert_eq!(w.upstream, "127.0.0.1:9999");
        assert_eq!(w.protocol, None);
        let w: ListenerWiring = "grpc=0.0.0.0:15081,127.0.0.1:9999,h2c"
            .parse()
            .expect("valid");
        assert_eq!(
            (w.upstream.as_str(), w.protocol),
            ("127.0.0.1:9999", Some(UpstreamProtocol::H2c))
        );
        for (bad, why) in [
            ("grpc=0.0.0.0:1,127.0.0.1:2,http3", "the protocol"),
            ("grpc", "no `=`"),
            ("g rpc=0.0.0.0:1,127.0.0.1:2", "the name takes"),
            ("grpc=0.0.0.0:15081", "no `,`"),
            ("grpc=localhost:1,127.0.0.1:2", "the listen address"),
            ("grpc=0.0.0.0:1,localhost", "the upstream"),
        ] {
            let e = bad.parse::<ListenerWiring>().expect_err(bad).to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("is not NAME=LISTEN,UPSTREAM[,PROTOCOL]"), "{e}");
        }
    }

    #[test]
    fn listener_flags_are_the_listeners_keeping_the_files_upstream_settings() {
        let file = "listen: 127.0.0.1:8080\nupstream: { address: 127.0.0.1:3000, read_timeout_ms: 5000 }\nroutes:\n  - { name: rpc, match: { listener: grpc } }\n";
        // The file's routes name `grpc`, which only the command line defines.
        assert!(crate::parse(file, Path::new("f.yaml")).is_err());
        let file = file.replace("listener: grpc", "listener: default");
        let mut c = crate::parse(&file, Path::new("f.yaml")).expect("valid");
        let w = Wiring {
            listeners: vec![
                "default=127.0.0.1:15080,127.0.0.1:9898"
                    .parse()
                    .expect("flag"),
                "grpc=127.0.0.1:15081,127.0.0.1:9999".parse().expect("flag"),
            ],
            ..Wiring::default()
        };
        w.apply(&mut c, Path::new("f.yaml")).expect("ok");
        assert!(c.named_listeners);
        let d = c.listener("default").expect("default");
        assert_eq!(d.listen.to_string(), "127.0.0.1:15080");
        assert_eq!(d.upstream.address, "127.0.0.1:9898");
        assert_eq!(
            d.upstream.read_timeout.as_millis(),
            5000,
            "the file's setting"
        );
        let g = c.listener("grpc").expect("grpc");
        assert_eq!(g.upstream.address, "127.0.0.1:9999");
        assert_eq!(
            g.upstream.read_timeout.as_millis(),
            5000,
            "a one-listener file lends its upstream's settings to every wired listener"
        );
        // A route naming a listener the command line left out is an error.
        let mut c = crate::parse(&file, Path::new("f.yaml")).expect("valid");
        let only_grpc = Wiring {
            listeners: vec!["grpc=127.0.0.1:15081,127.0.0.1:9999".parse().expect("flag")],
            ..Wiring::default()
        };
        let e = only_grpc
            .apply(&mut c, Path::new("f.yaml"))
            .expect_err("route's listener gone")
            .to_string();
        assert!(
            e.contains("routes[0].match.listener: unknown listener `default`; defined listeners: grpc (after the command-line `--listener`s)"),
            "{e}"
        );
    }

    #[test]
    fn one_listener_flags_do_not_apply_to_named_listeners() {
        let file = "listeners:\n  - { name: http, listen: 127.0.0.1:8080, upstream: { address: 127.0.0.1:3000 } }\n";
        let mut c = crate::parse(file, Path::new("f.yaml")).expect("valid");
        let w = Wiring {
            listen: Some("127.0.0.1:15080".parse().expect("addr")),
            ..Wiring::default()
        };
        let e = w
            .apply(&mut c, Path::new("f.yaml"))
            .expect_err("ambiguous")
            .to_string();
        assert!(
            e.contains("`--listen`/`--upstream` set the one-listener form's addresses, but the file has `listeners:`"),
            "{e}"
        );
        let both = Wiring {
            listen: Some("127.0.0.1:15080".parse().expect("addr")),
            listeners: vec!["http=127.0.0.1:15081,127.0.0.1:3000".parse().expect("flag")],
            ..Wiring::default()
        };
        let e = both
            .apply(&mut c, Path::new("f.yaml"))
            .expect_err("both")
            .to_string();
        assert!(e.contains("give either `--listener`"), "{e}");
        let clash = Wiring {
            listeners: vec![
                "http=127.0.0.1:15081,127.0.0.1:3000".parse().expect("flag"),
                "grpc=127.0.0.1:15081,127.0.0.1:3001".parse().expect("flag"),
            ],
            ..Wiring::default()
        };
        let e = clash
            .apply(&mut c, Path::new("f.yaml"))
            .expect_err("same port")
            .to_string();
        assert!(
            e.contains(
                "listeners.grpc.listen: 127.0.0.1:15081 is already used by `listeners.http.listen`"
            ),
            "{e}"
        );
    }
}
