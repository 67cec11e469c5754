//! Herald's metrics and alerts read by Prometheus' own code (`promcheck`, built from the
//! Prometheus module by scripts/build-bins): the parser a Prometheus server scrapes with,
//! promlint, and the rule checker of `promtool check rules`.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::bins::go_binary;

/// What Herald's endpoint answers a scrape that sends `accept`: (content type, body).
pub async fn scrape(port: u16, accept: &str) -> Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP head")?;
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .context("no Content-Type")?;
    Ok((content_type.to_owned(), body.to_owned()))
}

/// One sample as Prometheus stores it: its metric name, its labels (Prometheus' rendering,
/// the name included) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// Parses `body` as a Prometheus server would scrape it (and lints the text format); an
/// error names the first problem.
pub fn parse(content_type: &str, body: &str) -> Result<Vec<Sample>> {
    let text = run(&["scrape", content_type], Some(body))?;
    text.lines()
        .map(|line| {
            let (name, rest) = line.split_once(' ').context("sample line")?;
            let (labels, value) = rest.rsplit_once(' ').context("sample line")?;
            Ok(Sample {
                name: name.to_owned(),
                labels: labels.to_owned(),
                value: value.parse().with_context(|| format!("value in {line}"))?,
            })
        })
        .collect()
}

/// Checks a Prometheus rule file (`groups: ...`) as `promtool check rules` does; returns
/// the number of rules.
pub fn check_rules(rules_yaml: &str) -> Result<usize> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), rules_yaml)?;
    let out = run(&["rules", file.path().to_str().context("path")?], None)?;
    out.trim()
        .strip_suffix(" rules")
        .context("promcheck rules output")?
        .parse()
        .context("rule count")
}

fn run(args: &[&str], input: Option<&str>) -> Result<String> {
    let mut child = Command::new(go_binary("promcheck")?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promcheck")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(input.unwrap_or_default().as_bytes())?;
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promcheck {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
