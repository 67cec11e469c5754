//! Where the Go-built binaries live: `scripts/build-bins` puts them in a cache outside the
//! repository and links each current pin under its plain name.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use anyhow::{Context, Result, bail};

/// `$HERALD_BIN_DIR`, else `$HERALD_CACHE/bin`, else `~/.cache/herald/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HERALD_BIN_DIR") {
        return dir.into();
    }
    let cache = std::env::var_os("HERALD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/herald")
        });
    cache.join("bin")
}

/// Path of a Go-built binary, or an error telling how to build it.
pub fn go_binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} not found: run scripts/build-bins (it builds {name} from Go modules into a cache)",
            path.display()
        );
    }
    Ok(path)
}

/// Root of the repository (the workspace holding this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of one of Herald's own binaries, built first (once per test process) so a test never
/// runs a stale one. Lives in the caller's profile directory, `target/<profile>/<name>`
/// (tests run from `target/<profile>/deps/`, the benchmarks from `target/<profile>/`).
pub fn herald_binary(name: &str) -> Result<PathBuf> {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe()?;
    let mut profile_dir = exe.parent().context("executable has no directory")?;
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().context("no profile directory")?;
    }
    let mut built = BUILT.lock();
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", name])
            .current_dir(repo_root());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().with_context(|| format!("building {name}"))?;
        if !status.success() {
            bail!("cargo build --bin {name} failed");
        }
        built.push(name.to_owned());
    }
    Ok(profile_dir.join(name))
}
