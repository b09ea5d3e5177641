//! Signal names: the one table that parses `SIGTERM`/`TERM`/`15` and names 15 `SIGTERM`.

/// The signals a rule may name, by name without `SIG`.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("STOP", libc::SIGSTOP),
    ("CONT", libc::SIGCONT),
];

/// Signal names (`SIGTERM`, `TERM`, `term`) and numbers (1 to 64).
pub fn parse(s: &str) -> Result<i32, String> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    if let Some((_, sig)) = SIGNALS.iter().find(|(n, _)| *n == name) {
        return Ok(*sig);
    }
    match name.parse::<i32>() {
        Ok(v) if (1..=64).contains(&v) => Ok(v),
        _ => Err(format!(
            "`{s}` is not a signal: use a name like SIGTERM, SIGINT, SIGUSR1, SIGKILL or a number"
        )),
    }
}

/// `SIGTERM` for 15; the number for signals without a name here.
pub fn name(sig: i32) -> String {
    match SIGNALS.iter().find(|(_, s)| *s == sig) {
        Some((n, _)) => format!("SIG{n}"),
        None => sig.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        assert_eq!(parse("SIGTERM"), Ok(libc::SIGTERM));
        assert_eq!(parse("kill"), Ok(libc::SIGKILL));
        assert_eq!(parse("10"), Ok(10));
        assert!(parse("SIGFOO").is_err());
        assert!(parse("0").is_err());
        for (_, sig) in SIGNALS {
            assert_eq!(parse(&name(*sig)), Ok(*sig));
        }
        assert_eq!(name(40), "40");
    }
}
