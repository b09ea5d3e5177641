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
];

/// Signals that neither end nor warn a process: they stop or continue it (a stopped process
/// keeps its kernel memory), so a limit's action may not send them.
const REFUSED: &[(&str, i32)] = &[
    ("STOP", libc::SIGSTOP),
    ("CONT", libc::SIGCONT),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
];

/// Signal names (`SIGTERM`, `TERM`, `term`) and numbers (1 to 64), except the ones that stop
/// or continue a process ([`REFUSED`]).
pub fn parse(s: &str) -> Result<i32, String> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig = match SIGNALS.iter().chain(REFUSED).find(|(n, _)| *n == name) {
        Some((_, sig)) => *sig,
        None => match name.parse::<i32>() {
            Ok(v) if (1..=64).contains(&v) => v,
            _ => {
                return Err(format!(
                    "`{s}` is not a signal: use a name like SIGTERM, SIGINT, SIGUSR1, SIGKILL \
                     or a number"
                ));
            }
        },
    };
    if let Some((n, _)) = REFUSED.iter().find(|(_, r)| *r == sig) {
        return Err(format!(
            "`{s}` (SIG{n}) stops or continues a process without ending it, and a stopped \
             process keeps its kernel memory: use SIGTERM, SIGINT or SIGKILL to end it, a \
             signal it handles (SIGUSR1, SIGHUP) to warn it, or --action freeze to stop it"
        ));
    }
    Ok(sig)
}

/// `SIGTERM` for 15; the number for signals without a name here.
pub fn name(sig: i32) -> String {
    match SIGNALS.iter().chain(REFUSED).find(|(_, s)| *s == sig) {
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

    #[test]
    fn signals_that_only_stop_or_continue_are_refused() {
        for s in [
            "SIGSTOP", "stop", "19", "SIGCONT", "18", "SIGTSTP", "TTIN", "SIGTTOU", "22",
        ] {
            let e = parse(s).expect_err(s);
            assert!(e.contains("stops or continues"), "{s}: {e}");
        }
        assert_eq!(name(libc::SIGSTOP), "SIGSTOP");
    }
}
