//! What a real cluster changes outside its namespaces, and how it is put back: the
//! machine-wide sysctls the kubelet sets, each node's cgroups, the mounts and files under the
//! cluster's directory, and host paths every kubelet shares. A record of each cluster is
//! written before anything changes, so a run killed with -9 is cleaned up by the next one.
//! One cluster at a time: the record directory's lock is held for a cluster's life.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Records of live clusters, and their lock.
const STATE_DIR: &str = "/run/herald-cluster";

/// Set by every kubelet for the whole machine (not per network namespace).
const KUBELET_SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

/// The cgroup v1 controllers a kubelet with `cgroupDriver: cgroupfs` needs its root in.
pub const CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
];

/// Host paths every kubelet uses whatever its `--root-dir` (one mount namespace for all).
/// Likewise containerd's shims put their sockets in /run/containerd/s whatever its `state`.
const SHARED_PATHS: &[&str] = &["/var/lib/kubelet", "/run/containerd"];

/// The lock and record of one cluster. Dropping it puts everything back.
pub struct Claim {
    record: Record,
    _lock: File,
}

/// What one cluster changed: enough to undo it from another process.
struct Record {
    prefix: String,
    base: PathBuf,
    sysctls: Vec<(String, String)>,
    /// Shared host paths that did not exist before (removed at the end).
    created: Vec<PathBuf>,
}

impl Claim {
    /// Waits for any other cluster of this machine to end, cleans up after runs that were
    /// killed, and records a new cluster whose namespaces, cgroups and directory all start
    /// with `prefix`.
    pub fn take(prefix: &str) -> Result<Self> {
        std::fs::create_dir_all(STATE_DIR)?;
        let lock = File::create(Path::new(STATE_DIR).join("lock"))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("locking {STATE_DIR}: {}", std::io::Error::last_os_error());
        }
        // Holding the lock, every record left is from a run that died without cleaning up.
        for entry in std::fs::read_dir(STATE_DIR)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "record") {
                match Record::read(&path) {
                    Ok(old) => {
                        tracing::warn!(prefix = %old.prefix, "cleaning up after a cluster whose run was killed");
                        old.undo();
                    }
                    Err(e) => tracing::warn!("unreadable cluster record {}: {e:#}", path.display()),
                }
                let _ = std::fs::remove_file(&path);
            }
        }
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .map(|k| {
                let v = std::fs::read_to_string(Path::new("/proc/sys").join(k))?;
                Ok((k.to_string(), v.trim().to_owned()))
            })
            .collect::<Result<Vec<_>>>()?;
        let created = SHARED_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        let record = Record {
            prefix: prefix.to_owned(),
            base: Path::new("/dev/shm").join(format!("herald-cluster-{prefix}")),
            sysctls,
            created,
        };
        record.write()?;
        std::fs::create_dir_all(&record.base)?;
        Ok(Self {
            record,
            _lock: lock,
        })
    }

    /// The cluster's directory (files of every node and of the control plane's clients).
    pub fn base(&self) -> &Path {
        &self.record.base
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.record.undo();
        let _ = std::fs::remove_file(self.record.path());
    }
}

impl Record {
    fn path(&self) -> PathBuf {
        Path::new(STATE_DIR).join(format!("{}.record", self.prefix))
    }

    fn write(&self) -> Result<()> {
        let mut out = format!("prefix {}\nbase {}\n", self.prefix, self.base.display());
        for (k, v) in &self.sysctls {
            out.push_str(&format!("sysctl {k} {v}\n"));
        }
        for p in &self.created {
            out.push_str(&format!("created {}\n", p.display()));
        }
        let mut f = File::create(self.path())?;
        f.write_all(out.as_bytes())?;
        Ok(f.sync_all()?)
    }

    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let mut record = Record {
            prefix: String::new(),
            base: PathBuf::new(),
            sysctls: Vec::new(),
            created: Vec::new(),
        };
        for line in text.lines() {
            let mut words = line.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("prefix"), Some(p), None) => record.prefix = p.to_owned(),
                (Some("base"), Some(b), None) => record.base = b.into(),
                (Some("sysctl"), Some(k), Some(v)) => record.sysctls.push((k.into(), v.into())),
                (Some("created"), Some(p), None) => record.created.push(p.into()),
                _ => bail!("unexpected line {line:?}"),
            }
        }
        // Everything undone is named by the prefix: refuse one that could match other things.
        if record.prefix.len() < 3 || !record.base.starts_with("/dev/shm") {
            bail!("implausible record {text:?}");
        }
        Ok(record)
    }

    /// Kills every process in the cluster's cgroups, removes them, unmounts and deletes its
    /// directory, deletes its namespaces, and restores the sysctls. Best effort, idempotent.
    fn undo(&self) {
        kill_cgroups(&self.prefix);
        remove_cgroups(&self.prefix);
        unmount_under(&self.base);
        let _ = std::fs::remove_dir_all(&self.base);
        delete_namespaces(&self.prefix);
        for (k, v) in &self.sysctls {
            if let Err(e) = std::fs::write(Path::new("/proc/sys").join(k), v) {
                tracing::warn!("restoring sysctl {k}={v}: {e}");
            }
        }
        for p in &self.created {
            unmount_under(p);
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// `/sys/fs/cgroup/<controller>/<prefix>-*` of one controller.
fn cgroups_of(controller: &str, prefix: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup").join(controller);
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
        })
        .map(|e| e.path())
        .collect()
}

/// Every directory below `dir`, children before parents.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(tree(&e.path()));
            }
        }
    }
    out.push(dir.to_owned());
    out
}

/// SIGKILLs every process in the cgroups named by `prefix` (the pids hierarchy holds every
/// node's daemons, shims and containers) until none is left.
pub fn kill_cgroups(prefix: &str) {
    kill_in(&cgroups_of("pids", prefix));
}

/// SIGKILLs every process in the cgroups `roots` and below until none is left, and reaps
/// those that were orphaned to this process (`become_subreaper`).
pub fn kill_in(roots: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = std::collections::BTreeSet::new();
    loop {
        let mut left = 0;
        for dir in roots.iter().flat_map(|r| tree(r)) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                left += 1;
                killed.insert(pid);
                // SAFETY: plain syscall.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if left == 0 || Instant::now() > deadline {
            if left > 0 {
                tracing::warn!("{left} processes of {roots:?} would not die");
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in killed {
        // Not our child (ECHILD) or reaped: either way nothing is left of it.
        // SAFETY: plain syscall; a null status pointer is allowed.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
}

/// Makes this process the reaper of its orphaned descendants: containerd's shims and the
/// containers they start are daemonized, and this machine's init does not reap, so killed
/// ones would stay zombies.
pub fn become_subreaper() {
    // SAFETY: plain prctl on this process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
}

fn remove_cgroups(prefix: &str) {
    for controller in CONTROLLERS {
        for root in cgroups_of(controller, prefix) {
            for dir in tree(&root) {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

/// Creates `/<name>` in every controller, with the parent's cpus and memory nodes (a new
/// cpuset has none, and the kubelet reports "missing paths").
pub fn create_cgroup(name: &str) -> Result<()> {
    for controller in CONTROLLERS {
        let root = Path::new("/sys/fs/cgroup").join(controller);
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if *controller == "cpuset" {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let parent = std::fs::read_to_string(root.join(file))?;
                std::fs::write(dir.join(file), parent.trim())
                    .with_context(|| format!("writing {}/{file}", dir.display()))?;
            }
        }
    }
    Ok(())
}

/// Moves `pid` into the pids cgroup `/<name>` (created if needed): whatever it starts later
/// (containerd's shims) stays there, so a node's processes can all be found and killed.
pub fn adopt(name: &str, pid: u32) -> Result<()> {
    let dir = Path::new("/sys/fs/cgroup/pids").join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("moving {pid} into {}", dir.display()))
}

/// Lazily unmounts every mount at or below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: plain syscall with a valid C string.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> PathBuf {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => out.push_str(&code),
            }
        } else {
            out.push(c);
        }
    }
    PathBuf::from(out)
}

fn delete_namespaces(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        if let Some(name) = e.file_name().to_str()
            && name.starts_with(&format!("{prefix}-"))
        {
            let _ = crate::netns::ip(&["netns", "del", name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/dev/shm/a\040b\134c"),
            PathBuf::from(r"/dev/shm/a b\c")
        );
    }
}
