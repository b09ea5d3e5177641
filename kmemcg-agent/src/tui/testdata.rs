//! Readings for the unit tests of `kmemcg top`.
use std::time::{Duration, Instant};

use super::{
    app::{App, Settings},
    keys::Action,
    model::Model,
    view::ViewState,
};
use crate::api::{CacheUsage, CgroupUsage, DyingCgroup, MemoryKind, Snapshot, Status};

/// A live cgroup holding `slab` bytes of dentries and `percpu` bytes of percpu memory.
pub(crate) fn cg(id: u64, path: &str, slab: u64, percpu: u64, allocs: u64) -> CgroupUsage {
    CgroupUsage {
        id,
        path: path.into(),
        alive: true,
        slab_bytes: slab,
        slab_objects: slab / 64,
        percpu_bytes: percpu,
        allocs,
        caches: caches(slab, slab / 192, percpu),
        ..Default::default()
    }
}

/// `dentry` with `slab` bytes in `objects`, and one percpu allocation of `percpu` bytes.
fn caches(slab: u64, objects: u64, percpu: u64) -> Vec<CacheUsage> {
    let cache = |name: &str, kind, bytes, objects| CacheUsage {
        name: name.into(),
        kind,
        bytes,
        objects,
        ..Default::default()
    };
    vec![
        cache("dentry", MemoryKind::Slab, slab, objects),
        cache("percpu", MemoryKind::Percpu, percpu, 1),
    ]
}

/// A removed cgroup holding `residual` bytes, `percpu` of them percpu, charged to `ancestor`.
pub(crate) fn dying(id: u64, path: &str, residual: u64, percpu: u64, ancestor: u64) -> DyingCgroup {
    DyingCgroup {
        id,
        path: path.into(),
        residual_bytes: residual,
        residual_objects: 3,
        caches: caches(residual - percpu, 2, percpu),
        removed_at: Some(1),
        charged_ancestor_id: ancestor,
        charged_ancestor_path: String::new(),
        kernel_memcg: None,
    }
}

pub(crate) fn snapshot(cgroups: Vec<CgroupUsage>, updated_at: u64) -> Snapshot {
    Snapshot {
        dying: Vec::new(),
        status: Status {
            updated_at,
            uptime_seconds: 3725,
            tracked_objects: 1234,
            cgroups: cgroups.len() as u64,
            ..Default::default()
        },
        cgroups,
    }
}

/// `/` with `/system.slice` (`foo.service`, `bar.service`) and `/user.slice`, linked by
/// parent ids.
pub(crate) fn sample() -> Vec<CgroupUsage> {
    let parents = [None, Some(1), Some(2), Some(2), Some(1)];
    let mut cgroups = vec![
        cg(1, "/", 1000, 0, 10),
        cg(2, "/system.slice", 4000, 100, 20),
        cg(3, "/system.slice/foo.service", 50_000, 200, 30),
        cg(4, "/system.slice/bar.service", 9000, 8000, 40),
        cg(5, "/user.slice", 20_000, 0, 50),
    ];
    for (c, p) in cgroups.iter_mut().zip(parents) {
        c.parent = p;
    }
    cgroups
}

pub(crate) fn model_of(cgroups: Vec<CgroupUsage>) -> Model {
    model_from(snapshot(cgroups, 100))
}

pub(crate) fn model_from(snapshot: Snapshot) -> Model {
    Model::default().next(snapshot, Instant::now(), true)
}

pub(crate) fn settings() -> Settings {
    Settings {
        source: "agent test".into(),
        notice: None,
        delay: Duration::from_secs(1),
        skip_same_reading: true,
    }
}

pub(crate) fn app_with(cgroups: Vec<CgroupUsage>) -> App {
    app_of(snapshot(cgroups, 100))
}

/// Carries out `actions` one after the other.
pub(crate) fn act(app: &mut App, actions: &[Action]) {
    for a in actions {
        app.apply(*a, None);
    }
}

pub(crate) fn app_of(snapshot: Snapshot) -> App {
    let mut app = App::new(settings(), ViewState::default());
    app.update(snapshot, Instant::now());
    app
}
