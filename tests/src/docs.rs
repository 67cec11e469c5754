//! The examples in Herald's docs, read from the files users read, so that a test runs them
//! as written.

use anyhow::{Context, Result, bail};

use crate::bins::repo_root;

/// The first fenced code block after the line `heading` in `file` (relative to the
/// repository root), without its fences.
pub fn block_after(file: &str, heading: &str) -> Result<String> {
    let path = repo_root().join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {file}"))?;
    let mut lines = text.lines().skip_while(|l| l.trim_end() != heading);
    if lines.next().is_none() {
        bail!("{file} has no line {heading:?}");
    }
    let mut lines = lines.skip_while(|l| !l.starts_with("```"));
    if lines.next().is_none() {
        bail!("{file}: no code block after {heading:?}");
    }
    let mut block = String::new();
    for line in lines {
        if line.starts_with("```") {
            return Ok(block);
        }
        block.push_str(line);
        block.push('\n');
    }
    bail!("{file}: the code block after {heading:?} does not end")
}
