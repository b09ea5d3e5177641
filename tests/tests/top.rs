//! `kmemcg top` in a real terminal: tmux runs it against a real agent while a test cgroup holds
//! files (dentries and inodes); keys drive the filter, the drill-in and quitting, and the
//! screen is read back with capture-pane. Also its batch mode.
use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use kmemcg_tests::{
    AgentProcess, TestCgroup, Tmpfs, cache_objects, free_addr, kmemcg, kmemcg_bin, require_root,
};

/// A detached tmux session running a plain shell; killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    fn new(width: u16, height: u16) -> Self {
        let name = format!("kmemcg-test-top-{}", std::process::id());
        let status = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .args(["env", "PS1=$ ", "TERM=xterm-256color"])
            .args(["bash", "--norc", "--noprofile"])
            .status()
            .expect("running tmux (cargo xtask setup installs it)");
        assert!(status.success(), "tmux new-session failed");
        Self { name }
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let output = Command::new("tmux")
            .args(args)
            .output()
            .expect("running tmux");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", &self.name, "-l", text]);
    }

    /// Presses keys by tmux name (`Enter`, `Escape`, `Down`).
    fn press(&self, key: &str) {
        self.tmux(&["send-keys", "-t", &self.name, key]);
    }

    fn screen(&self) -> String {
        let output = self.tmux(&["capture-pane", "-p", "-t", &self.name]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The screen with lines the terminal wrapped joined again: a line longer than the pane
    /// is output that did not fit.
    fn unwrapped_screen(&self) -> String {
        let output = self.tmux(&["capture-pane", "-p", "-J", "-t", &self.name]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// True while the program in the pane uses the alternate screen.
    fn alternate_screen(&self) -> bool {
        let output = self.tmux(&["display-message", "-p", "-t", &self.name, "#{alternate_on}"]);
        String::from_utf8_lossy(&output.stdout).trim() == "1"
    }

    /// Waits until `check` holds for the screen, or panics showing it.
    fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("waiting for {what}; the screen shows:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .output();
    }
}

fn files_cgroup(agent: &AgentProcess, tmpfs: &Tmpfs, name: &str) -> TestCgroup {
    let cgroup = TestCgroup::new(name);
    cgroup.run(&["create-files", &tmpfs.sub(name), "1000"]);
    agent.wait_for(
        cgroup.path(),
        Duration::from_secs(20),
        "files charged",
        |u| u.is_some_and(|u| cache_objects(u, &["dentry"]) >= 1000),
    );
    cgroup
}

#[test]
fn top_in_a_terminal_filters_drills_in_and_restores_the_terminal() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let cgroup = files_cgroup(&agent, &tmpfs, "top");
    let name = cgroup.path().trim_start_matches('/').to_string();

    let tmux = Tmux::new(120, 40);
    tmux.wait_for("the shell prompt", |s| s.contains('$'));
    let command = format!(
        "{} top --addr {} --delay 0.5; echo top-exited-$?",
        kmemcg_bin().display(),
        agent.addr()
    );
    tmux.type_text(&command);
    tmux.press("Enter");
    let screen = tmux.wait_for("the cgroup in the table", |s| {
        s.contains("kmemcg top") && s.contains(&name)
    });
    assert!(
        screen.contains("CGROUP") && screen.contains("TOTAL"),
        "{screen}"
    );
    assert!(screen.contains("q quit"), "{screen}");
    assert!(tmux.alternate_screen(), "{screen}");

    // Filter by the cgroup's name: Enter applies it and selects the match.
    tmux.type_text("/");
    tmux.wait_for("the filter prompt", |s| s.contains("filter: "));
    tmux.type_text(&name);
    tmux.press("Enter");
    let screen = tmux.wait_for("the applied filter", |s| {
        s.contains(&format!("filter \"{name}\""))
    });
    assert!(screen.contains(&name), "{screen}");

    // Drill in: the cgroup's caches, dentry among them.
    tmux.press("Enter");
    let screen = tmux.wait_for("the cgroup's caches", |s| {
        s.contains("CACHE") && s.contains("dentry")
    });
    assert!(screen.contains(cgroup.path()), "{screen}");
    let dentry = screen
        .lines()
        .find(|l| l.trim_start().starts_with("dentry"))
        .unwrap_or_default();
    let objects: u64 = dentry
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(objects >= 1000, "{screen}");

    // Back to the table, then quit.
    tmux.press("Escape");
    tmux.wait_for("the table again", |s| {
        s.contains("CGROUP") && !s.contains("CACHE ")
    });
    tmux.type_text("q");
    let screen = tmux.wait_for("the shell after quitting", |s| s.contains("top-exited-0"));
    assert!(!tmux.alternate_screen(), "{screen}");
    // The shell's screen is back: the command line typed before is there, the TUI is gone.
    assert!(screen.contains(&command), "{screen}");
    assert!(!screen.contains("q quit"), "{screen}");
}

#[test]
fn top_quits_on_ctrl_c_and_restores_the_terminal() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmux = Tmux::new(80, 24);
    tmux.wait_for("the shell prompt", |s| s.contains('$'));
    tmux.type_text(&format!(
        "{} top --addr {}; echo top-exited-$?",
        kmemcg_bin().display(),
        agent.addr()
    ));
    tmux.press("Enter");
    tmux.wait_for("the table", |s| s.contains("CGROUP"));
    // The whole key reference fits 80 by 24; any key closes it.
    tmux.type_text("?");
    let screen = tmux.wait_for("the help", |s| s.contains("kmemcg top: keys"));
    assert!(
        screen.contains("End/G") && screen.contains("any key back"),
        "{screen}"
    );
    assert!(
        screen.contains("while filtering: typed into the filter"),
        "{screen}"
    );
    tmux.type_text("x");
    tmux.wait_for("the table again", |s| s.contains("CGROUP"));
    tmux.press("C-c");
    let screen = tmux.wait_for("the shell after Ctrl-C", |s| s.contains("top-exited-0"));
    assert!(!tmux.alternate_screen(), "{screen}");
    // The terminal is out of raw mode: the shell echoes typed text again.
    tmux.type_text("echo still-cooked");
    tmux.press("Enter");
    tmux.wait_for("the shell echoing", |s| {
        s.matches("still-cooked").count() >= 2
    });
}

#[test]
fn top_batch_mode_prints_tables_and_json() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let cgroup = files_cgroup(&agent, &tmpfs, "top-batch");
    let addr = agent.addr().to_string();

    let output = kmemcg(&["top", "--addr", &addr, "--once", "--filter", cgroup.path()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("kmemcg top · agent "), "{text}");
    assert!(
        lines[1].contains("CGROUP") && lines[1].contains("TOP CACHE"),
        "{text}"
    );
    assert!(lines[2].contains(cgroup.path()), "{text}");
    assert!(lines[2].contains("iB"), "{text}");

    let output = kmemcg(&[
        "top",
        "--addr",
        &addr,
        "--iterations",
        "2",
        "--delay",
        "0.3",
        "--json",
        "--bytes",
        "--filter",
        cgroup.path(),
        "--limit",
        "1",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let snapshots: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON array per line"))
        .collect();
    assert_eq!(snapshots.len(), 2, "{text}");
    let last = &snapshots[1][0];
    assert_eq!(last["path"], cgroup.path());
    assert_eq!(last["id"], cgroup.id());
    assert!(
        last["slab_bytes"].as_u64().unwrap_or(0) >= 1000 * 192,
        "{last}"
    );
    assert!(last["change_bytes_per_second"].is_number(), "{last}");
    let dentry = last["caches"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "dentry"))
        .expect("dentry cache");
    assert!(dentry["objects"].as_u64().unwrap_or(0) >= 1000, "{last}");
}

#[test]
fn top_without_an_agent_says_so_and_offers_standalone() {
    let addr = free_addr().to_string();
    let output = kmemcg(&["top", "--addr", &addr, "--once"]);
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&format!("no kmemcg agent answers at http://{addr}")),
        "{err}"
    );
    assert!(err.contains("--standalone"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let output = kmemcg(&["top", "--delay", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("between 0.1 and 3600"));
}

#[test]
fn top_standalone_loads_its_own_programs() {
    require_root();
    let output = kmemcg(&[
        "top",
        "--standalone",
        "--iterations",
        "2",
        "--delay",
        "0.3",
        "--json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("standalone: since start, plus what the inventory found"),
        "{err}"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
        assert!(v.is_array(), "{line}");
    }
}

#[test]
fn top_lists_a_removed_cgroup_under_the_ancestor_it_is_charged_to() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let parent = TestCgroup::new("top-dying");
    let child = TestCgroup::under(&parent, "gone");
    let (child_path, child_id) = (child.path().to_string(), child.id());
    child.run(&["create-files", &tmpfs.sub("outlive"), "1000"]);
    agent.wait_for(&child_path, Duration::from_secs(20), "files charged", |u| {
        u.is_some_and(|u| cache_objects(u, &["dentry"]) >= 1000)
    });
    // The tmpfs files outlive their cgroup.
    child.remove();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.dying().iter().any(|d| d.id == child_id) {
        assert!(
            Instant::now() < deadline,
            "the agent never listed {child_path} as dying"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let addr = agent.addr().to_string();

    // JSON keeps the fields a cgroup always had: `alive: false`, the charged ancestor as parent.
    let output = kmemcg(&[
        "top",
        "--addr",
        &addr,
        "--once",
        "--json",
        "--filter",
        &child_path,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).expect("a JSON array");
    let gone = list
        .iter()
        .find(|c| c["id"] == child_id)
        .unwrap_or_else(|| panic!("{child_path} is not listed: {text}"));
    assert_eq!(gone["path"], child_path.as_str(), "{gone}");
    assert_eq!(gone["alive"], false, "{gone}");
    assert_eq!(gone["parent"], parent.id(), "{gone}");
    assert!(
        gone["slab_bytes"].as_u64().unwrap_or(0) >= 1000 * 192,
        "{gone}"
    );

    // The table marks it.
    let output = kmemcg(&["top", "--addr", &addr, "--once", "--filter", &child_path]);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&child_path))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&format!("{child_path} (dying)")), "{text}");
    // The summary counts it (other removed cgroups of the machine may be counted too).
    let dying: u64 = text
        .lines()
        .next()
        .and_then(|l| l.split(" · dying ").nth(1))
        .and_then(|d| d.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(dying >= 1, "{text}");
}

/// Starts `kmemcg top` against `agent` in the pane, refreshing every half second.
fn start_top(tmux: &Tmux, agent: &AgentProcess, flags: &str) {
    tmux.wait_for("the shell prompt", |s| s.contains('$'));
    tmux.type_text(&format!(
        "{} top --addr {} --delay 0.5 {flags}; echo top-exited-$?",
        kmemcg_bin().display(),
        agent.addr()
    ));
    tmux.press("Enter");
    tmux.wait_for("the table", |s| s.contains("CGROUP"));
}

/// Types a filter and applies it (Enter), which selects the first match.
fn filter(tmux: &Tmux, text: &str) {
    tmux.type_text("/");
    tmux.wait_for("the filter prompt", |s| s.contains("filter: "));
    tmux.type_text(text);
    tmux.press("Enter");
    tmux.wait_for("the applied filter", |s| {
        s.contains(&format!("filter \"{text}\""))
    });
}

/// Bytes of a size as top draws it (`48.8 KiB`, `0 B`).
fn bytes_of(number: &str, unit: &str) -> Option<f64> {
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let number = number.trim_start_matches('≥');
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// The sizes of a table line, left to right (SLAB, PERCPU, TOTAL; rates are not sizes).
fn sizes(line: &str) -> Vec<f64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| bytes_of(w[0], w[1]))
        .collect()
}

#[test]
fn top_tree_shows_a_parents_subtree_total() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let parent = TestCgroup::new("tree");
    let leaf = TestCgroup::under(&parent, "leaf");
    leaf.run(&["create-files", &tmpfs.sub("tree"), "1000"]);
    agent.wait_for(leaf.path(), Duration::from_secs(20), "files charged", |u| {
        u.is_some_and(|u| cache_objects(u, &["dentry"]) >= 1000)
    });
    let parent_name = parent.path().trim_start_matches('/').to_string();

    let tmux = Tmux::new(140, 30);
    start_top(&tmux, &agent, "");
    filter(&tmux, &parent_name);
    // The leaf's row once its files are on it (the largest cache may be the inodes').
    let screen = tmux.wait_for("the parent and its leaf", |s| {
        s.contains(&parent_name)
            && s.lines().any(|l| {
                l.contains("leaf") && sizes(l).get(2).is_some_and(|t| *t >= 1000.0 * 192.0)
            })
    });
    let line = |needle: &str| {
        screen
            .lines()
            .find(|l| l.contains(needle) && !l.contains("filter \""))
            .unwrap_or_else(|| panic!("no line with {needle}: {screen}"))
    };
    let (parent_sizes, leaf_sizes) = (sizes(line(&parent_name)), sizes(line("leaf")));
    assert!(parent_sizes.len() >= 3 && leaf_sizes.len() >= 3, "{screen}");
    // TOTAL is the third size: the parent allocated nothing itself, yet adds up its leaf.
    let (parent_total, leaf_total) = (parent_sizes[2], leaf_sizes[2]);
    assert!(leaf_total >= 1000.0 * 192.0, "{screen}");
    assert!(
        parent_total >= leaf_total,
        "the parent's row is its subtree's total: {screen}"
    );

    // Flat, the parent's row is its own figures: less than its leaf's.
    tmux.type_text("t");
    let screen = tmux.wait_for("the flat list", |s| s.contains("  flat"));
    let own = screen
        .lines()
        .find(|l| l.contains(&parent_name) && !l.contains("leaf") && !l.contains("filter"))
        .map(sizes);
    if let Some(own) = own.filter(|o| o.len() >= 3) {
        assert!(own[2] < leaf_total, "{screen}");
    }
    tmux.type_text("q");
    tmux.wait_for("the shell after quitting", |s| s.contains("top-exited-0"));
}

#[test]
fn top_drill_in_charts_the_history() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let cgroup = files_cgroup(&agent, &tmpfs, "chart");
    let name = cgroup.path().trim_start_matches('/').to_string();
    // More files while the history is kept: the dentries grow.
    cgroup.run(&["create-files", &tmpfs.sub("chart-more"), "2000"]);

    let tmux = Tmux::new(120, 40);
    start_top(&tmux, &agent, "");
    filter(&tmux, &name);
    tmux.press("Enter");
    let screen = tmux.wait_for("the history chart", |s| {
        s.contains("history, last") && s.contains("growth of the top caches")
    });
    let braille = screen
        .chars()
        .filter(|c| ('\u{2801}'..='\u{28ff}').contains(c))
        .count();
    assert!(braille >= 10, "{braille} braille dots: {screen}");
    for word in ["slab", "percpu", "kernel", "now"] {
        assert!(screen.contains(word), "{word}: {screen}");
    }
    // The dentries' growth beside the chart.
    let growth = screen
        .lines()
        .skip_while(|l| !l.contains("growth of the top caches"))
        .find(|l| l.contains("dentry"))
        .unwrap_or_else(|| panic!("no dentry growth: {screen}"));
    assert!(growth.contains("+"), "{screen}");
    // The caches below it, as before.
    assert!(
        screen.contains("CACHE") && screen.contains("OBJ SIZE"),
        "{screen}"
    );
    tmux.type_text("q");
    tmux.wait_for("the shell after quitting", |s| s.contains("top-exited-0"));
}

#[test]
fn stat_fits_an_80_column_terminal() {
    require_root();
    let agent = AgentProcess::start(&[]);
    let tmpfs = Tmpfs::new();
    let cgroup = files_cgroup(
        &agent,
        &tmpfs,
        "stat-with-a-rather-long-name-for-80-columns",
    );
    let tmux = Tmux::new(80, 50);
    tmux.wait_for("the shell prompt", |s| s.contains('$'));
    tmux.type_text(&format!(
        "clear; {} stat --addr {}; echo stat-exited-$?",
        kmemcg_bin().display(),
        agent.addr()
    ));
    tmux.press("Enter");
    tmux.wait_for("stat's table", |s| s.contains("stat-exited-0"));
    let screen = tmux.unwrapped_screen();
    let table: Vec<&str> = screen
        .lines()
        .skip_while(|l| !l.contains("CGROUP"))
        .take_while(|l| !l.contains("stat-exited"))
        .collect();
    assert!(table.len() >= 2, "{screen}");
    for line in &table {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}\n{screen}",
            line.chars().count()
        );
    }
    assert!(
        table[0].contains("SLAB") && table[0].contains("PERCPU"),
        "{screen}"
    );
    // The long path is shortened in the middle, its end kept.
    let name = cgroup.path().trim_start_matches('/');
    let tail: String = name.chars().skip(name.chars().count() - 8).collect();
    assert!(table.iter().any(|l| l.contains(&tail)), "{tail}: {screen}");
    assert!(table.iter().any(|l| l.contains("TOTAL (")), "{screen}");
}
