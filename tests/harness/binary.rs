//! The `payoutd` binary for tests that run it as separate processes (the small soak, the
//! multi-provider run): found in this test's target dir, built first when it is stale.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The target dir and cargo profile this test binary was built into:
/// `<target>/<profile dir>/deps/<test binary>`.
pub fn target_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe.parent().filter(|d| d.ends_with("deps")).and_then(Path::parent);
    match profile_dir.and_then(|p| Some((p.parent()?.to_owned(), p.file_name()?.to_str()?.to_owned()))) {
        Some((target, dir)) => {
            let profile = if dir == "debug" { "dev".to_owned() } else { dir };
            (target, profile)
        }
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            (target, "dev".to_owned())
        }
    }
}

/// The payoutd binary of this test's target dir and profile. `cargo nextest run --workspace`
/// has just built it (payoutd has integration tests, so its binary is part of a workspace test
/// build); when cargo's dep-info says it was built from this checkout's current sources it is
/// used as it is. Otherwise (e.g. only this test was built) it is built now with
/// `cargo build -p payoutd --bin payoutd`.
pub fn payoutd_binary(target: &Path, profile: &str) -> PathBuf {
    let profile_dir = if profile == "dev" { "debug" } else { profile };
    let bin = target.join(profile_dir).join("payoutd");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if built_from_current_sources(&bin, &workspace) {
        return bin;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "payoutd",
            "--bin",
            "payoutd",
            "--profile",
            profile,
            "--manifest-path",
        ])
        .arg(workspace.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other if bin.is_file() => {
            eprintln!("building payoutd failed ({other:?}); using {}", bin.display())
        }
        other => panic!("cannot build the payoutd binary ({other:?}) and {} does not exist", bin.display()),
    }
    bin
}

/// Whether `bin` exists and is newer than every source its dep-info file (`<bin>.d`, written
/// by cargo) lists, all of which must lie in `workspace`, and than the manifests and lock file.
fn built_from_current_sources(bin: &Path, workspace: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let (Some(built), Ok(root)) = (modified(bin), workspace.canonicalize()) else { return false };
    let Ok(dep_info) = std::fs::read_to_string(bin.with_extension("d")) else { return false };
    let Some((_, deps)) = dep_info.split_once(": ") else { return false };
    // Paths are separated by whitespace; a space inside a path is escaped as "\\ ".
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = deps.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&' ') {
            current.push(' ');
            chars.next();
        } else if c.is_whitespace() {
            sources.push(PathBuf::from(std::mem::take(&mut current)));
        } else {
            current.push(c);
        }
    }
    sources.push(PathBuf::from(current));
    sources.retain(|s| !s.as_os_str().is_empty());
    let manifests = std::fs::read_dir(root.join("crates"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|krate| krate.path().join("Cargo.toml"))
        .chain([root.join("Cargo.toml"), root.join("Cargo.lock")]);
    !sources.is_empty()
        && sources.iter().all(|s| s.starts_with(&root) && modified(s).is_some_and(|m| m <= built))
        && manifests.filter(|m| m.exists()).all(|m| modified(&m).is_some_and(|m| m <= built))
}
