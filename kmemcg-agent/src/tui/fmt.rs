//! Short numbers for table cells: IEC sizes with three significant digits, signed rates,
//! exact bytes when asked.

const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// `512 B`, `1.50 KiB`, `12.3 MiB`, `123 GiB`: at most 8 characters.
pub(crate) fn size(bytes: u64, exact: bool) -> String {
    if exact {
        return bytes.to_string();
    }
    scaled(bytes as f64)
}

fn scaled(value: f64) -> String {
    if value < 1024.0 {
        return format!("{value:.0} B");
    }
    let mut v = value;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let u = UNITS[unit];
    if v < 10.0 {
        format!("{v:.2} {u}")
    } else if v < 100.0 {
        format!("{v:.1} {u}")
    } else {
        format!("{v:.0} {u}")
    }
}

/// Bytes per second with a sign: `+1.50 KiB`, `-512 B`, `0`; `-` when unknown.
pub(crate) fn byte_rate(rate: Option<f64>, exact: bool) -> String {
    let Some(r) = rate else {
        return "-".into();
    };
    let magnitude = r.abs();
    if magnitude < 0.5 {
        return "0".into();
    }
    let sign = if r < 0.0 { '-' } else { '+' };
    if exact {
        format!("{sign}{magnitude:.0}")
    } else {
        format!("{sign}{}", scaled(magnitude))
    }
}

/// Events per second: `12`, `1.2k`, `45k`, `3.4M`; `-` when unknown.
pub(crate) fn count_rate(rate: Option<f64>, exact: bool) -> String {
    let Some(r) = rate else {
        return "-".into();
    };
    count(r.max(0.0), exact)
}

/// A count: `123`, `12.3k` unless exact.
pub(crate) fn count(n: f64, exact: bool) -> String {
    if exact || n < 10_000.0 {
        format!("{n:.0}")
    } else if n < 1e6 {
        format!("{:.1}k", n / 1e3)
    } else if n < 1e9 {
        format!("{:.1}M", n / 1e6)
    } else {
        format!("{:.1}G", n / 1e9)
    }
}

/// `3d04h`, `1h02m`, `5m07s`, `42s`.
pub(crate) fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `1s`, `0.5s`.
pub(crate) fn delay(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

/// Cuts `s` to `width` characters, keeping the end (`…foo.service`): the end of a cgroup path
/// says most.
pub(crate) fn keep_end(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(size(512, false), "512 B");
        assert_eq!(size(1536, false), "1.50 KiB");
        assert_eq!(size(50 << 20, false), "50.0 MiB");
        assert_eq!(size(300 << 30, false), "300 GiB");
        assert_eq!(size(1536, true), "1536");
        assert_eq!(byte_rate(None, false), "-");
        assert_eq!(byte_rate(Some(0.1), false), "0");
        assert_eq!(byte_rate(Some(2048.0), false), "+2.00 KiB");
        assert_eq!(byte_rate(Some(-100.0), false), "-100 B");
        assert_eq!(byte_rate(Some(-100.0), true), "-100");
        assert_eq!(count_rate(Some(12_345.0), false), "12.3k");
        assert_eq!(count_rate(Some(12_345.0), true), "12345");
        assert_eq!(duration(3725), "1h02m");
        assert_eq!(duration(42), "42s");
        assert_eq!(delay(std::time::Duration::from_millis(500)), "0.5s");
        assert_eq!(keep_end("/system.slice/foo.service", 8), "…service");
        assert_eq!(keep_end("/a", 8), "/a");
    }
}
