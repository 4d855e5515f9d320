//! The processes under test: the broker and the gateway run as children of this same binary,
//! so that their CPU time and memory are theirs alone. Their logs are read for the addresses
//! they listen on and for trouble; /proc tells what they cost.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The children's log level: `info` has the listening and uplink lines we wait for and no
/// per-message lines, so logging costs them nothing during the measurement. Fixed rather than
/// taken from RUST_LOG so that the figures do not depend on the caller's environment.
const CHILD_LOG: &str = "aiot=info,warn,rumqttd=off";

/// The children, killed when this is dropped and also on panic: the release profile aborts on
/// panic, which skips destructors, so a panic hook does it there.
pub struct Lab {
    children: Arc<Mutex<Vec<Child>>>,
    dir: PathBuf,
    exe: PathBuf,
}

impl Lab {
    /// Makes a private directory for the key file and arms the kill-on-panic hook.
    pub fn new() -> anyhow::Result<Lab> {
        let exe = std::env::current_exe().context("cannot find this program to run its roles")?;
        let dir = std::env::temp_dir().join(format!(
            "aiot-bench-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let children: Arc<Mutex<Vec<Child>>> = Arc::default();
        let weak: Weak<Mutex<Vec<Child>>> = Arc::downgrade(&children);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(children) = weak.upgrade() {
                // try_lock: the panic may have happened while the lock was held.
                if let Ok(mut children) = children.try_lock() {
                    kill_all(&mut children);
                }
            }
            previous(info);
        }));
        Ok(Lab { children, dir, exe })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `aiot ARGS...` with its log on a pipe that a thread keeps draining (a full pipe
    /// would block the child's logging, and with it the child).
    pub fn spawn(&self, role: &'static str, args: &[OsString]) -> anyhow::Result<Proc> {
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .env("RUST_LOG", CHILD_LOG)
            // The bench's own loopback roles: a root bench runs them as root too.
            .env(crate::runtime::root::ALLOW_ROOT_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the {role}: {}", self.exe.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("the child's stderr is piped")?;
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
        let log: Arc<Log> = Arc::default();
        let sink = log.clone();
        std::thread::Builder::new()
            .name(format!("{role} log"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    sink.push(line);
                }
                sink.end();
            })
            .context("cannot start a thread to read a child's log")?;
        Ok(Proc {
            role,
            pid,
            spawned,
            log,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        kill_all(&mut self.children.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill_all(children: &mut Vec<Child>) {
    for mut child in children.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A child's log lines, each with the moment it was read.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<(Instant, String)>,
    ended: bool,
}

impl Log {
    fn push(&self, line: String) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.lines.push((Instant::now(), line));
        self.changed.notify_all();
    }

    fn end(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ended = true;
        self.changed.notify_all();
    }
}

/// One running child.
pub struct Proc {
    pub role: &'static str,
    pub pid: u32,
    /// Just before `spawn`, for the start-to-listening time.
    pub spawned: Instant,
    log: Arc<Log>,
}

impl Proc {
    /// Waits for a log line containing every one of `needles`; returns when it was read, and
    /// the line.
    pub fn wait_for_log(
        &self,
        needles: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let mut state = self
            .log
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some((at, line)) = state
                .lines
                .iter()
                .find(|(_, line)| needles.iter().all(|n| line.contains(n)))
            {
                return Ok((*at, line.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.ended || left.is_zero() {
                let why = if state.ended { "exited" } else { "timed out" };
                let log: Vec<&str> = state.lines.iter().map(|(_, l)| l.as_str()).collect();
                bail!(
                    "the {} {why} before logging {needles:?}; its log:\n{}",
                    self.role,
                    log.join("\n")
                );
            }
            state = self
                .log
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The address of the `listening` line that contains `needle`, and how long after the
    /// spawn it was read.
    pub fn listening(
        &self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<(SocketAddr, Duration)> {
        let (at, line) = self.wait_for_log(&["listening", needle], timeout)?;
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("addr="))
            .with_context(|| format!("no addr= in the {}'s line: {line}", self.role))?;
        let addr = addr
            .parse()
            .with_context(|| format!("not a socket address in the {}'s line: {line}", self.role))?;
        Ok((addr, at.duration_since(self.spawned)))
    }

    /// Log lines at warning level or above, which during a benchmark mean trouble (a client
    /// dropped, an uplink that fell behind).
    pub fn warnings(&self) -> Vec<String> {
        let state = self
            .log
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state
            .lines
            .iter()
            .filter(|(_, line)| line.contains(" WARN ") || line.contains(" ERROR "))
            .map(|(_, line)| line.clone())
            .collect()
    }

    /// Log lines containing `needle`, counted.
    pub fn count_log(&self, needle: &str) -> usize {
        let state = self
            .log
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state
            .lines
            .iter()
            .filter(|(_, line)| line.contains(needle))
            .count()
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        sample(self.pid)
    }
}

/// What /proc says about a process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set (VmHWM), KiB.
    pub peak_kib: u64,
}

pub fn sample(pid: u32) -> anyhow::Result<Sample> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("cannot read {stat_path}"))?;
    let cpu_ticks =
        cpu_ticks(&stat).with_context(|| format!("cannot parse {stat_path}: {stat}"))?;
    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("cannot read {status_path}"))?;
    let field =
        |key| status_kib(&status, key).with_context(|| format!("no {key} in {status_path}"));
    Ok(Sample {
        cpu_ticks,
        rss_kib: field("VmRSS")?,
        peak_kib: field("VmHWM")?,
    })
}

/// utime + stime from the text of /proc/PID/stat. The second field, the command name, is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted from the
/// last `)`: after it come state (field 3), ..., utime (14) and stime (15).
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   1234 kB` line of /proc/PID/status, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut words = value.split_whitespace();
        let number = words.next()?.parse().ok()?;
        (words.next() == Some("kB")).then_some(number)
    })
}

/// The machine's UDP counters (`/proc/net/snmp`): `(RcvbufErrors, InErrors)`, datagrams
/// dropped because a socket's receive buffer was full, and all receive errors. Machine-wide
/// (this network namespace), so other traffic counts too; `None` if unreadable.
pub fn udp_drops() -> Option<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    Some((
        snmp_field(&snmp, "Udp", "RcvbufErrors")?,
        snmp_field(&snmp, "Udp", "InErrors")?,
    ))
}

/// A field of `/proc/net/snmp`, where each protocol has a line of names and then a line of
/// values, both starting with `<Proto>:`.
pub fn snmp_field(snmp: &str, proto: &str, key: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|line| line.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|name| name == key)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Clock ticks per second, the unit of /proc's CPU times. The `nix` build here lacks
/// `sysconf` and unsafe code is forbidden, so ask `getconf`; Linux has used 100 everywhere
/// for decades, which is the fallback.
pub fn clock_ticks_per_second() -> u64 {
    const USUAL: u64 = 100;
    Command::new("getconf")
        .arg("CLK_TCK")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(USUAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_count_fields_after_the_last_parenthesis() {
        let plain = "1234 (aiot) S 1 1234 1234 0 -1 4194560 500 0 0 0 37 12 0 0 20 0 3 0 100 \
                     12345678 900 18446744073709551615";
        assert_eq!(cpu_ticks(plain), Some(49));
        // A command name can hold anything a file name can, ") S 1 2" included.
        let tricky = "99 (a) S 1 2 (x)) R 1 99 99 0 -1 0 0 0 0 0 7 5 0 0 20 0 1 0 5 1 1 1";
        assert_eq!(cpu_ticks(tricky), Some(12));
        assert_eq!(cpu_ticks("1 (short) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis at all"), None);
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\taiot\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(4096));
        assert_eq!(status_kib(status, "VmHWM"), Some(5120));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_kib(status, "Threads"), None, "no unit, not a size");
        assert_eq!(status_kib("VmRSSX:\t1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn snmp_fields_are_found_by_name() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    Udp: 100 2 7 90 5\n\
                    UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                    UdpLite: 0 0 0 0 0\n";
        assert_eq!(snmp_field(snmp, "Udp", "RcvbufErrors"), Some(5));
        assert_eq!(snmp_field(snmp, "Udp", "InErrors"), Some(7));
        assert_eq!(snmp_field(snmp, "Ip", "DefaultTTL"), Some(64));
        assert_eq!(snmp_field(snmp, "Udp", "Nothing"), None);
        assert_eq!(snmp_field(snmp, "Tcp", "InErrors"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample(std::process::id()).expect("our own /proc entry");
        assert!(sample.rss_kib > 0);
        assert!(sample.peak_kib >= sample.rss_kib);
        assert!(clock_ticks_per_second() > 0);
    }
}
