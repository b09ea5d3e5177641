//! The Prometheus side as shipped: the alert rules' promtool unit tests, and every recording
//! rule and dashboard query evaluated by a real Prometheus (configured from
//! deploy/prometheus/prometheus.yml) scraping a real agent that sees a pod-shaped workload and
//! enforces limit rules. kube-state-metrics is stood in for by a fixed `kube_pod_info` for the
//! workload's pod uid, so that the join with pod names has something to join.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use kmemcg_tests::{
    AgentProcess, TestCgroup, Tmpfs,
    prometheus::{Prometheus, http_get, promtool},
    require_root,
};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let tests = deploy("prometheus/kmemcg-alerts.test.yaml");
    let out = promtool(&["test", "rules", &tests.display().to_string()], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

const POD_UID: &str = "0f9c6f5e-2b7d-4c1e-9a3b-8d2e1f0a4b6c";

/// Serves `body` as a Prometheus exposition to every request, until the test ends.
fn serve_exposition(body: String) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                &stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Grafana's variables as the dashboard's defaults resolve them.
fn resolve(expr: &str) -> String {
    expr.replace("$node", ".*")
        .replace("$__rate_interval", "15s")
        .replace("${datasource}", "")
}

#[test]
fn every_dashboard_query_and_recording_rule_returns_data() {
    require_root();
    let tmpfs = Tmpfs::new();
    let parent = TestCgroup::new("kube");
    let pod = TestCgroup::under(
        &parent,
        &format!("kubepods-burstable-pod{}.slice", POD_UID.replace('-', "_")),
    );
    let container = TestCgroup::under(
        &pod,
        &format!("cri-containerd-{}.scope", "4f8a1c2b3d4e5f60".repeat(4)),
    );
    let config_dir =
        std::env::temp_dir().join(format!("kmemcg-test-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&config_dir).expect("config directory");
    let config = config_dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\ncache_min_bytes = 0\n\n\
             [limits]\nstate_file = \"{dir}/limits.json\"\naudit_file = \"{dir}/audit.jsonl\"\n\n\
             [[limits.rule]]\npath = \"{pod}\"\nmax = \"1K\"\naction = \"notify\"\n\n\
             [[limits.rule]]\npath = \"{container}\"\nmax = \"1G\"\naction = \"freeze\"\n",
            dir = config_dir.display(),
            pod = pod.path(),
            container = container.path()
        ),
    )
    .expect("writing the agent's config");
    let agent = AgentProcess::start(&["--config", &config.display().to_string()]);
    container.run(&["create-files", &tmpfs.sub("files"), "2000"]);

    let ksm = serve_exposition(format!(
        "# TYPE kube_pod_info gauge\nkube_pod_info{{namespace=\"shop\",pod=\"web-0\",uid=\"{POD_UID}\",node=\"n1\"}} 1\n"
    ));
    // The shipped configuration: its job, relabelling and rule file, at test speed.
    let shipped =
        std::fs::read_to_string(deploy("prometheus/prometheus.yml")).expect("prometheus.yml");
    let rules = deploy("prometheus/kmemcg-alerts.yaml");
    let prometheus_config = shipped
        .replace(
            "scrape_interval: 30s\n  scrape_timeout: 10s",
            "scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s",
        )
        .replace("- kmemcg-alerts.yaml", &format!("- {}", rules.display()))
        .replace("127.0.0.1:9847", &agent.addr().to_string())
        + &format!(
            "  - job_name: kube-state-metrics\n    static_configs:\n      - targets: [\"{ksm}\"]\n"
        );
    assert!(prometheus_config.contains("evaluation_interval: 1s"));
    let prometheus = Prometheus::start_with(&prometheus_config);

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/kmemcg-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queries: Vec<(String, String)> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), resolve(t["expr"].as_str().expect("expr"))))
        })
        .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(metric, label): the metric must carry the label.
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
                .expect("label_values query");
            let (metric, label) = inner.split_once(',').expect("metric, label");
            queries.push((
                format!("variable {}", v["name"]),
                format!("{metric}{{{}!=\"\"}}", label.trim()),
            ));
        }
    }
    let rules_yaml = std::fs::read_to_string(&rules).expect("rules");
    for line in rules_yaml.lines() {
        if let Some(name) = line.trim().strip_prefix("- record: ") {
            queries.push((format!("recording rule {name}"), name.to_string()));
        }
    }
    assert!(queries.len() >= 20, "{queries:?}");
    let started = Instant::now();
    for (what, query) in &queries {
        prometheus.wait_for(query, what, |r| !r.is_empty());
    }
    eprintln!(
        "{} queries returned data within {:?}",
        queries.len(),
        started.elapsed()
    );

    // The join names the pod; the join labels of other exporters are there.
    let named = prometheus.query("kmemcg:pod_kernel_memory_bytes:by_pod");
    assert!(
        named
            .iter()
            .any(|(l, v)| l["pod"] == "web-0" && l["namespace"] == "shop" && *v > 0.0),
        "{named:?}"
    );
    let joined = prometheus.query(&format!(
        "kmemcg_cgroup_slab_bytes{{id=\"{}\",node!=\"\"}}",
        container.path()
    ));
    assert_eq!(joined.len(), 1, "{joined:?}");
    assert!(
        !prometheus
            .query("kmemcg_cgroup_cache_bytes{slab=\"dentry\"}")
            .is_empty()
    );

    // Every rule, alerts included, is evaluated without an error (e.g. a many-to-many match).
    let expected = rules_yaml.matches("\n      - ").count();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = http_get(&format!("http://{}/api/v1/rules", prometheus.addr()))
            .expect("GET /api/v1/rules");
        let rules: Value = serde_json::from_str(&body).expect("rules JSON");
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().expect("rules"))
            .collect();
        assert!(
            all.iter().all(|r| r["health"] != "err"),
            "a rule failed to evaluate: {body}"
        );
        if all.len() == expected && all.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "rules not all evaluated: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&config_dir);
}
