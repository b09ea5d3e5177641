//! The memory cgroups the kernel keeps after their removal ("dying" or "zombie" memcgs):
//! each sample walks the kernel's memcg tree (`kernel_memcgs`, see
//! [`kmemcg_common::zombies`]), takes the offline ones, and for the largest walks their LRU
//! lists (`memcg_lru`) to say what still charges them and which files. Removal times come
//! from kmemcg's cgroup events, matched by path (on hybrid hosts the memory cgroup is the v1
//! one, named like its v2 twin).
use std::{
    collections::{HashMap, HashSet},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use kmemcg_common::{
    CGROUP_EVENT_RMDIR, CgroupEvent,
    zombies::{
        KERNEL_MEMCGS, KERNEL_MEMCGS_PROGRAM, KernelMemcg, LruFile, MAX_KERNEL_MEMCGS, MEMCG_LRU,
        MEMCG_LRU_PROGRAM, MemcgLru, STAT_ANON, STAT_FILE, STAT_KERNEL, STAT_PERCPU, STAT_SHMEM,
        STAT_SLAB_RECLAIMABLE, STAT_SLAB_UNRECLAIMABLE, STAT_UNKNOWN, WALK_FAILED,
    },
};

use crate::{
    api::{ChargedFile, DyingCgroup, KernelMemcgState, KernelMemcgsStatus},
    kernel::memcg_layout::MemcgFacts,
    tracer::Tracer,
};

/// Dying memcgs whose LRU lists are walked each sample, largest charge first.
const LRU_WALKS_PER_SAMPLE: usize = 64;
/// Folios one LRU walk looks at, at most (256 MiB of 4 KiB pages).
const LRU_FOLIOS_PER_WALK: u64 = 64 * 1024;
/// How long an LRU walk's result is reused.
const LRU_REUSE: std::time::Duration = std::time::Duration::from_secs(10);
/// Removal times remembered, at most (oldest forgotten first).
const MAX_REMOVALS: usize = 1 << 16;

/// A memcg the kernel keeps offline, as the last walk saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DyingMemcg {
    /// Path in the memory controller's hierarchy (the cgroup v2 path on a v2 host).
    pub path: String,
    /// Its nearest ancestor still online: that one's cgroup id and path.
    pub online_ancestor_id: u64,
    pub online_ancestor_path: String,
    pub state: KernelMemcgState,
    /// Index of its record in the walk.
    record: usize,
}

/// The kernel's memcgs as one walk read them, or why it could not.
pub struct Walk {
    started: Instant,
    facts: Result<MemcgFacts, String>,
    records: Result<Vec<KernelMemcg>, String>,
}

/// What one walk found.
#[derive(Clone, Debug, Default)]
pub struct KernelMemcgsScan {
    pub dying: Vec<DyingMemcg>,
    pub status: KernelMemcgsStatus,
    /// Bytes charged to the dying, nested ones counted once.
    pub dying_bytes: u64,
}

pub struct KernelMemcgs {
    /// When kmemcg saw each cgroup path removed.
    removed: HashMap<String, SystemTime>,
    /// The last LRU walk of each dying memcg (by address and css id) and its charge then,
    /// reused for a while if the charge has not changed: a walk costs a read per page.
    lru: HashMap<(u64, u32), (Instant, u64, MemcgLru)>,
    page_size: u64,
}

impl Default for KernelMemcgs {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelMemcgs {
    pub fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Self {
            removed: HashMap::new(),
            lru: HashMap::new(),
            page_size,
        }
    }

    /// Notes the removals among the cgroup events.
    pub fn note_events(&mut self, events: &[CgroupEvent]) {
        for event in events.iter().filter(|e| e.kind == CGROUP_EVENT_RMDIR) {
            if let Some(path) = event.path() {
                let path = normalize(&String::from_utf8_lossy(path));
                if self.removed.len() >= MAX_REMOVALS
                    && let Some(oldest) = self
                        .removed
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(p, _)| p.clone())
                {
                    self.removed.remove(&oldest);
                }
                self.removed.insert(path, SystemTime::now());
            }
        }
    }

    /// Walks the kernel's memcgs. Their removals must be noted ([`Self::note_events`])
    /// between this walk and [`Self::scan`]: the kernel sends a cgroup's rmdir event before
    /// it takes its memcg offline, so the events taken after the walk name every removal the
    /// walk saw.
    pub fn walk(tracer: &Tracer) -> Walk {
        let started = Instant::now();
        let facts = tracer
            .kernel_memcgs()
            .copied()
            .map_err(|why| why.to_string());
        let records = facts.clone().and_then(|_| walk(tracer));
        Walk {
            started,
            facts,
            records,
        }
    }

    /// Describes the dying memcgs of a walk.
    pub fn scan(&mut self, tracer: &Tracer, walk: Walk) -> KernelMemcgsScan {
        let Walk {
            started,
            facts,
            records,
        } = walk;
        let (facts, records) = match facts.and_then(|f| Ok((f, records?))) {
            Ok(walked) => walked,
            Err(why) => return unavailable(why),
        };
        let tree = Tree::new(&records, &facts);
        let mut dying: Vec<DyingMemcg> = tree
            .dying()
            .map(|i| self.describe(&tree, i, &facts))
            .collect();
        // Forget removals of cgroups the kernel has freed, or never kept. A recent one is kept
        // even while its memcg still walks as online: the kernel takes it offline from a
        // workqueue after the rmdir.
        let kept: HashSet<String> = dying.iter().map(|d| d.path.clone()).collect();
        self.removed
            .retain(|path, at| kept.contains(path) || recent(*at));
        dying.sort_by_key(|d| std::cmp::Reverse(d.state.charged_bytes));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut lru_walks = 0;
        let mut walked = HashMap::new();
        for d in &mut dying {
            if d.state.charged_bytes == 0 {
                continue;
            }
            let record = &records[d.record];
            let key = (record.memcg, record.css_id);
            let lru = match self.lru.remove(&key) {
                Some((at, usage, lru))
                    if at.elapsed() < LRU_REUSE && usage == record.usage_pages =>
                {
                    Some((at, lru))
                }
                _ if lru_walks >= LRU_WALKS_PER_SAMPLE => None,
                _ => {
                    lru_walks += 1;
                    match walk_lru(tracer, record, &facts) {
                        Ok(Some(lru)) => Some((Instant::now(), lru)),
                        Ok(None) => None,
                        Err(e) => {
                            tracing::debug!(error = %e, path = d.path, "memcg LRU walk failed");
                            None
                        }
                    }
                }
            };
            if let Some((at, lru)) = lru {
                apply_lru(&mut d.state, &lru, self.page_size, &mounts);
                walked.insert(key, (at, record.usage_pages, lru));
            }
        }
        self.lru = walked;
        let with_dying_children = tree.with_dying_children();
        for d in &mut dying {
            d.state.reason = reason(&d.state, with_dying_children.contains(&d.record));
        }
        let dying_bytes = dying
            .iter()
            .filter(|d| !dying_ancestor(&d.path, &kept))
            .map(|d| d.state.charged_bytes)
            .sum();
        let own = facts.own_bytes.unwrap_or(0) * dying.len() as u64;
        KernelMemcgsScan {
            status: KernelMemcgsStatus {
                available: true,
                reason: None,
                stats_reason: facts.stats_unavailable.map(Into::into),
                lru_pages_reparented: facts.lru_reparented,
                memcgs: records.len() as u64,
                own_bytes_estimate: own,
                own_bytes_basis: own_basis(&facts),
                last_ms: started.elapsed().as_secs_f64() * 1000.0,
            },
            dying,
            dying_bytes,
        }
    }

    fn describe(&self, tree: &Tree, index: usize, facts: &MemcgFacts) -> DyingMemcg {
        let record = &tree.records[index];
        let path = tree.paths[index].clone();
        let stat =
            |i: usize| (record.stats[i] != STAT_UNKNOWN).then(|| record.stats[i].max(0) as u64);
        let pages = |i: usize| stat(i).map(|p| p * self.page_size);
        let slab = stat(STAT_SLAB_RECLAIMABLE)
            .zip(stat(STAT_SLAB_UNRECLAIMABLE))
            .map(|(a, b)| a + b);
        let removed_at = self
            .removed
            .get(&path)
            .map(|at| at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        DyingMemcg {
            record: index,
            online_ancestor_id: tree.records[tree.online_ancestor(index)].cgroup_id,
            online_ancestor_path: tree.paths[tree.online_ancestor(index)].clone(),
            state: KernelMemcgState {
                alive_in_kernel: true,
                charged_bytes: record.usage_pages * self.page_size,
                file_bytes: pages(STAT_FILE),
                anon_bytes: pages(STAT_ANON),
                shmem_bytes: pages(STAT_SHMEM),
                slab_bytes: slab,
                percpu_bytes: stat(STAT_PERCPU),
                kernel_bytes: pages(STAT_KERNEL),
                own_bytes_estimate: facts.own_bytes,
                removed_at,
                removed_before_start: removed_at.is_none(),
                reason: String::new(),
                files: Vec::new(),
                memcg_cgroup_id: record.cgroup_id,
            },
            path,
        }
    }
}

impl KernelMemcgsScan {
    /// Gives each dying row its kernel side, and adds rows for the dying memcgs that hold no
    /// object kmemcg tracks. Rows are matched by path, the first kept memcg of that path to
    /// the row (a name reused and removed again leaves several).
    pub fn merge_into(&self, rows: &mut Vec<DyingCgroup>) {
        let mut unmatched: Vec<&DyingMemcg> = self.dying.iter().collect();
        for row in rows.iter_mut() {
            row.kernel_memcg = match unmatched.iter().position(|d| d.path == row.path) {
                Some(at) => Some(unmatched.remove(at).state.clone()),
                None if self.status.available => Some(KernelMemcgState {
                    alive_in_kernel: false,
                    removed_at: row.removed_at,
                    removed_before_start: row.removed_at.is_none(),
                    reason: "freed by the kernel; kmemcg still tracks objects charged to it".into(),
                    ..Default::default()
                }),
                None => None,
            };
        }
        rows.extend(unmatched.into_iter().map(|d| DyingCgroup {
            id: d.state.memcg_cgroup_id,
            path: d.path.clone(),
            removed_at: d.state.removed_at,
            charged_ancestor_id: d.online_ancestor_id,
            charged_ancestor_path: d.online_ancestor_path.clone(),
            kernel_memcg: Some(d.state.clone()),
            ..Default::default()
        }));
    }
}

fn unavailable(reason: String) -> KernelMemcgsScan {
    KernelMemcgsScan {
        status: KernelMemcgsStatus {
            available: false,
            reason: Some(reason),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Removed within the last minute: the kernel may not have listed it yet.
fn recent(at: SystemTime) -> bool {
    at.elapsed().is_ok_and(|e| e.as_secs() < 60)
}

fn own_basis(facts: &MemcgFacts) -> String {
    format!(
        "per dying memcg: struct mem_cgroup + memcg_vmstats, {} node(s) x mem_cgroup_per_node \
         (+ lruvec_stats), and per possible CPU memcg_vmstats_percpu + lruvec_stats_percpu per \
         node; struct sizes from BTF, allocator rounding left out ({} bytes each here)",
        facts.nodes,
        facts.own_bytes.unwrap_or(0)
    )
}

fn walk(tracer: &Tracer) -> Result<Vec<KernelMemcg>, String> {
    let count = tracer
        .run_program(KERNEL_MEMCGS_PROGRAM, &[])
        .map_err(|e| format!("the walk of the kernel's memory cgroups failed: {e}"))?;
    if count == WALK_FAILED {
        return Err(
            "the walk of the kernel's memory cgroups could not read the memory controller's \
             root (through the agent's own memory cgroup)"
                .into(),
        );
    }
    tracer
        .read_array::<KernelMemcg>(KERNEL_MEMCGS, count.min(MAX_KERNEL_MEMCGS))
        .map_err(|e| format!("cannot read the walk's records: {e}"))
}

/// The LRU lists of one memcg; None when the kernel has freed it since the walk.
fn walk_lru(
    tracer: &Tracer,
    record: &KernelMemcg,
    facts: &MemcgFacts,
) -> Result<Option<MemcgLru>, String> {
    let args = [
        record.memcg,
        u64::from(record.css_id),
        facts.nodes,
        LRU_FOLIOS_PER_WALK,
    ];
    let result = tracer
        .run_program(MEMCG_LRU_PROGRAM, &args)
        .map_err(|e| e.to_string())?;
    if result != 0 {
        return Ok(None);
    }
    let lru = tracer
        .read_array::<MemcgLru>(MEMCG_LRU, 1)
        .map_err(|e| e.to_string())?;
    Ok(lru.into_iter().next().filter(|l| l.memcg == record.memcg))
}

/// What the LRU walk saw replaces the statistics' file/anon/shmem split: it is what is there
/// now (the statistics are flushed every few seconds).
fn apply_lru(state: &mut KernelMemcgState, lru: &MemcgLru, page_size: u64, mounts: &str) {
    state.file_bytes = Some(lru.file_pages * page_size);
    state.anon_bytes = Some(lru.anon_pages * page_size);
    state.shmem_bytes = Some(lru.shmem_pages * page_size);
    let used = (lru.files_used as usize).min(lru.files.len());
    let mut files: Vec<ChargedFile> = lru.files[..used]
        .iter()
        .filter(|f| f.inode != 0)
        .map(|f| ChargedFile {
            path: file_path(f, mounts),
            inode: f.ino,
            bytes: f.pages * page_size,
            shmem: f.shmem != 0,
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.bytes));
    state.files = files;
}

/// A file's path: its mount point where this process sees its filesystem mounted at the
/// filesystem's root, then the names the walk read up to that root.
fn file_path(file: &LruFile, mounts: &str) -> String {
    let mut components: Vec<String> = file.names[..(file.depth as usize).min(file.names.len())]
        .iter()
        .map(|name| {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect();
    components.reverse();
    let inside = format!(
        "{}{}",
        if file.complete != 0 { "/" } else { ".../" },
        components.join("/")
    );
    // The kernel's dev_t: major in the upper 12 bits, minor in the lower 20.
    let (major, minor) = (file.dev >> 20, file.dev & 0xf_ffff);
    match mount_point(mounts, major, minor) {
        Some(mount) if file.complete != 0 => {
            format!("{}{}", mount.trim_end_matches('/'), inside)
        }
        _ => format!("dev {major}:{minor}:{inside}"),
    }
}

/// Where the filesystem `major:minor` is mounted at its root, from /proc/self/mountinfo.
fn mount_point(mountinfo: &str, major: u32, minor: u32) -> Option<String> {
    let device = format!("{major}:{minor}");
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.len() > 4 && fields[2] == device && fields[3] == "/").then(|| unescape(fields[4]))
    })
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(digits).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why the kernel keeps it, largest charge first.
fn reason(state: &KernelMemcgState, has_dying_children: bool) -> String {
    if state.charged_bytes == 0 {
        return "no charge left: waiting for the kernel to release it".into();
    }
    let mut parts = Vec::new();
    let named = |shmem: bool| -> Vec<String> {
        state
            .files
            .iter()
            .filter(|f| f.shmem == shmem)
            .map(|f| format!("{} ({} KiB)", f.path, f.bytes / 1024))
            .collect()
    };
    let mut kinds: Vec<(u64, String)> = Vec::new();
    if let Some(shmem) = state.shmem_bytes.filter(|&b| b > 0) {
        let files = named(true);
        kinds.push((
            shmem,
            if files.is_empty() {
                "tmpfs/shmem pages still charged (delete the files or unmount the tmpfs)".into()
            } else {
                format!(
                    "tmpfs/shmem files still charged: {} (delete them or unmount their tmpfs)",
                    files.join(", ")
                )
            },
        ));
    }
    if let Some(file) = state.file_bytes.filter(|&b| b > 0) {
        let files = named(false);
        kinds.push((
            file,
            if files.is_empty() {
                "page cache still charged (reclaimed under memory pressure)".into()
            } else {
                format!(
                    "page cache of files still charged: {} (reclaimed under memory pressure, or \
                     drop it with posix_fadvise/drop_caches)",
                    files.join(", ")
                )
            },
        ));
    }
    if let Some(anon) = state.anon_bytes.filter(|&b| b > 0) {
        kinds.push((
            anon,
            "anonymous memory still charged (a process of the cgroup, moved elsewhere, still \
             maps it; or swap cache)"
                .into(),
        ));
    }
    let kernel = state
        .kernel_bytes
        .unwrap_or(0)
        .max(state.slab_bytes.unwrap_or(0));
    if kernel > 0 {
        kinds.push((
            kernel,
            "kernel memory still charged (slab objects, page tables, sockets)".into(),
        ));
    }
    kinds.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    parts.extend(kinds.into_iter().map(|(_, text)| text));
    if has_dying_children {
        parts.push("removed descendants the kernel keeps are charged here too".into());
    }
    if parts.is_empty() {
        parts.push("memory still charged to it (kind unknown on this kernel)".into());
    }
    parts.join("; ")
}

/// `/a/b/` and `a/b` -> `/a/b`.
fn normalize(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    format!("/{trimmed}")
}

fn dying_ancestor(path: &str, dying: &HashSet<String>) -> bool {
    let mut at = path;
    while let Some((parent, _)) = at.rsplit_once('/') {
        if parent.is_empty() {
            return false;
        }
        if dying.contains(parent) {
            return true;
        }
        at = parent;
    }
    false
}

/// The walk's records as a tree: paths by index, parents by address.
struct Tree<'a> {
    records: &'a [KernelMemcg],
    paths: Vec<String>,
    parent: Vec<Option<usize>>,
    online: Vec<bool>,
}

impl<'a> Tree<'a> {
    fn new(records: &'a [KernelMemcg], facts: &MemcgFacts) -> Self {
        let by_address: HashMap<u64, usize> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.memcg, i))
            .collect();
        let parent: Vec<Option<usize>> = records
            .iter()
            .map(|r| by_address.get(&r.parent).copied().filter(|_| r.parent != 0))
            .collect();
        // Pre-order: a parent's path is known before its children's.
        let mut paths: Vec<String> = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let name = name_of(record);
            let path = match parent[i].filter(|&p| p < i) {
                Some(p) if paths[p] == "/" => format!("/{name}"),
                Some(p) => format!("{}/{name}", paths[p]),
                None => "/".into(),
            };
            paths.push(path);
        }
        let online = records
            .iter()
            .map(|r| r.css_flags & facts.css_online != 0 && r.css_flags & facts.css_dying == 0)
            .collect();
        Self {
            records,
            paths,
            parent,
            online,
        }
    }

    /// Indexes of the offline memcgs below the root.
    fn dying(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.records.len()).filter(|&i| self.parent[i].is_some() && !self.online[i])
    }

    /// Indexes of the memcgs with an offline child.
    fn with_dying_children(&self) -> HashSet<usize> {
        self.dying().filter_map(|i| self.parent[i]).collect()
    }

    /// Index of the nearest online ancestor (the root at worst).
    fn online_ancestor(&self, mut index: usize) -> usize {
        while let Some(p) = self.parent[index] {
            if self.online[p] {
                return p;
            }
            index = p;
        }
        index
    }
}

fn name_of(record: &KernelMemcg) -> String {
    let end = record
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(record.name.len());
    String::from_utf8_lossy(&record.name[..end]).into_owned()
}

#[cfg(test)]
mod tests;
