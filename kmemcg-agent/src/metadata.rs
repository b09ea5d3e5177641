//! Kubernetes and container metadata from a cgroup path: pod UID, container id, QoS class and
//! runtime, for the systemd and cgroupfs cgroup drivers and the containerd, CRI-O, Docker and
//! Podman runtimes. Pure string parsing; a path that matches nothing gives empty metadata.

/// What a cgroup path says about the pod and container it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    /// Pod UID with dashes (`0f1e...-...`), also for the systemd driver's underscored form.
    pub pod_uid: Option<String>,
    /// Full container id (hex) as the runtime names it.
    pub container_id: Option<String>,
    pub qos_class: Option<QosClass>,
    pub runtime: Option<Runtime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// Kubernetes' own spelling (`status.qosClass`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }
}

/// Container cgroup name prefixes of runtimes, monitors (`conmon`) before their containers.
const SCOPE_PREFIXES: [(&str, Runtime); 6] = [
    ("cri-containerd-", Runtime::Containerd),
    ("crio-conmon-", Runtime::CriO),
    ("crio-", Runtime::CriO),
    ("docker-", Runtime::Docker),
    ("libpod-conmon-", Runtime::Podman),
    ("libpod-", Runtime::Podman),
];

/// Parses a cgroup path such as
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`
/// or `/kubepods/besteffort/pod<uid>/<id>`. Segments below a container (e.g. CRI-O's
/// `.../crio-<id>.scope/container`) inherit its metadata.
pub fn parse(path: &str) -> ContainerMeta {
    let mut meta = ContainerMeta::default();
    let mut in_kubepods = false;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        // containerd's systemd-less form: `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`
        let mut parts = segment.splitn(3, ':');
        let (first, runtime, id) = (parts.next(), parts.next(), parts.next());
        if let (Some(first), Some(runtime), Some(id)) = (first, runtime, id) {
            pod_segment(first, &mut meta, &mut in_kubepods);
            let runtime = match runtime {
                "cri-containerd" => Some(Runtime::Containerd),
                "crio" => Some(Runtime::CriO),
                "docker" => Some(Runtime::Docker),
                _ => None,
            };
            if is_container_id(id) {
                meta.container_id = Some(id.to_string());
                meta.runtime = runtime;
            }
            continue;
        }
        if pod_segment(segment, &mut meta, &mut in_kubepods) {
            continue;
        }
        if let Some((id, runtime)) = scope_container(segment) {
            // A conmon scope is the runtime's monitor process, not the container.
            if !segment.contains("-conmon-") {
                meta.container_id = Some(id.to_string());
            }
            meta.runtime = Some(runtime);
        } else if in_kubepods && meta.pod_uid.is_some() && is_container_id(segment) {
            // cgroupfs driver: `/kubepods/<qos>/pod<uid>/<id>`; the runtime is not named.
            meta.container_id = Some(segment.to_string());
        } else if meta.container_id.is_none()
            && is_container_id(segment)
            && path.starts_with("/docker/")
        {
            // Docker with the cgroupfs driver: `/docker/<id>`.
            meta.container_id = Some(segment.to_string());
            meta.runtime = Some(Runtime::Docker);
        }
    }
    if meta.pod_uid.is_some() && meta.qos_class.is_none() {
        // Guaranteed pods sit directly under kubepods, without a QoS level.
        meta.qos_class = Some(QosClass::Guaranteed);
    }
    meta
}

/// Handles the kubepods, QoS and pod segments of both drivers; true if `segment` was one.
fn pod_segment(segment: &str, meta: &mut ContainerMeta, in_kubepods: &mut bool) -> bool {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    // systemd driver names repeat their parents: kubepods-burstable-pod<uid>; kind and some
    // distributions nest it as kubelet-kubepods-...
    let kube = name
        .find("kubepods")
        .map(|i| &name[i..])
        .filter(|_| segment.ends_with(".slice") || name == "kubepods");
    if let Some(kube) = kube {
        *in_kubepods = true;
        let mut rest = kube.split('-').skip(1);
        for part in rest.by_ref() {
            match part {
                "burstable" => meta.qos_class = Some(QosClass::Burstable),
                "besteffort" => meta.qos_class = Some(QosClass::BestEffort),
                _ => {
                    if let Some(uid) = part.strip_prefix("pod") {
                        set_pod(meta, &uid.replace('_', "-"));
                    }
                }
            }
        }
        return true;
    }
    if !*in_kubepods {
        return false;
    }
    // cgroupfs driver: /kubepods/burstable/pod<uid>/<container id>
    match segment {
        "burstable" => meta.qos_class = Some(QosClass::Burstable),
        "besteffort" => meta.qos_class = Some(QosClass::BestEffort),
        _ => match segment.strip_prefix("pod") {
            Some(uid) if is_pod_uid(uid) => set_pod(meta, uid),
            _ => return false,
        },
    }
    true
}

fn set_pod(meta: &mut ContainerMeta, uid: &str) {
    if is_pod_uid(uid) {
        meta.pod_uid = Some(uid.to_ascii_lowercase());
    }
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, `libpod-<id>.scope`,
/// and CRI-O's `crio-<id>` with the cgroupfs driver.
fn scope_container(segment: &str) -> Option<(&str, Runtime)> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    SCOPE_PREFIXES.iter().find_map(|(prefix, runtime)| {
        name.strip_prefix(prefix)
            .filter(|id| is_container_id(id))
            .map(|id| (id, *runtime))
    })
}

/// Runtimes use 64 hex digits; accept shorter (truncated) ids down to 12.
fn is_container_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A UUID (36 characters with dashes) or, for static pods, a 32-digit hash.
fn is_pod_uid(s: &str) -> bool {
    let hex_or_dash = s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    hex_or_dash && (s.len() == 36 || (s.len() == 32 && !s.contains('-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f3c2b1a-0d4e-4c8b-9a7f-1e2d3c4b5a69";
    const UID_: &str = "6f3c2b1a_0d4e_4c8b_9a7f_1e2d3c4b5a69";
    const ID: &str = "3b1e5c7a9f0d2e4c6b8a0f1e3d5c7b9a1f3e5d7c9b0a2e4f6d8c0b1a3e5f7d9c";

    fn meta(
        pod: Option<&str>,
        id: Option<&str>,
        qos: Option<QosClass>,
        rt: Option<Runtime>,
    ) -> ContainerMeta {
        ContainerMeta {
            pod_uid: pod.map(str::to_string),
            container_id: id.map(str::to_string),
            qos_class: qos,
            runtime: rt,
        }
    }

    #[test]
    fn systemd_driver_containerd_burstable() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/\
             cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parse(&path),
            meta(
                Some(UID),
                Some(ID),
                Some(QosClass::Burstable),
                Some(Runtime::Containerd)
            )
        );
    }

    #[test]
    fn systemd_driver_crio_besteffort_and_conmon() {
        let pod = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        );
        assert_eq!(
            parse(&format!("{pod}/crio-{ID}.scope")),
            meta(
                Some(UID),
                Some(ID),
                Some(QosClass::BestEffort),
                Some(Runtime::CriO)
            )
        );
        // CRI-O on cgroup v2 nests the workload one level down.
        assert_eq!(
            parse(&format!("{pod}/crio-{ID}.scope/container")).container_id,
            Some(ID.to_string())
        );
        let conmon = parse(&format!("{pod}/crio-conmon-{ID}.scope"));
        assert_eq!(conmon.container_id, None);
        assert_eq!(conmon.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn guaranteed_pods_have_no_qos_segment() {
        let systemd = format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope");
        assert_eq!(
            parse(&systemd),
            meta(
                Some(UID),
                Some(ID),
                Some(QosClass::Guaranteed),
                Some(Runtime::Docker)
            )
        );
        let cgroupfs = format!("/kubepods/pod{UID}/{ID}");
        assert_eq!(
            parse(&cgroupfs),
            meta(Some(UID), Some(ID), Some(QosClass::Guaranteed), None)
        );
    }

    #[test]
    fn cgroupfs_driver() {
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            meta(Some(UID), Some(ID), Some(QosClass::Burstable), None)
        );
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}")),
            meta(Some(UID), None, Some(QosClass::BestEffort), None)
        );
    }

    #[test]
    fn cgroupfs_driver_crio_names_its_containers() {
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}")),
            meta(
                Some(UID),
                Some(ID),
                Some(QosClass::BestEffort),
                Some(Runtime::CriO)
            )
        );
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}/crio-conmon-{ID}")).container_id,
            None
        );
    }

    #[test]
    fn qos_level_and_kubepods_alone_have_no_pod() {
        let m = parse("/kubepods.slice/kubepods-burstable.slice");
        assert_eq!((m.pod_uid, m.container_id), (None, None));
        assert_eq!(parse("/kubepods.slice").qos_class, None);
    }

    #[test]
    fn containerd_without_systemd_scopes() {
        let path = format!(
            "/system.slice/containerd.service/kubepods-besteffort-pod{UID_}.slice:cri-containerd:{ID}"
        );
        assert_eq!(
            parse(&path),
            meta(
                Some(UID),
                Some(ID),
                Some(QosClass::BestEffort),
                Some(Runtime::Containerd)
            )
        );
    }

    #[test]
    fn kind_nested_kubelet_slices() {
        let path = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/\
             kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            parse(&path),
            meta(
                Some(UID),
                Some(ID),
                Some(QosClass::Burstable),
                Some(Runtime::Containerd)
            )
        );
    }

    #[test]
    fn plain_docker_and_podman() {
        assert_eq!(
            parse(&format!("/system.slice/docker-{ID}.scope")),
            meta(None, Some(ID), None, Some(Runtime::Docker))
        );
        assert_eq!(
            parse(&format!("/docker/{ID}")),
            meta(None, Some(ID), None, Some(Runtime::Docker))
        );
        assert_eq!(
            parse(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            meta(None, Some(ID), None, Some(Runtime::Podman))
        );
        assert_eq!(
            parse(&format!("/machine.slice/libpod-conmon-{ID}.scope")).container_id,
            None
        );
    }

    #[test]
    fn static_pods_use_a_hash_as_uid() {
        let hash = "d41d8cd98f00b204e9800998ecf8427e";
        let m = parse(&format!("/kubepods/burstable/pod{hash}/{ID}"));
        assert_eq!(m.pod_uid.as_deref(), Some(hash));
    }

    #[test]
    fn ordinary_paths_have_no_metadata() {
        for path in [
            "/",
            "/system.slice/sshd.service",
            "/user.slice/user-0.slice/session-3.scope",
            "/kmemcg-test-1234",
            "/system.slice/docker.service",
            "/podcast.slice",
            "/kubepods-like/pod-not-a-uid",
            "<unknown cgroup 42>",
        ] {
            assert_eq!(parse(path), ContainerMeta::default(), "{path}");
        }
    }
}
