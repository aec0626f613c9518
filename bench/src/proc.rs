//! The shared clock, and what `/proc` says about CPU time, memory and the machine.

use std::sync::OnceLock;
use tokio::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Starts the shared clock. Every timestamp the load generator puts in `ce-benchts` and every
/// arrival time the sink takes is nanoseconds since this instant (monotonic; both sides run
/// in this process, so they share it).
pub fn init_clock() {
    ORIGIN.get_or_init(Instant::now);
}

/// The shared clock's origin.
pub fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the origin.
pub fn now_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// utime + stime from a `/proc/.../stat` line, in clock ticks.
pub fn parse_stat_cpu(stat: &str) -> Option<(String, u64)> {
    // "pid (comm) state ppid ..." — comm may hold spaces and parentheses, so split at the
    // last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU seconds used so far by a whole process.
pub fn process_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat_cpu(&s))
        .map_or(0.0, |(_, t)| t as f64 / clock_ticks_per_second() as f64)
}

/// CPU seconds used so far by the threads of this process whose name starts with `prefix`.
pub fn threads_cpu(prefix: &str) -> f64 {
    let mut ticks = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            if let Some((comm, t)) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| parse_stat_cpu(&s))
            {
                if comm.starts_with(prefix) {
                    ticks += t;
                }
            }
        }
    }
    ticks as f64 / clock_ticks_per_second() as f64
}

/// Machine-wide CPU time from the first line of `/proc/stat`: (all ticks, stolen ticks).
/// Steal is time the hypervisor ran something else while this VM wanted the CPU.
pub fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_cpu_line(stat.lines().next().unwrap_or_default())
}

/// (sum of all fields, steal) of a `/proc/stat` `cpu` line.
pub fn parse_cpu_line(line: &str) -> (u64, u64) {
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user.
    let total = v.iter().take(8).sum();
    (total, v.get(7).copied().unwrap_or(0))
}

/// Percentage of machine CPU time stolen between two [`cpu_ticks`] readings.
pub fn steal_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.0.saturating_sub(before.0);
    if total == 0 {
        return 0.0;
    }
    after.1.saturating_sub(before.1) as f64 * 100.0 / total as f64
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Sets this process's niceness (best effort: without the privilege it stays as it was).
pub fn renice(nice: i32) {
    // SAFETY: setpriority only changes the scheduling priority of the calling thread/process.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
}

/// Switches this thread (and so the threads and processes it starts) to SCHED_FIFO at
/// `priority` (best effort).
pub fn set_fifo(priority: i32) {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: param is a valid sched_param for the duration of the call.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
    }
}

/// The scheduling policy in force, for the report.
pub fn scheduler() -> String {
    // SAFETY: sched_getscheduler and sched_getparam only read this thread's settings.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        let mut param = libc::sched_param { sched_priority: 0 };
        libc::sched_getparam(0, &mut param);
        match policy {
            libc::SCHED_FIFO => format!("SCHED_FIFO, priority {}", param.sched_priority),
            libc::SCHED_RR => format!("SCHED_RR, priority {}", param.sched_priority),
            _ => format!("normal (nice {})", nice()),
        }
    }
}

/// The niceness in force.
pub fn nice() -> i32 {
    // SAFETY: getpriority only reads the priority; -1 is a valid answer, so errno is ignored.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// The machine, for the report.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub kernel: String,
    pub scheduler: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mib,
            kernel,
            scheduler: scheduler(),
        }
    }
}

/// The 1-minute load average (other work on the machine skews every figure).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_from_proc_stat() {
        let a = parse_cpu_line("cpu  100 0 50 800 0 0 10 40 0 0");
        assert_eq!(a, (1000, 40));
        let b = parse_cpu_line("cpu  150 0 60 900 0 0 10 80 0 0");
        assert_eq!(steal_percent(a, b), 40.0 * 100.0 / 200.0);
        assert_eq!(steal_percent(a, a), 0.0);
    }

    #[test]
    fn stat_line_with_spaces_in_the_name() {
        let line = "4242 (bench load) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(line), Some(("bench load".into(), 325)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }
}
