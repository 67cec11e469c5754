//! Child processes that die with the test: killed on drop (also while a failed test unwinds)
//! and, through `PR_SET_PDEATHSIG`, when the test process itself is killed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `cmd`, its stdout and stderr going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// `Some(description)` when the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                self.log_tail(30)
            )),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.name)),
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(file) = File::open(&self.log) else {
            return String::new();
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on a pid we own and have not reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `/proc/PID/status` memory figure (`VmRSS:`, `VmHWM:`...) in MiB.
pub fn memory_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    use anyhow::Context;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

/// User and system CPU seconds a process has used.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    use anyhow::Context;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields counted after the command name, which may hold spaces and parentheses.
    let after = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
        + fields.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// The processes running `binary` (by the first word of their command line), optionally
/// only those in the network namespace of `node`.
pub fn processes(binary: &str, node_ns: Option<&str>) -> Vec<u32> {
    let wanted_ns = node_ns.and_then(|ns| {
        std::fs::metadata(format!("/run/netns/{ns}"))
            .ok()
            .map(|m| m.ino())
    });
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            if first != binary.as_bytes() {
                return false;
            }
            wanted_ns.is_none_or(|ino| {
                std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ino)
            })
        })
        .collect()
}

/// Per binary of `binaries`: its name, the mean RSS (MiB) and CPU (% of a core) per process
/// running it over `window`, and how many processes ran it.
pub async fn usage(binaries: &[&str], window: Duration) -> Vec<(String, f64, f64, usize)> {
    let before: Vec<BTreeMap<u32, f64>> = binaries
        .iter()
        .map(|b| {
            processes(b, None)
                .into_iter()
                .filter_map(|p| Some((p, cpu_seconds(p).ok()?)))
                .collect()
        })
        .collect();
    tokio::time::sleep(window).await;
    binaries
        .iter()
        .zip(before)
        .map(|(binary, before)| {
            let mut cpu = 0.0;
            let mut rss = 0.0;
            let mut count = 0;
            for (pid, cpu0) in before {
                if let (Ok(cpu1), Ok(mib)) = (cpu_seconds(pid), memory_mib(pid, "VmRSS:")) {
                    cpu += (cpu1 - cpu0) / window.as_secs_f64();
                    rss += mib;
                    count += 1;
                }
            }
            let n = count.max(1) as f64;
            (
                binary.trim_start_matches('/').to_owned(),
                rss / n,
                100.0 * cpu / n,
                count,
            )
        })
        .collect()
}
