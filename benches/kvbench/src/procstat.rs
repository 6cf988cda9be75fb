//! CPU time and resident memory of server processes, read from `/proc`.

/// User + system CPU seconds used so far by all `pids`; `None` when there are none or one
/// cannot be read (the process is gone).
pub fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()?? as f64;
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        total += (utime + stime) / ticks_per_second;
    }
    Some(total)
}

/// Mean `VmRSS` of `pids` in MiB.
pub fn mean_rss_mb(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    let mut total_kb = 0.0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        total_kb += line.split_whitespace().nth(1)?.parse::<f64>().ok()?;
    }
    Some(total_kb / 1024.0 / pids.len() as f64)
}
