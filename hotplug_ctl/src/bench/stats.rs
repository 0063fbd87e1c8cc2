//! The bench's arithmetic and parsers: spreads, ratios, the guest programs' `key=value` lines,
//! kernel console timestamps and /proc figures. No I/O here, so all of it is unit-tested.

use std::collections::BTreeMap;

use serde::Serialize;

/// min / median / max of a set of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// The spread of `samples` (NaNs sort last; an empty set is all zeros). The median of an
    /// even count is the mean of the middle two.
    pub fn of(samples: &[f64]) -> Spread {
        let mut v: Vec<f64> = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Spread::default();
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Spread {
            min: v[0],
            median,
            max: v[n - 1],
            n,
        }
    }
}

/// `a / b`, or None when the baseline is zero (nothing to compare with).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// The `key=value` words of a guest program's output line (other words are ignored).
pub fn words(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A number among `words`, or an error naming what is missing.
pub fn number(words: &BTreeMap<String, String>, key: &str) -> Result<f64, String> {
    let v = words
        .get(key)
        .ok_or_else(|| format!("the guest program printed no {key}="))?;
    v.parse::<f64>()
        .map_err(|_| format!("{key}={v:?} is not a number"))
}

/// A `bench fill` line as MB/s (10^6 bytes) and frames/s.
pub fn fill_rates(line: &str) -> Result<(f64, f64), String> {
    let w = words(line);
    let (bytes, frames, ns) = (
        number(&w, "bytes")?,
        number(&w, "frames")?,
        number(&w, "ns")?,
    );
    if ns <= 0.0 {
        return Err(format!("fill ran for {ns} ns"));
    }
    let secs = ns / 1e9;
    Ok((bytes / 1e6 / secs, frames / secs))
}

/// A `bench reads` line as nanoseconds per read.
pub fn ns_per_read(line: &str) -> Result<f64, String> {
    let w = words(line);
    let (reads, ns) = (number(&w, "reads")?, number(&w, "ns")?);
    if reads <= 0.0 {
        return Err("no reads".into());
    }
    Ok(ns / reads)
}

/// A `bench cycle` line as the card's address after the cycle and the cycle's seconds.
pub fn cycle_result(line: &str) -> Result<(String, f64), String> {
    let w = words(line);
    let ns = number(&w, "ns")?;
    let bdf = w.get("bdf").ok_or("no bdf")?;
    // The agent found it in sysfs; still, only a plain function name goes into later commands.
    if bdf.is_empty()
        || !bdf
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    {
        return Err(format!("bad bdf {bdf:?}"));
    }
    if ns <= 0.0 {
        return Err(format!("cycle took {ns} ns"));
    }
    Ok((bdf.clone(), ns / 1e9))
}

/// The printk timestamp of a console line (`[   12.345678] ...`), in seconds.
pub fn printk_seconds(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, _) = rest.split_once(']')?;
    stamp.trim().parse().ok()
}

/// `VmRSS` of a /proc/PID/status text, in KiB.
pub fn rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The time on CPU (ns) of a /proc/PID/task/TID/schedstat text (its first field).
pub fn schedstat_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// utime + stime (clock ticks) of a /proc/PID/stat text. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last ')'.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based, proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_odd_even_and_empty() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 2.0, 3.0, 3));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
        assert_eq!(Spread::of(&[]), Spread::default());
        assert_eq!(Spread::of(&[7.0]).median, 7.0);
    }

    #[test]
    fn ratios_refuse_a_zero_baseline() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn parses_the_guest_programs_lines() {
        let (mbs, fps) =
            fill_rates("mode=1024x768 frame_bytes=3145728 frames=20 bytes=62914560 ns=2000000000")
                .unwrap();
        assert!((mbs - 31.45728).abs() < 1e-9);
        assert!((fps - 10.0).abs() < 1e-12);
        assert!(fill_rates("frames=1 ns=5").is_err());
        assert!(fill_rates("frames=1 bytes=2 ns=0").is_err());
        assert!(fill_rates("frames=x bytes=2 ns=1").is_err());
        assert_eq!(
            ns_per_read("reads=1000 ns=5000000 value=0x0").unwrap(),
            5000.0
        );
        assert!(ns_per_read("reads=0 ns=5").is_err());
        assert!(ns_per_read("vanish-agent: error").is_err());
        assert_eq!(
            cycle_result("bdf=0000:01:00.0 away_ns=150000000 ns=1250000000").unwrap(),
            ("0000:01:00.0".to_string(), 1.25)
        );
        assert!(cycle_result("bdf=../x ns=1").is_err());
        assert!(cycle_result("bdf=0000:01:00.0 ns=0").is_err());
        assert!(cycle_result("ns=5").is_err());
    }

    #[test]
    fn parses_printk_stamps() {
        assert_eq!(
            printk_seconds("[    3.250001] [drm] Initialized bochs-drm 1.0.0"),
            Some(3.250001)
        );
        assert_eq!(printk_seconds("vanish: init on 6.12"), None);
        assert_eq!(printk_seconds("[x] y"), None);
    }

    #[test]
    fn parses_proc_figures() {
        let status = "Name:\tvanish\nVmPeak:\t  9000 kB\nVmRSS:\t   41234 kB\nThreads:\t3\n";
        assert_eq!(rss_kib(status), Some(41234));
        assert_eq!(rss_kib("Name: x\n"), None);
        // A name with a space and a ')' in it must not shift the fields.
        let stat = "4242 (van ish) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0 1 2 3";
        assert_eq!(cpu_ticks(stat), Some(22));
        let odd = "7 (a) b) R 1 1 1 0 -1 0 0 0 0 0 40 2 0 0";
        assert_eq!(cpu_ticks(odd), Some(42));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(schedstat_ns("123456789 4242 17\n"), Some(123456789));
        assert_eq!(schedstat_ns(""), None);
    }
}
