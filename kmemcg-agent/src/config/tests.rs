use super::*;

const FILE: &str = "/etc/kmemcg/agent.toml";

fn parse_err(text: &str) -> String {
    parse(Path::new(FILE), text)
        .expect_err("the config must be rejected")
        .to_string()
}

fn resolve_err(text: &str) -> String {
    let file = parse(Path::new(FILE), text).expect("valid TOML");
    resolve(Some((Path::new(FILE), &file)), &Overrides::default())
        .expect_err("the config must be rejected")
        .to_string()
}

#[test]
fn a_full_file_is_read() {
    let text = r#"
        listen = "127.0.0.1:9999"
        interval_seconds = 2.5
        max_objects = 2048
        max_stats = 128
        root_cgroup = "ignore"
        pin_dir = "/sys/fs/bpf/kmemcg"

        [metrics]
        top_caches = 3
        cache_min_bytes = 4096
        container_labels = false
    "#;
    let file = parse(Path::new(FILE), text).expect("valid");
    let c = resolve(Some((Path::new(FILE), &file)), &Overrides::default()).expect("valid");
    assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
    assert_eq!(c.interval, Duration::from_millis(2500));
    assert_eq!((c.tracer.max_objects, c.tracer.max_stats), (2048, 128));
    assert_eq!(c.tracer.root_mode, RootCgroupMode::Ignore);
    assert_eq!(c.tracer.pin_dir, Some(PathBuf::from("/sys/fs/bpf/kmemcg")));
    assert_eq!(c.metrics.top_caches, 3);
    assert_eq!(c.metrics.cache_min_bytes, 4096);
    assert!(!c.metrics.container_labels);
}

#[test]
fn whole_seconds_are_numbers_too() {
    let file = parse(Path::new(FILE), "interval_seconds = 2\n").expect("an integer is a number");
    let c = resolve(Some((Path::new(FILE), &file)), &Overrides::default()).expect("valid");
    assert_eq!(c.interval, Duration::from_secs(2));
    let e = parse_err("max_objects = 4096.5\n");
    assert!(e.contains("expected an integer"), "{e}");
}

#[test]
fn defaults_without_a_file() {
    let c = resolve(None, &Overrides::default()).expect("defaults are valid");
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    assert!(c.listen.ip().is_loopback());
    assert_eq!(c.tracer.max_objects, DEFAULT_MAX_OBJECTS);
    assert_eq!(c.tracer.pin_dir, None);
    assert_eq!(c.metrics, MetricsConfig::default());
}

#[test]
fn unknown_keys_are_named_with_file_and_line() {
    let e = parse_err("listen = \"127.0.0.1:1\"\nmax_objets = 4096\n");
    assert!(e.contains(FILE), "{e}");
    assert!(e.contains("line 2"), "{e}");
    assert!(e.contains("`max_objets`"), "{e}");
    assert!(e.contains("unknown field"), "{e}");

    let e = parse_err("[metrics]\ntop_cache = 4\n");
    assert!(e.contains("`metrics.top_cache`"), "{e}");

    let e = parse_err("[metric]\ntop_caches = 4\n");
    assert!(e.contains("`metric`"), "{e}");
}

#[test]
fn wrong_types_are_named() {
    let e = parse_err("max_objects = \"lots\"\n");
    assert!(e.contains("`max_objects`"), "{e}");
    assert!(e.contains("invalid type"), "{e}");
    let e = parse_err("[metrics]\ncontainer_labels = 1\n");
    assert!(e.contains("`metrics.container_labels`"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn negative_and_out_of_range_values_are_rejected() {
    let e = resolve_err("max_objects = -5\n");
    assert!(e.contains(FILE) && e.contains("`max_objects`"), "{e}");
    assert!(e.contains("negative"), "{e}");
    let e = resolve_err("[metrics]\ncache_min_bytes = -1\n");
    assert!(
        e.contains("`metrics.cache_min_bytes`") && e.contains("negative"),
        "{e}"
    );
    let e = resolve_err("max_stats = 10\n");
    assert!(e.contains("out of range"), "{e}");
    let e = resolve_err("interval_seconds = 0.0\n");
    assert!(e.contains("`interval_seconds`"), "{e}");
    let e = resolve_err("listen = \"localhost\"\n");
    assert!(e.contains("`listen`") && e.contains("port"), "{e}");
    let e = resolve_err("root_cgroup = \"all\"\n");
    assert!(e.contains("`root_cgroup`") && e.contains("track"), "{e}");
    let e = resolve_err("pin_dir = \"bpf/kmemcg\"\n");
    assert!(e.contains("absolute"), "{e}");
}

#[test]
fn limits_are_read_and_checked() {
    let text = r#"
        [limits]
        dry_run = true
        audit_file = "/var/log/kmemcg.jsonl"
        protected = ["critical.slice/"]

        [[limits.rule]]
        path = "/batch.slice/*"
        max = "512M"
        action = "signal"
        signal = "SIGINT"
        grace = "10s"

        [[limits.rule]]
        path = "/demo"
        max = 8388608
        action = "freeze"
        thaw_below = "2M"
    "#;
    let file = parse(Path::new(FILE), text).expect("valid");
    let c = resolve(Some((Path::new(FILE), &file)), &Overrides::default()).expect("valid");
    let l = &c.limits;
    assert!(l.dry_run);
    assert_eq!(l.audit_file, Some(PathBuf::from("/var/log/kmemcg.jsonl")));
    assert_eq!(
        l.state_file,
        Some(PathBuf::from("/var/lib/kmemcg/limits.json"))
    );
    assert_eq!(l.state_dir, Some(PathBuf::from("/var/lib/kmemcg")));
    assert_eq!(l.protected, ["/critical.slice"]);
    assert_eq!(l.rules.len(), 2);
    assert_eq!(l.rules[0].signal, libc::SIGINT);
    assert!(l.rules[0].is_glob());
    assert_eq!(l.rules[1].spec.max, Some(crate::limits::Size(8 << 20)));

    let e = parse_err("[[limits.rule]]\npath = \"/a\"\nmax = \"8X\"\naction = \"kill\"\n");
    assert!(
        e.contains("`limits.rule[0].max`") && e.contains("not a size"),
        "{e}"
    );
    let e = parse_err("[[limits.rule]]\npath = \"/a\"\nmax = \"8M\"\naction = \"explode\"\n");
    assert!(
        e.contains("`limits.rule[0].action`") && e.contains("kill"),
        "{e}"
    );
    let e = resolve_err(
        "[[limits.rule]]\npath = \"/a\"\nmax = \"8M\"\naction = \"kill\"\nsignal = \"SIGTERM\"\n",
    );
    assert!(
        e.contains("limits.rule[0]") && e.contains("signal action"),
        "{e}"
    );
    let e = resolve_err("[limits]\naudit_file = \"audit.jsonl\"\n");
    assert!(
        e.contains("`limits.audit_file`") && e.contains("absolute"),
        "{e}"
    );
}

#[test]
fn syntax_errors_give_the_line() {
    let e = parse_err("listen = \"127.0.0.1:1\"\nmax_objects = = 3\n");
    assert!(e.contains(FILE) && e.contains("line 2"), "{e}");
}

#[test]
fn unreadable_files_say_so() {
    let e = load_file(Path::new("/nonexistent/kmemcg.toml"))
        .expect_err("missing file")
        .to_string();
    assert!(e.contains("/nonexistent/kmemcg.toml"), "{e}");
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn overrides_beat_the_file() {
    let text = "max_objects = 4096\ninterval_seconds = 5.0\npin_dir = \"/sys/fs/bpf/x\"\n\
                [metrics]\ntop_caches = 2\n";
    let file = parse(Path::new(FILE), text).expect("valid");
    let over = Overrides {
        max_objects: Some(8192),
        top_caches: Some(7),
        no_pin: true,
        ..Default::default()
    };
    let c = resolve(Some((Path::new(FILE), &file)), &over).expect("valid");
    assert_eq!(c.tracer.max_objects, 8192);
    assert_eq!(c.interval, Duration::from_secs(5));
    assert_eq!(c.metrics.top_caches, 7);
    assert_eq!(c.tracer.pin_dir, None);
}

#[test]
fn the_unreliable_fallback_is_read_and_checked() {
    let file = parse(Path::new(FILE), "[limits]\non_unreliable = \"kmemcg\"\n").expect("valid");
    let c = resolve(Some((Path::new(FILE), &file)), &Overrides::default()).expect("valid");
    assert_eq!(c.limits.on_unreliable, crate::limits::OnUnreliable::Kmemcg);
    // Typed in the file: rejected with its line when read.
    let e = parse_err("[limits]\non_unreliable = \"guess\"\n");
    assert!(
        e.contains("line 2")
            && e.contains("limits.on_unreliable")
            && e.contains("kernel or kmemcg"),
        "{e}"
    );
}

#[test]
fn the_state_directory_holds_the_files_unless_they_are_named() {
    let file = parse(Path::new(FILE), "[limits]\nstate_dir = \"/srv/kmemcg-b\"\n").expect("valid");
    let c = resolve(Some((Path::new(FILE), &file)), &Overrides::default()).expect("valid");
    assert_eq!(c.limits.state_dir, Some(PathBuf::from("/srv/kmemcg-b")));
    assert_eq!(
        c.limits.state_file,
        Some(PathBuf::from("/srv/kmemcg-b/limits.json"))
    );
    assert_eq!(
        c.limits.audit_file,
        Some(PathBuf::from("/srv/kmemcg-b/enforcement.jsonl"))
    );
    let over = Overrides {
        state_dir: Some("/srv/kmemcg-c".into()),
        limits_file: Some("/srv/rules.json".into()),
        ..Default::default()
    };
    let c = resolve(Some((Path::new(FILE), &file)), &over).expect("valid");
    assert_eq!(c.limits.state_dir, Some(PathBuf::from("/srv/kmemcg-c")));
    assert_eq!(c.limits.state_file, Some(PathBuf::from("/srv/rules.json")));
    assert_eq!(
        c.limits.audit_file,
        Some(PathBuf::from("/srv/kmemcg-c/enforcement.jsonl"))
    );
    let e = resolve_err("[limits]\nstate_dir = \"relative\"\n");
    assert!(e.contains("limits.state_dir"), "{e}");
}

#[test]
fn an_absurd_interval_gets_a_short_error() {
    let e = resolve_err("interval_seconds = 1e-300\n");
    assert!(e.len() < 200, "{} characters: {e}", e.len());
    assert!(
        e.contains("1e-300") && e.contains("between 0.05 and 3600"),
        "{e}"
    );
    let e = resolve_err("interval_seconds = 1e300\n");
    assert!(e.len() < 200 && e.contains("1e300"), "{e}");
}

#[test]
fn protected_globs_are_checked() {
    let file = parse(
        Path::new(FILE),
        "[limits]\nprotected = [\"/kubepods.slice/*/critical-*\"]\n",
    )
    .expect("valid");
    let c = resolve(Some((Path::new(FILE), &file)), &Overrides::default()).expect("a glob");
    assert_eq!(c.limits.protected, ["/kubepods.slice/*/critical-*"]);
    let e = resolve_err("[limits]\nprotected = [\"/a/[b\"]\n");
    assert!(e.contains("limits.protected") && e.contains("glob"), "{e}");
}

#[test]
fn a_directory_is_not_a_socket_path() {
    let over = Overrides {
        socket: Some(std::env::temp_dir()),
        ..Default::default()
    };
    let e = resolve(None, &over).expect_err("a directory").to_string();
    assert!(
        e.contains("api.socket") && e.contains("is a directory"),
        "{e}"
    );
    let over = Overrides {
        socket: Some("/proc/self/status".into()),
        ..Default::default()
    };
    let e = resolve(None, &over).expect_err("a file").to_string();
    assert!(e.contains("not a socket"), "{e}");
}
