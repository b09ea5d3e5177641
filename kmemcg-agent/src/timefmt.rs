//! Times for people: the Unix seconds of audit records as a local date and time.
use jiff::{Timestamp, tz::TimeZone};

/// `2026-11-23 20:41:07.125` in the system's time zone (UTC where it has none, as in a
/// minimal container image); the plain number when it is no valid time.
pub fn local_datetime(unix_seconds: f64) -> String {
    in_zone(unix_seconds, &TimeZone::system())
}

fn in_zone(unix_seconds: f64, zone: &TimeZone) -> String {
    // Whole milliseconds first: strftime truncates, and 0.125 s is 0.12499.. as a float.
    let millis = (unix_seconds * 1e3).round();
    if !millis.is_finite() {
        return format!("{unix_seconds:.3}");
    }
    // A float far out of range saturates as an integer; the product must not overflow.
    let nanos = (millis as i128).checked_mul(1_000_000);
    match nanos.map(Timestamp::from_nanosecond) {
        Some(Ok(t)) => t
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%d %H:%M:%S%.3f")
            .to_string(),
        _ => format!("{unix_seconds:.3}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_become_a_date_and_time() {
        assert_eq!(
            in_zone(1_795_466_467.125, &TimeZone::UTC),
            "2026-11-23 20:41:07.125"
        );
        let berlin = TimeZone::get("Europe/Berlin").ok();
        if let Some(berlin) = berlin {
            assert_eq!(in_zone(0.0, &berlin), "1970-01-01 01:00:00.000");
        }
        assert_eq!(in_zone(f64::NAN, &TimeZone::UTC), "NaN");
        assert_eq!(
            in_zone(1e30, &TimeZone::UTC),
            "1000000000000000019884624838656.000"
        );
    }
}
