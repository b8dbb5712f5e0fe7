//! The container image `scripts/image.sh` builds (`target/image/floodgate.oci.tar`, built by
//! `scripts/test.sh` before the tests), taken from the archive into a buildah storage of the
//! test's own and run from its own root filesystem (`buildah mount`, then `chroot --userspec`
//! as the image's USER, its ENTRYPOINT and CMD): this sandbox refuses to run containers
//! (podman's setrlimit), and chroot runs the same files as the same user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{eventually, http_get, run_ok, Sidecar, Upstream};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// A buildah storage in a temporary directory (vfs: plain directories, nothing mounted), with
/// the working container made from the archive; removed on drop.
struct Store {
    dir: tempfile::TempDir,
    container: String,
}

impl Store {
    fn buildah(dir: &Path) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    fn from_archive(archive: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let source = format!("oci-archive:{}", archive.display());
        let container = run_ok(Self::buildah(dir.path()).args(["from", "--quiet", &source]))
            .trim()
            .to_string();
        Self { dir, container }
    }

    fn run(&self, args: &[&str]) -> String {
        run_ok(Self::buildah(self.dir.path()).args(args))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        for sub in ["umount", "rm"] {
            let _ = Self::buildah(self.dir.path())
                .args([sub, &self.container])
                .output();
        }
    }
}

/// What `floodgatectl inject` writes for a pod: the `floodgate` container, wherever it is put.
fn injected_container() -> Value {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: web\n    image: web\n    ports:\n    - {name: http, containerPort: 8080}\n";
    let (out, _) = crate::inject::inject_ok(pod, &[]);
    let pod: Value = serde_yaml::from_str(&out).unwrap();
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod["spec"][k].as_array())
        .flatten()
        .find(|c| c["name"] == "floodgate")
        .cloned()
        .expect("a floodgate container")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_the_sidecar_from_its_own_root_filesystem() {
    let archive = repo("target/image/floodgate.oci.tar");
    assert!(
        archive.exists(),
        "{} is missing: build it with scripts/image.sh (scripts/test.sh does, before the tests)",
        archive.display()
    );
    assert!(
        Command::new("buildah").arg("--version").output().is_ok(),
        "buildah not found: scripts/test.sh installs Debian's buildah package"
    );
    let store = Store::from_archive(&archive);

    // The image's config agrees with what the injector puts in the pod.
    let info: Value =
        serde_json::from_str(&store.run(&["inspect", "--type", "container", &store.container]))
            .unwrap();
    let config = &info["OCIv1"]["config"];
    let injected = injected_container();
    assert_eq!(
        info["FromImage"], injected["image"],
        "the archive's name is the injector's default image"
    );
    let security = &injected["securityContext"];
    let uid = security["runAsUser"].to_string();
    let user = format!("{uid}:{}", security["runAsGroup"]);
    assert_eq!(config["User"], user.as_str(), "{config}");
    for port in injected["ports"].as_array().unwrap() {
        let exposed = format!("{}/tcp", port["containerPort"]);
        assert!(config["ExposedPorts"].get(&exposed).is_some(), "{config}");
    }
    let labels = &config["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    assert!(
        revision.len() >= 40 && revision[..40].chars().all(|c| c.is_ascii_hexdigit()),
        "{labels}"
    );
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .unwrap()
            .starts_with("https://"),
        "{labels}"
    );
    let entrypoint: Vec<String> = serde_json::from_value(config["Entrypoint"].clone()).unwrap();
    let cmd: Vec<String> = serde_json::from_value(config["Cmd"].clone()).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/floodgate"]);
    assert_eq!(
        &cmd[..2],
        ["--config", "/etc/floodgate/config/floodgate.yaml"]
    );

    let root = PathBuf::from(store.run(&["mount", &store.container]).trim());
    assert!(root.join("usr/local/bin/floodgatectl").exists());
    assert!(!root.join("bin/sh").exists(), "no shell in the image");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(uid.as_str())),
        "{passwd}"
    );
    let chroot = |args: &[&str]| {
        let mut c = Command::new("chroot");
        c.arg(format!("--userspec={user}")).arg(&root).args(args);
        c
    };
    let version = run_ok(&mut chroot(&["/usr/local/bin/floodgatectl", "--version"]));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    // ENTRYPOINT and CMD as the image's USER, the config where CMD reads it (the injector's
    // ConfigMap mount), CMD's ports moved to free ones.
    let up = Upstream::start("app").await;
    let config_file = root.join(cmd[1].trim_start_matches('/'));
    std::fs::create_dir_all(config_file.parent().unwrap()).unwrap();
    std::fs::write(
        &config_file,
        format!(
            "listen: 127.0.0.1:1\nupstream: {{ address: 127.0.0.1:{} }}\n",
            up.port
        ),
    )
    .unwrap();
    let mut fg = Sidecar::start_command_retrying(|port, metrics_port| {
        let args: Vec<String> = cmd
            .iter()
            .map(|a| {
                a.replace("0.0.0.0:15080", &format!("127.0.0.1:{port}"))
                    .replace("0.0.0.0:15090", &format!("127.0.0.1:{metrics_port}"))
            })
            .collect();
        let mut c = chroot(&[entrypoint[0].as_str()]);
        c.args(args);
        (tempfile::tempdir().unwrap(), config_file.clone(), c)
    })
    .await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", fg.child.id())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace().skip(1).all(|u| u == uid),
        "runs as {uid}: {uids}"
    );
    let (code, _, body) = http_get(fg.port, "/").await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from app\n"),
        "{}",
        fg.log()
    );

    fg.signal(nix::sys::signal::Signal::SIGTERM);
    eventually(
        Duration::from_secs(10),
        "floodgate exits on SIGTERM",
        || {
            let exited = fg.child.try_wait().unwrap().is_some();
            async move { exited }
        },
    )
    .await;
    let exit = fg.child.wait().unwrap();
    assert!(exit.success(), "{exit}\n{}", fg.log());
}
