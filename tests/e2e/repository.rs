//! Rules over the repository's tracked files themselves.

use std::process::Command;

/// Package registries are named in words ("PyPI", "Debian's packages", "the Rust package
/// registry") and reached through their ordinary clients, never by a host name written into
/// a file. The patterns are spelt with character classes so this file does not match itself.
#[test]
fn no_tracked_file_names_a_package_registry_host() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["ls-files", "-z"])
        .output()
        .expect("git (the checkout is a git repository)");
    assert!(out.status.success(), "git ls-files failed");
    let hosts = regex::Regex::new(
        r"registr[y]\.npmjs|pyp[i]\.org|files\.pythonhoste[d]|crate[s]\.io|de[b]\.debian\.org|static\.crate[s]",
    )
    .unwrap();
    let mut found = Vec::new();
    for file in out.stdout.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let file = String::from_utf8_lossy(file);
        if file.ends_with(".lock") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(file.as_ref())) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if let Some(m) = hosts.find(line) {
                found.push(format!("{file}:{}: {}", i + 1, m.as_str()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "registry host names in tracked files:\n{}",
        found.join("\n")
    );
}
