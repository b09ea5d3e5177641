//! Debian version ordering (deb-version(7)), to pick the newest kernel of a series the way
//! apt would: `7.3.4-1~bpo13+1` is newer than `7.3~rc7-1~exp1`, `6.1.192-3` than `6.1.192-2`.
use std::cmp::Ordering;

/// Compares two Debian versions `[epoch:]upstream[-revision]`.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (epoch_a, upstream_a, revision_a) = split(a);
    let (epoch_b, upstream_b, revision_b) = split(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| compare_part(upstream_a, upstream_b))
        .then_with(|| compare_part(revision_a, revision_b))
}

/// The upstream part: without epoch and revision (`7.3~rc7` of `7.3~rc7-1~exp1`).
pub fn upstream(version: &str) -> &str {
    split(version).1
}

fn split(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) => (epoch.parse().unwrap_or(0), rest),
        None => (0, version),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// dpkg's weight of a non-digit character: `~` before the end, the end before letters,
/// letters before other characters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's verrevcmp: alternating runs of non-digits (by weight) and digits (numerically).
fn compare_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while a.get(i).is_some_and(|c| !c.is_ascii_digit())
            || b.get(j).is_some_and(|c| !c.is_ascii_digit())
        {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while let (Some(ca), Some(cb)) = (a.get(i), b.get(j)) {
            if !ca.is_ascii_digit() || !cb.is_ascii_digit() {
                break;
            }
            if first_difference == Ordering::Equal {
                first_difference = ca.cmp(cb);
            }
            i += 1;
            j += 1;
        }
        // The longer run of digits is the bigger number.
        if a.get(i).is_some_and(u8::is_ascii_digit) {
            return Ordering::Greater;
        }
        if b.get(j).is_some_and(u8::is_ascii_digit) {
            return Ordering::Less;
        }
        if first_difference != Ordering::Equal {
            return first_difference;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_dpkg() {
        let ordered = [
            "6.1.99-1",
            "6.1.192-2",
            "6.1.192-3",
            "6.12.117-1~deb12u1",
            "6.12.117-1",
            "7.3~rc7-1~exp1",
            "7.3-1",
            "7.3.4-1~bpo13+1",
            "7.3.4-1",
            "7.3.10-1",
            "1:1.0-1",
        ];
        for pair in ordered.windows(2) {
            assert_eq!(compare(pair[0], pair[1]), Ordering::Less, "{pair:?}");
            assert_eq!(compare(pair[1], pair[0]), Ordering::Greater, "{pair:?}");
        }
        assert_eq!(compare("6.12.010-1", "6.12.10-1"), Ordering::Equal);
        assert_eq!(compare("1.0a", "1.0+"), Ordering::Less);
        assert_eq!(compare("1.0", "1.0a"), Ordering::Less);
        assert_eq!(upstream("7.3~rc7-1~exp1"), "7.3~rc7");
        assert_eq!(upstream("1:2.0"), "2.0");
    }
}
