//! Where the Go-built binaries live: `scripts/build-bins` puts them in a cache outside the
//! repository and links each current pin under its plain name.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

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
