//! Sizes and durations as people write and read them: IEC sizes (`8M`, `1.50 KiB`) and short
//! durations (`5s`, `500ms`). The one place that parses and formats them.
use std::time::Duration;

use humansize::{BINARY, format_size};

/// `1.5 MiB`, `512 B`.
pub fn iec(bytes: u64) -> String {
    format_size(bytes, BINARY)
}

/// A byte count written `8388608`, `8M`, `8MiB`, `512K`, `1G` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || {
        format!(
            "`{s}` is not a size: write bytes or a number with K, M or G (powers of 1024), e.g. 8M"
        )
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A duration written `5s`, `500ms`, `2m`, `1h` or a bare number of seconds (`0.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a duration: write e.g. 5s, 500ms, 2m");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// `1500ms`, `5s`: how [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_iec() {
        assert_eq!(iec(512), "512 B");
        assert_eq!(iec(1536), "1.50 KiB");
        assert_eq!(iec(3 << 20), "3 MiB");
    }

    #[test]
    fn sizes_are_iec() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["8X", "", "M", "-1M", "1.5M"] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains("not a size") && e.contains("8M"), "{e}");
        }
        assert!(
            parse_size("99999999999T")
                .expect_err("overflow")
                .contains("too large")
        );
    }

    #[test]
    fn durations_read_back() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        let d = Duration::from_millis(1500);
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
}
