//! What a VM's console says: the tests' libtest summaries, /init's result line, and the
//! kernel's own reports (panic, oops, warnings); and the table that sums up the matrix.
use std::time::Duration;

use super::initramfs::{BOOTED, HANG, RESULT};

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Tests failed, a test binary crashed, the kernel oopsed, or /init gave up.
    Fail(String),
    Panic(String),
    Timeout,
    /// The kernel of this entry could not be found (not a failure of kmemcg).
    Skipped(String),
}

impl Verdict {
    pub fn is_failure(&self) -> bool {
        !matches!(self, Verdict::Pass | Verdict::Skipped(_))
    }

    /// What went wrong, for people.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Pass => "passed".into(),
            Verdict::Fail(why) | Verdict::Panic(why) | Verdict::Skipped(why) => why.clone(),
            Verdict::Timeout => "timed out".into(),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "FAIL",
            Verdict::Panic(_) => "PANIC",
            Verdict::Timeout => "TIMEOUT",
            Verdict::Skipped(_) => "skipped",
        }
    }
}

/// A console log, read.
#[derive(Debug, PartialEq)]
pub struct Classified {
    pub verdict: Verdict,
    pub passed: u64,
    pub failed: u64,
    /// "5-level" or "4-level", as the guest reported it.
    pub paging: Option<String>,
    /// Kernel warnings that did not fail the run.
    pub notes: Vec<String>,
}

/// The kernel's message without its `[   12.345678] ` time stamp.
fn kernel_message(line: &str) -> &str {
    let trimmed = line.trim_start();
    match trimmed.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((stamp, rest)) if stamp.trim().parse::<f64>().is_ok() => rest,
        _ => trimmed,
    }
}

fn is_oops(message: &str) -> bool {
    [
        "BUG: ",
        "Oops: ",
        "kernel BUG at ",
        "general protection fault",
        "Unable to handle kernel",
    ]
    .iter()
    .any(|p| message.starts_with(p))
}

/// Reads a console log. `expected_paging` is what the CPU model asked for; a guest that
/// reports otherwise fails (the matrix would be testing something else than it says).
pub fn classify(lines: &[String], timed_out: bool, expected_paging: &str) -> Classified {
    let tests = count_tests(lines);
    let (passed, failed) = (tests.passed, tests.failed);
    let (mut paging, mut result, mut booted) = (None, None, false);
    let (mut panic, mut oops) = (None, None);
    let mut notes = Vec::new();
    let mut test_warning = None;
    for line in lines {
        if let Some(rest) = line.trim().strip_prefix(BOOTED) {
            booted = true;
            paging = rest.split_whitespace().nth(1).map(str::to_string);
        }
        if let Some(rest) = line.trim().strip_prefix(RESULT) {
            result = Some(rest.trim().to_string());
        }
        let message = kernel_message(line);
        if message.starts_with("Kernel panic - not syncing") {
            panic.get_or_insert_with(|| message.to_string());
        } else if is_oops(message) {
            oops.get_or_insert_with(|| message.to_string());
        } else if message.starts_with("WARNING: ") {
            // During boot it is the emulated machine's business; once the tests run, kmemcg
            // or its workloads are what the kernel is doing.
            if booted {
                test_warning.get_or_insert_with(|| message.to_string());
            } else {
                notes.push(format!("kernel {message} (during boot)"));
            }
        }
    }
    let verdict = if let Some(message) = panic {
        Verdict::Panic(message)
    } else if timed_out {
        Verdict::Timeout
    } else if let Some(message) = oops {
        Verdict::Fail(format!("kernel oops: {message}"))
    } else if let Some(message) = test_warning {
        Verdict::Fail(format!("kernel warning during the tests: {message}"))
    } else if let Some(wrong) = paging.as_deref().filter(|p| *p != expected_paging) {
        Verdict::Fail(format!(
            "booted with {wrong} paging, expected {expected_paging}"
        ))
    } else {
        match result.as_deref() {
            Some("PASS") if failed == 0 => Verdict::Pass,
            Some("PASS") => Verdict::Fail(format!("{failed} tests failed")),
            Some(other) => {
                let why = other.trim_start_matches("FAIL").trim();
                let why = why.trim_start_matches('(').trim_end_matches(')');
                match tests.failed_names.as_slice() {
                    [] => Verdict::Fail(why.to_string()),
                    names @ [_, _, _, _, ..] => Verdict::Fail(format!(
                        "failed: {} and {} more; {why}",
                        names[..3].join(", "),
                        names.len() - 3
                    )),
                    names => Verdict::Fail(format!("failed: {}; {why}", names.join(", "))),
                }
            }
            None if booted => Verdict::Fail("the VM stopped before the result line".into()),
            None => Verdict::Fail("the kernel did not reach /init".into()),
        }
    };
    Classified {
        verdict,
        passed,
        failed,
        paging,
        notes,
    }
}

struct TestCounts {
    passed: u64,
    failed: u64,
    failed_names: Vec<String>,
}

/// Sums each test binary's libtest summary; a binary cut short (timeout, panic) has none,
/// so its finished tests are counted one by one.
fn count_tests(lines: &[String]) -> TestCounts {
    let mut counts = TestCounts {
        passed: 0,
        failed: 0,
        failed_names: Vec::new(),
    };
    // The current binary's tests so far, and whether its summary came.
    let (mut passed, mut failed, mut summed) = (0, 0, false);
    for line in lines.iter().map(|l| l.trim()) {
        if line.starts_with("KMEMCG-VM-RUN:") {
            if !summed {
                counts.passed += passed;
                counts.failed += failed;
            }
            (passed, failed, summed) = (0, 0, false);
        } else if let Some((p, f)) = crate::parse_test_result(line) {
            counts.passed += p;
            counts.failed += f;
            summed = true;
        } else if let Some(test) = line.strip_prefix("test ") {
            if test.ends_with(" ... ok") {
                passed += 1;
            } else if let Some(name) = test.strip_suffix(" ... FAILED") {
                failed += 1;
                counts.failed_names.push(name.to_string());
            }
        }
    }
    if !summed {
        counts.passed += passed;
        counts.failed += failed;
    }
    counts
}

/// The console's last `n` lines, for a failure. After a hang dump, the lines before it and
/// the tests' later progress: the dump itself (every task's stack) stays in the log.
pub fn tail(lines: &[String], n: usize) -> Vec<&String> {
    let dump = lines.iter().position(|l| l.starts_with(HANG));
    let before = &lines[..dump.unwrap_or(lines.len())];
    let mut tail: Vec<&String> = before[before.len().saturating_sub(n)..].iter().collect();
    if let Some(dump) = dump {
        tail.push(&lines[dump]);
        tail.extend(lines[dump + 1..].iter().filter(|l| {
            ["test ", "running ", "KMEMCG-VM-"]
                .iter()
                .any(|p| l.starts_with(p))
        }));
    }
    tail
}

/// One kernel's line of the summary.
pub struct Row {
    pub kernel: String,
    /// The Debian package version of the kernel.
    pub version: String,
    pub paging: String,
    pub verdict: Verdict,
    pub passed: u64,
    pub failed: u64,
    pub boot: Option<Duration>,
    pub first_test: Option<Duration>,
    pub total: Option<Duration>,
}

impl Row {
    /// A failed kernel counts at least one failed test, so that the totals never read
    /// "0 failed" for a kernel that panicked, hung or never ran its tests.
    pub fn failed_for_totals(&self) -> u64 {
        if self.verdict.is_failure() {
            self.failed.max(1)
        } else {
            self.failed
        }
    }
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.0}s", d.as_secs_f64()))
}

/// The summary table, then each failure's reason.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "kernel", "version", "paging", "result", "passed", "failed", "boot", "1st test", "total",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.kernel.clone(),
                r.version.clone(),
                r.paging.clone(),
                r.verdict.label().into(),
                r.passed.to_string(),
                r.failed.to_string(),
                seconds(r.boot),
                seconds(r.first_test),
                seconds(r.total),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut text = line(&header.map(String::from));
    for row in &cells {
        text.push_str(&line(row));
    }
    for row in rows {
        if row.verdict != Verdict::Pass {
            text.push_str(&format!("{}: {}\n", row.kernel, row.verdict.describe()));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    const BOOT: &str = "[    0.000000] Linux version 6.18.15+deb13-amd64\n\
                        [    1.0] WARNING: CPU: 0 PID: 1 at drivers/acpi/x.c:1 acpi_thing+0x1/0x2\n\
                        [    1.0] ---[ end trace 0000000000000000 ]---\n\
                        KMEMCG-VM-BOOTED: 6.18.15+deb13-amd64 5-level paging, 2 CPUs\n\
                        KMEMCG-VM-RUN: core\n\nrunning 2 tests\n";

    #[test]
    fn a_clean_run_passes_and_counts_its_tests() {
        let text = format!(
            "{BOOT}test a ... ok\ntest b ... ok\n\n\
             test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.1s\n\
             KMEMCG-VM-RUN: truth\nrunning 1 test\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 3 filtered out; finished in 1s\n\
             KMEMCG-VM-RESULT: PASS\n[   50.0] reboot: Power down\n"
        );
        let c = classify(&log(&text), false, "5-level");
        assert_eq!(c.verdict, Verdict::Pass);
        assert_eq!((c.passed, c.failed), (3, 0));
        assert_eq!(c.paging.as_deref(), Some("5-level"));
        assert_eq!(c.notes.len(), 1, "{:?}", c.notes);
    }

    #[test]
    fn failed_tests_and_crashed_binaries_fail() {
        let text = format!(
            "{BOOT}test a ... FAILED\n\
             test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             KMEMCG-VM-RESULT: FAIL (exit codes: core=101 truth=139)\n"
        );
        let c = classify(&log(&text), false, "5-level");
        assert_eq!(
            c.verdict,
            Verdict::Fail("failed: a; exit codes: core=101 truth=139".into())
        );
        assert_eq!((c.passed, c.failed), (1, 1));
        let many = format!(
            "{BOOT}test a ... FAILED\ntest b ... FAILED\ntest c ... FAILED\ntest d ... FAILED\n\
             test result: FAILED. 0 passed; 4 failed; 0 ignored; 0 measured; 0 filtered out\n\
             KMEMCG-VM-RESULT: FAIL (exit codes: core=101)\n"
        );
        assert_eq!(
            classify(&log(&many), false, "5-level").verdict,
            Verdict::Fail("failed: a, b, c and 1 more; exit codes: core=101".into())
        );
    }

    #[test]
    fn kernel_panics_oopses_and_kmemcg_warnings_fail() {
        let panic = format!(
            "{BOOT}[   12.5] Kernel panic - not syncing: Fatal exception\n[   12.6] ---[ end Kernel panic ]---\n"
        );
        assert!(matches!(
            classify(&log(&panic), false, "5-level").verdict,
            Verdict::Panic(m) if m.starts_with("Kernel panic - not syncing: Fatal exception")
        ));
        let oops = format!(
            "{BOOT}[   12.5] BUG: unable to handle page fault for address: ff11000000000000\n\
             [   12.5] Oops: 0000 [#1] PREEMPT SMP NOPTI\nKMEMCG-VM-RESULT: PASS\n"
        );
        assert_eq!(
            classify(&log(&oops), false, "5-level").verdict,
            Verdict::Fail(
                "kernel oops: BUG: unable to handle page fault for address: ff11000000000000"
                    .into()
            )
        );
        let warning = format!(
            "{BOOT}[   12.5] WARNING: CPU: 1 PID: 99 at kernel/bpf/verifier.c:1 do_check+0x1/0x2\n\
             [   12.5] CPU: 1 UID: 0 PID: 99 Comm: kmemcg Not tainted\n\
             [   12.5] ---[ end trace 0000000000000000 ]---\nKMEMCG-VM-RESULT: PASS\n"
        );
        assert!(matches!(
            classify(&log(&warning), false, "5-level").verdict,
            Verdict::Fail(m) if m.starts_with("kernel warning during the tests: WARNING: CPU: 1")
        ));
        // A test's own output that mentions BUG: is not a kernel report.
        let text = format!("{BOOT}assertion failed: no BUG: here\nKMEMCG-VM-RESULT: PASS\n");
        assert_eq!(
            classify(&log(&text), false, "5-level").verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn timeouts_missing_results_and_wrong_paging_fail() {
        // Tests a binary finished before it was cut short count.
        let text = format!("{BOOT}test a ... ok\ntest b ... FAILED\ntest c ... ok\n");
        let c = classify(&log(&text), true, "5-level");
        assert_eq!(c.verdict, Verdict::Timeout);
        assert_eq!((c.passed, c.failed), (2, 1));
        assert_eq!(
            classify(&log(BOOT), false, "5-level").verdict,
            Verdict::Fail("the VM stopped before the result line".into())
        );
        assert_eq!(
            classify(&log("[    0.1] Linux version 6.1\n"), false, "5-level").verdict,
            Verdict::Fail("the kernel did not reach /init".into())
        );
        let text = format!("{BOOT}KMEMCG-VM-RESULT: PASS\n");
        assert_eq!(
            classify(&log(&text), false, "4-level").verdict,
            Verdict::Fail("booted with 5-level paging, expected 4-level".into())
        );
    }

    #[test]
    fn the_tail_leaves_the_task_dump_in_the_log() {
        let text = "a\nb\nc\nKMEMCG-VM-HANG: dump\nPID USER COMMAND\n[ 1.0] task stack\n\
                    test x ... ok\n[ 2.0] more stack\n";
        let lines = log(text);
        let shown: Vec<&str> = tail(&lines, 2).into_iter().map(String::as_str).collect();
        assert_eq!(shown, ["b", "c", "KMEMCG-VM-HANG: dump", "test x ... ok"]);
        let lines = log("a\nb\nc\n");
        assert_eq!(tail(&lines, 2), [&lines[1], &lines[2]]);
    }

    #[test]
    fn the_table_lists_every_kernel_and_why_it_failed() {
        let row = |kernel: &str, verdict, failed| Row {
            kernel: kernel.into(),
            version: "6.1.192-3".into(),
            paging: "5-level".into(),
            verdict,
            passed: 4,
            failed,
            boot: Some(Duration::from_secs(9)),
            first_test: None,
            total: Some(Duration::from_secs(200)),
        };
        let rows = [
            row("6.1-la57", Verdict::Pass, 0),
            row(
                "6.12-la57",
                Verdict::Panic("Kernel panic - not syncing".into()),
                0,
            ),
            row("7.x-la57", Verdict::Skipped("no 7.x package".into()), 0),
        ];
        let text = table(&rows);
        assert!(
            text.contains("6.12-la57  6.1.192-3  5-level  PANIC"),
            "{text}"
        );
        assert!(
            text.contains("6.12-la57: Kernel panic - not syncing\n"),
            "{text}"
        );
        assert!(text.contains("7.x-la57: no 7.x package\n"), "{text}");
        let counted: Vec<u64> = rows.iter().map(Row::failed_for_totals).collect();
        assert_eq!(counted, [0, 1, 0]);
    }
}
