//! Pure parsers for the forms variables and annotations are written in:
//! durations, sizes (binary units and Kubernetes quantities), percents and
//! rung lists, profile lists, the pprof target URL, and the quota.
//!
//! A string enters, a typed value or a short reason leaves; the caller adds
//! the variable's name and the expected form. The sidecar's environment, the
//! live annotations and the injector all call these same functions, so a
//! value one of them accepts the others accept too.

use std::time::Duration;

use crate::profiles::ProfileKind;

/// A value fit to print: a URL's user and password are masked, since an
/// error message goes to logs.
pub fn redact(v: &str) -> String {
    match reqwest::Url::parse(v) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("REDACTED");
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        _ => v.to_string(),
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `250ms`, `10s`, `1h 30m`; a bare `0` means zero.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    if v == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(v).map_err(|e| e.to_string())
}

/// `true/false`, `1/0`, `yes/no`, `on/off`.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(String::new()),
    }
}

/// A size in bytes, in every form a Kubernetes quantity takes plus the
/// `KiB`/`MB` spellings people type: plain bytes, binary units (`Ki` … `Ei`,
/// `KiB` …), decimal units (`k`, `M`, `G`, `T`, `P`, `E`, `KB` …), milli
/// (`m`, rounded down), and a decimal exponent (`1e9`, `5E6`). The injector
/// checks `limits.memory` with this same function, so what it accepts here
/// the sidecar accepts too.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    if num.is_empty() || num == "." {
        return Err("it has no number".into());
    }
    let unit = unit.trim();
    // "E" alone is exa; "E" or "e" followed by a signed number is an exponent.
    let exponent = unit.strip_prefix(['e', 'E']).filter(|e| {
        !e.is_empty()
            && e.trim_start_matches(['+', '-'])
                .bytes()
                .all(|b| b.is_ascii_digit())
    });
    let (mult, div): (u64, u64) = match (unit, exponent) {
        (_, Some(e)) => {
            let e: i32 = e.parse().map_err(|_| format!("bad exponent {unit:?}"))?;
            if !(-18..=18).contains(&e) {
                return Err(format!("exponent {e} is out of range"));
            }
            let p = 10u64.pow(e.unsigned_abs());
            if e >= 0 {
                (p, 1)
            } else {
                (1, p)
            }
        }
        ("" | "B", _) => (1, 1),
        ("m", _) => (1, 1000),
        ("k" | "K" | "KB" | "kB", _) => (1_000, 1),
        ("M" | "MB", _) => (1_000_000, 1),
        ("G" | "GB", _) => (1_000_000_000, 1),
        ("T" | "TB", _) => (1_000_000_000_000, 1),
        ("P" | "PB", _) => (1_000_000_000_000_000, 1),
        ("E" | "EB", _) => (1_000_000_000_000_000_000, 1),
        ("Ki" | "KiB", _) => (1 << 10, 1),
        ("Mi" | "MiB", _) => (1 << 20, 1),
        ("Gi" | "GiB", _) => (1 << 30, 1),
        ("Ti" | "TiB", _) => (1 << 40, 1),
        ("Pi" | "PiB", _) => (1 << 50, 1),
        ("Ei" | "EiB", _) => (1 << 60, 1),
        (other, _) => return Err(format!("unknown unit {other:?}")),
    };
    if num.contains('.') || div > 1 {
        let f: f64 = num.parse().map_err(|_| "bad number".to_string())?;
        let bytes = f * mult as f64 / div as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err("too large".into());
        }
        Ok(bytes as u64)
    } else {
        let n: u64 = num.parse().map_err(|_| "too large".to_string())?;
        n.checked_mul(mult).ok_or_else(|| "too large".to_string())
    }
}

/// The longest timeout, grace, lead time or profile duration.
pub const MAX_SHORT_DURATION: Duration = Duration::from_secs(3600);
/// The longest period (quota refill, baseline refresh).
pub const MAX_LONG_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration within `min..=max`.
pub fn bounded(v: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(v)?;
    if d < min {
        Err(if min <= Duration::from_millis(1) {
            "it must be above zero".into()
        } else {
            format!("it must be at least {}", humantime::format_duration(min))
        })
    } else if d > max {
        Err(format!(
            "it must be at most {}",
            humantime::format_duration(max)
        ))
    } else {
        Ok(d)
    }
}

pub(crate) fn nonzero_size(v: &str) -> Result<u64, String> {
    match parse_size(v)? {
        0 => Err("it must be above zero".into()),
        n => Ok(n),
    }
}

/// A percent between 0 and 100, optionally written with `%`.
pub fn parse_percent(v: &str) -> Result<f64, String> {
    let p: f64 = v
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| String::new())?;
    if !(0.0..=100.0).contains(&p) || !p.is_finite() {
        return Err(format!("{p} is outside 0..100"));
    }
    Ok(p)
}

/// `80,90,95`: strictly ascending percents from 1 to below 100. A rung at
/// 100 % can never fire: the working set never exceeds the limit, the
/// kernel kills first.
pub fn parse_percent_list(v: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for part in v.split(',') {
        let p = parse_percent(part).map_err(|why| {
            if why.is_empty() {
                format!("{:?} is not a number", part.trim())
            } else {
                why
            }
        })?;
        if p < 1.0 {
            return Err(format!("{p} is below 1"));
        }
        if p >= 100.0 {
            return Err(format!(
                "a rung at {p} % can never fire, because the kernel kills at 100 %"
            ));
        }
        if let Some(last) = out.last() {
            if p <= *last {
                return Err("the rungs must ascend".into());
            }
        }
        out.push(p);
    }
    if out.len() > 16 {
        return Err("at most 16 rungs".into());
    }
    Ok(out)
}

/// `heap,goroutine`: known kinds, no duplicates.
pub fn parse_profiles(v: &str) -> Result<Vec<ProfileKind>, String> {
    let mut out = Vec::new();
    for part in v.split(',') {
        let part = part.trim();
        let k = ProfileKind::from_name(part).ok_or_else(|| format!("unknown profile {part:?}"))?;
        if out.contains(&k) {
            return Err(format!("{part} is listed twice"));
        }
        out.push(k);
    }
    Ok(out)
}

/// The pprof base URL must be plain `http://host:port/path`; returns it
/// without a trailing slash, and its port (used to find the process).
pub fn parse_target(v: &str) -> Result<(String, u16), String> {
    let url = reqwest::Url::parse(v).map_err(|e| e.to_string())?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme {} is not http", url.scheme()));
    }
    if url.host_str().is_none() {
        return Err("it has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it must not carry credentials (user:password@)".into());
    }
    let port = url.port_or_known_default().unwrap_or(80);
    // The URL as it will be fetched: the parser drops tabs and newlines,
    // which must not reach logs or /status either.
    Ok((url.as_str().trim_end_matches('/').to_string(), port))
}

/// The shortest quota period: a shorter one lets a burst refill so fast that
/// the quota no longer bounds what captures cost the app and the store.
pub const MIN_RATE_PERIOD: Duration = Duration::from_secs(1);
/// The largest burst.
pub const MAX_RATE_BURST: u32 = 1000;

/// The capture quota's burst: a whole number from 1 to [`MAX_RATE_BURST`].
pub fn parse_rate_burst(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_RATE_BURST).contains(&n) => Ok(n),
        _ => Err(format!(
            "{:?} is not a whole number from 1 to {MAX_RATE_BURST}",
            v.trim()
        )),
    }
}

/// The quota's refill period, from [`MIN_RATE_PERIOD`] to 30 days.
pub fn parse_rate_period(v: &str) -> Result<Duration, String> {
    bounded(v, MIN_RATE_PERIOD, MAX_LONG_DURATION)
}

/// A memory limit: a size above zero. `0.5` (half a byte) is zero.
pub fn parse_memory_limit(v: &str) -> Result<u64, String> {
    match parse_size(v)? {
        0 => Err("it must be at least one byte".into()),
        n => Ok(n),
    }
}
