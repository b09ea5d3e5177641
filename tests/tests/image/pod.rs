//! The DaemonSet's pod as a podman container: the manifests (as kubectl would apply them)
//! translated flag by flag, with the hostPaths that hold state replaced by the test's own.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use kmemcg_tests::{TestCgroup, free_addr};
use serde_json::Value;

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

pub fn unique(name: &str) -> String {
    format!(
        "kmemcg-test-{name}-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

pub fn run(cmd: &mut Command) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (cargo xtask setup installs it)"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Every document of a YAML stream, as JSON (PyYAML comes with kubernetes-validate).
pub fn yaml_documents(text: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running python3 (cargo xtask setup installs PyYAML with kubernetes-validate)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feeding python3");
    let output = child.wait_with_output().expect("python3");
    assert!(output.status.success(), "YAML did not parse");
    serde_json::from_slice::<Vec<Value>>(&output.stdout).expect("JSON from python3")
}

/// The manifests of a deployment variant: the observing DaemonSet, or the enforcement overlay
/// rendered by kustomize.
pub fn manifests(enforce: bool) -> Vec<Value> {
    let text = if enforce {
        let out = run(Command::new("kubectl")
            .arg("kustomize")
            .arg(repo("deploy/kubernetes-enforce")));
        String::from_utf8(out.stdout).expect("UTF-8")
    } else {
        std::fs::read_to_string(repo("deploy/kubernetes/kmemcg.yaml")).expect("kmemcg.yaml")
    };
    yaml_documents(&text)
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

/// A private bpffs instance, unmounted when dropped.
pub struct Bpffs(PathBuf);

impl Bpffs {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("bpffs"));
        std::fs::create_dir_all(&dir).expect("bpffs mount point");
        run(Command::new("mount")
            .args(["-t", "bpf", "kmemcg-test"])
            .arg(&dir));
        Self(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// cgroup v1 directories podman and runc make for `--cgroup-parent` (conmon's cgroup in every
/// hierarchy, the parent in controllers the test cgroup does not cover); removed, empty by
/// then, when dropped, after the container.
struct V1Parents(String);

impl Drop for V1Parents {
    fn drop(&mut self) {
        let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for c in controllers.flatten() {
            if c.file_name() == "unified" {
                continue;
            }
            let dir = c.path().join(&self.0);
            let _ = std::fs::remove_dir(dir.join("conmon"));
            if c.file_name() != "memory" && dir.is_dir() {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }
}

/// Submounts of `path` (from /proc/self/mountinfo): a recursive read-only mount covers them.
fn submounts(path: &str) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = format!("{}/", path.trim_end_matches('/'));
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Podman's default seccomp profile changed as containerd 1.7 (and CRI-O 1.26) changed their
/// RuntimeDefault: bpf() allowed with CAP_BPF, perf_event_open() with CAP_PERFMON (podman's
/// own default allows both only with CAP_SYS_ADMIN).
fn runtime_default_profile(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/usr/share/containers/seccomp.json")
        .expect("podman's seccomp profile (package containers-common)");
    let mut profile: Value = serde_json::from_str(&text).expect("seccomp.json");
    let rules = profile["syscalls"].as_array_mut().expect("syscalls");
    for rule in rules.iter_mut() {
        if rule["action"] == "SCMP_ACT_ERRNO"
            && let Some(names) = rule["names"].as_array_mut()
        {
            names.retain(|n| n != "bpf" && n != "perf_event_open");
        }
    }
    for (name, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        rules.push(serde_json::json!({
            "names": [name], "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}
        }));
    }
    let path = dir.join("runtime-default.json");
    std::fs::write(&path, profile.to_string()).expect("writing the profile");
    path
}

/// The pod of a deployment variant, as a podman container.
pub struct Pod {
    pub name: String,
    pub port: u16,
    /// Host directory behind the ConfigMap's mount.
    pub config_dir: Scratch,
    /// Host directories behind /run/kmemcg and /var/lib/kmemcg.
    pub run_dir: Scratch,
    pub state_dir: Scratch,
    _bpffs: Bpffs,
    _v1: V1Parents,
}

impl Pod {
    /// `podman create` with the DaemonSet's settings; `extra_config` is appended to the
    /// ConfigMap's agent.toml; `seccomp_default`: podman's own default profile instead of
    /// the RuntimeDefault of current runtimes.
    pub fn create(
        docs: &[Value],
        image: &str,
        parent: &TestCgroup,
        extra_config: &str,
        seccomp_default: bool,
    ) -> Self {
        let daemonset = find(docs, "DaemonSet");
        let pod = &daemonset["spec"]["template"]["spec"];
        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        assert_eq!(
            c["image"], image,
            "the DaemonSet runs the image xtask builds"
        );
        let config_dir = Scratch::new("configmap");
        let run_dir = Scratch::new("run");
        let state_dir = Scratch::new("state");
        let bpffs = Bpffs::new();
        let configmap = find(docs, "ConfigMap");
        for (file, text) in configmap["data"].as_object().expect("ConfigMap data") {
            let text = format!("{}\n{extra_config}", text.as_str().expect("text"));
            std::fs::write(config_dir.0.join(file), text).expect("ConfigMap file");
        }
        let name = unique("pod");
        let port = free_addr().port();
        let container_port = c["ports"][0]["containerPort"].as_u64().expect("port");
        let mut args: Vec<String> = vec![
            "create".into(),
            "--name".into(),
            name.clone(),
            "--runtime".into(),
            "runc".into(),
            // Kubernetes' default on cgroup v2 hosts; podman's on v1 is the host's.
            "--cgroupns=private".into(),
            format!("--cgroup-parent={}", parent.path()),
            "-p".into(),
            format!("127.0.0.1:{port}:{container_port}"),
            // This VM's root lacks CAP_SYS_RESOURCE: podman's default limits cannot be set.
            "--ulimit=nofile=16384:16384".into(),
            "--ulimit=nproc=4096:4096".into(),
        ];
        if pod["hostPID"] == true {
            args.push("--pid=host".into());
        }
        assert_ne!(pod["hostNetwork"], true, "the pod network is assumed");
        let sc = &c["securityContext"];
        assert_ne!(sc["privileged"], true);
        if let Some(uid) = sc["runAsUser"].as_u64() {
            args.push(format!("--user={uid}"));
        }
        if sc["allowPrivilegeEscalation"] == false {
            args.push("--security-opt=no-new-privileges".into());
        }
        if sc["readOnlyRootFilesystem"] == true {
            args.push("--read-only".into());
        }
        for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
            args.push(format!("--cap-drop={}", cap.as_str().expect("cap")));
        }
        for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
            args.push(format!("--cap-add={}", cap.as_str().expect("cap")));
        }
        let seccomp = match sc["seccompProfile"]["type"].as_str() {
            _ if seccomp_default => "/usr/share/containers/seccomp.json".to_string(),
            Some("RuntimeDefault") => runtime_default_profile(&config_dir.0).display().to_string(),
            Some("Unconfined") => "unconfined".into(),
            other => panic!("seccompProfile {other:?} not translated"),
        };
        args.push(format!("--security-opt=seccomp={seccomp}"));
        if let Some(memory) = c["resources"]["limits"]["memory"].as_str() {
            let mib = memory.strip_suffix("Mi").expect("a limit in Mi");
            args.push(format!("--memory={mib}m"));
        }
        for env in c["env"].as_array().into_iter().flatten() {
            let (k, v) = (env["name"].as_str(), env["value"].as_str());
            args.push(format!("--env={}={}", k.expect("name"), v.expect("value")));
        }
        let volumes = pod["volumes"].as_array().expect("volumes");
        for mount in c["volumeMounts"].as_array().expect("volumeMounts") {
            let target = mount["mountPath"].as_str().expect("mountPath");
            let volume = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .expect("the mount's volume");
            let source = if volume["configMap"].is_object() {
                config_dir.0.display().to_string()
            } else {
                match volume["hostPath"]["path"].as_str().expect("hostPath") {
                    "/sys/fs/bpf" => bpffs.0.display().to_string(),
                    "/run/kmemcg" => run_dir.0.display().to_string(),
                    "/var/lib/kmemcg" => state_dir.0.display().to_string(),
                    host => host.to_string(),
                }
            };
            let mut options = vec![];
            if mount["readOnly"] == true {
                options.push("ro");
            }
            if mount["mountPropagation"] == "HostToContainer" {
                options.push("rslave");
            }
            args.push(if options.is_empty() {
                format!("--volume={source}:{target}")
            } else {
                format!("--volume={source}:{target}:{}", options.join(","))
            });
            // podman 4.3 has no `rro`: each submount gets its own read-only mount.
            if mount["recursiveReadOnly"] == "Enabled" {
                for sub in submounts(&source) {
                    let inside = format!("{target}{}", &sub[source.len()..]);
                    args.push(format!("--volume={sub}:{inside}:ro"));
                }
            }
        }
        args.push(image.into());
        args.extend(
            c["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("arg").to_string()),
        );
        run(Command::new("podman").args(&args));
        Self {
            name,
            port,
            config_dir,
            run_dir,
            state_dir,
            _bpffs: bpffs,
            _v1: V1Parents(parent.path().trim_start_matches('/').to_string()),
        }
    }

    pub fn id(&self) -> String {
        let out = run(Command::new("podman").args(["inspect", "--format", "{{.Id}}", &self.name]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn start(&self) {
        run(Command::new("podman").args(["start", &self.name]));
    }

    pub fn logs(&self) -> String {
        let out = Command::new("podman")
            .args(["logs", &self.name])
            .output()
            .expect("podman logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn running(&self) -> bool {
        let out = Command::new("podman")
            .args(["inspect", "--format", "{{.State.Running}}", &self.name])
            .output()
            .expect("podman inspect");
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    /// Waits (at most 60 s) for the container to exit; its exit code.
    pub fn wait(&self) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "still running after 60 s: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = run(Command::new("podman").args([
            "inspect",
            "--format",
            "{{.State.ExitCode}}",
            &self.name,
        ]));
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("exit code")
    }

    pub fn get(&self, path: &str) -> reqwest::Result<reqwest::blocking::Response> {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .send()
    }

    pub fn text(&self, path: &str) -> String {
        self.get(path)
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.logs()))
    }

    /// Waits until /readyz answers 200 (the maps were read).
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.get("/readyz").is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(self.running(), "the container exited: {}", self.logs());
            assert!(
                Instant::now() < deadline,
                "not ready in 60 s: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn records(&self) -> Vec<Value> {
        serde_json::from_str(&self.text("/api/v1/enforcement")).expect("audit records")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--time", "5", &self.name])
            .output();
    }
}
