//! Command-line wiring: the addresses a deployment decides (`floodgate --listen ...
//! --upstream ...`), laid over the file's. A sidecar injector knows the pod's ports; the
//! ConfigMap holds the policy and can be shared by apps whose ports differ. Applied at start
//! and on every reload, so a reload never moves a listener back to the file's address.

use std::net::SocketAddr;
use std::path::Path;

use crate::validate::{admin_in_clear, is_host_port, listener_clashes};
use crate::{Config, ConfigErrors, FieldError, LoadError};

/// Addresses given on the command line; `None` keeps the file's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wiring {
    /// Replaces `listen`.
    pub listen: Option<SocketAddr>,
    /// Replaces `upstream.address` (`host:port`).
    pub upstream: Option<String>,
    /// Replaces (or sets) `metrics.listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Replaces `admin.listen`; the file must have an `admin` section.
    pub admin_listen: Option<SocketAddr>,
}

impl Wiring {
    /// Lays the command-line addresses over `config`, then checks what the file's validation
    /// checks for them: a `host:port` upstream and one port per listener.
    pub fn apply(&self, config: &mut Config, origin: &Path) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |path: &str, message: String| {
            errors.push(FieldError {
                path: path.to_string(),
                line: None,
                message,
            })
        };
        if let Some(a) = self.listen {
            config.listen = a;
        }
        if let Some(u) = &self.upstream {
            if is_host_port(u) {
                config.upstream.address.clone_from(u);
            } else {
                err(
                    "upstream.address",
                    format!("`--upstream {u}` is not `host:port` with a non-zero port (e.g. `127.0.0.1:3000`)"),
                );
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
        for (path, addr, other) in listener_clashes([
            ("listen", Some(config.listen)),
            ("metrics.listen", config.metrics_listen),
            ("admin.listen", config.admin.as_ref().map(|a| a.listen)),
        ]) {
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
        };
        w.apply(&mut c, Path::new("f.yaml")).expect("ok");
        assert_eq!(c.listen.to_string(), "0.0.0.0:15080");
        assert_eq!(c.upstream.address, "127.0.0.1:8080");
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
}
