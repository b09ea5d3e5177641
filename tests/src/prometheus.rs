//! Debian's Prometheus and promtool for the tests: a private Prometheus scraping test agents,
//! instant queries, and promtool checks.
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_addr;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(crate::unique(name));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// GET `url`, its body as text.
pub fn http_get(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(url)
        .send()?
        .error_for_status()?
        .text()?)
}

/// Runs promtool with `args` (and `stdin`), asserting success; returns its output.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (Debian package prometheus)");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("feeding promtool");
    }
    drop(input);
    let output = child.wait_with_output().expect("waiting for promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

/// Debian's `prometheus` on a free loopback port with its own storage, scraping `target`
/// every second. Killed and its files removed when dropped.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(target: SocketAddr) -> Self {
        Self::start_with(&format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: kmemcg\n    static_configs:\n      \
             - targets: [\"{target}\"]\n"
        ))
    }

    /// Prometheus with this configuration (rule files given by absolute path).
    pub fn start_with(config_text: &str) -> Self {
        let dir = scratch_dir("prometheus");
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_text).expect("writing prometheus.yml");
        promtool(&["check", "config", &config.display().to_string()], None);
        let addr = free_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (Debian package prometheus)");
        let mut prometheus = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(&format!("http://{addr}/-/ready")).is_err() {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited: {status}");
            }
            assert!(Instant::now() < deadline, "prometheus not ready in 30 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// Where its HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Instant query: (labels, value) of each series.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let body = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", promql)])
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json::<serde_json::Value>())
            .unwrap_or_else(|e| panic!("querying {promql}: {e}"));
        assert_eq!(body["status"], "success", "{body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// Polls `promql` until `check` holds for its result.
    pub fn wait_for(
        &self,
        promql: &str,
        what: &str,
        check: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = self.query(promql);
            if check(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: `{promql}` gave {result:?} for 60 s"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
