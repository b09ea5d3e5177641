use kmemcg_common::zombies::{MEMCG_NAME_LEN, PATH_COMPONENT_LEN};

use super::*;

fn facts() -> MemcgFacts {
    MemcgFacts {
        css_online: 2,
        css_dying: 16,
        nodes: 1,
        own_bytes: Some(4096),
        ..Default::default()
    }
}

fn memcg(memcg: u64, parent: u64, name: &str, flags: u32, pages: u64) -> KernelMemcg {
    let mut record = KernelMemcg {
        memcg,
        parent,
        cgroup_id: memcg * 10,
        usage_pages: pages,
        css_flags: flags,
        ..Default::default()
    };
    record.name[..name.len().min(MEMCG_NAME_LEN - 1)].copy_from_slice(name.as_bytes());
    record
}

#[test]
fn tree_paths_and_offline_memcgs() {
    let records = [
        memcg(1, 0, "/", 2, 100),
        memcg(2, 1, "a", 2, 50),
        memcg(3, 2, "gone", 16, 40),
        memcg(4, 3, "child", 0, 10),
        memcg(5, 1, "b", 2, 0),
    ];
    let tree = Tree::new(&records, &facts());
    assert_eq!(tree.paths, ["/", "/a", "/a/gone", "/a/gone/child", "/b"]);
    assert_eq!(tree.dying().collect::<Vec<_>>(), [2, 3]);
    assert_eq!(tree.online_ancestor(3), 1);
    assert_eq!(tree.with_dying_children(), HashSet::from([1, 2]));
    let kept = HashSet::from(["/a/gone".to_string(), "/a/gone/child".to_string()]);
    assert!(dying_ancestor("/a/gone/child", &kept));
    assert!(!dying_ancestor("/a/gone", &kept));
}

#[test]
fn reasons_name_files_and_say_when_nothing_is_left() {
    let mut state = KernelMemcgState {
        charged_bytes: 0,
        ..Default::default()
    };
    assert_eq!(
        reason(&state, false),
        "no charge left: waiting for the kernel to release it"
    );
    state.charged_bytes = 1 << 20;
    state.shmem_bytes = Some(1 << 20);
    state.files = vec![ChargedFile {
        path: "/tmp/t/file-3".into(),
        inode: 7,
        bytes: 1 << 20,
        shmem: true,
    }];
    let text = reason(&state, true);
    assert!(text.starts_with("tmpfs/shmem files still charged: /tmp/t/file-3 (1024 KiB)"));
    assert!(text.ends_with("removed descendants the kernel keeps are charged here too"));
}

#[test]
fn file_paths_from_mountinfo() {
    let mounts = "36 25 0:45 / /tmp/kmemcg\\040test rw,relatime shared:1 - tmpfs tmpfs rw\n\
                  37 25 0:46 /sub /mnt/bind rw - tmpfs tmpfs rw\n";
    let mut file = LruFile {
        inode: 1,
        ino: 9,
        pages: 256,
        dev: 45,
        shmem: 1,
        depth: 2,
        complete: 1,
        names: [[0; PATH_COMPONENT_LEN]; kmemcg_common::zombies::MAX_PATH_DEPTH],
    };
    file.names[0][..6].copy_from_slice(b"file-3");
    file.names[1][..3].copy_from_slice(b"dir");
    assert_eq!(file_path(&file, mounts), "/tmp/kmemcg test/dir/file-3");
    file.dev = 46;
    assert_eq!(file_path(&file, mounts), "dev 0:46:/dir/file-3");
    file.complete = 0;
    assert_eq!(file_path(&file, mounts), "dev 0:46:.../dir/file-3");
}

#[test]
fn rows_gain_their_kernel_side_and_kept_memcgs_get_rows() {
    let state = |path: &str| DyingMemcg {
        path: path.into(),
        online_ancestor_id: 10,
        online_ancestor_path: "/".into(),
        state: KernelMemcgState {
            alive_in_kernel: true,
            charged_bytes: 4096,
            memcg_cgroup_id: 77,
            ..Default::default()
        },
        record: 0,
    };
    let scan = KernelMemcgsScan {
        dying: vec![state("/tracked"), state("/untracked")],
        status: KernelMemcgsStatus {
            available: true,
            ..Default::default()
        },
        dying_bytes: 8192,
    };
    let mut rows = vec![
        DyingCgroup {
            id: 5,
            path: "/tracked".into(),
            residual_bytes: 100,
            ..Default::default()
        },
        DyingCgroup {
            id: 6,
            path: "/freed".into(),
            removed_at: Some(1),
            ..Default::default()
        },
    ];
    scan.merge_into(&mut rows);
    assert_eq!(rows.len(), 3);
    assert!(rows[0].kernel_memcg.as_ref().unwrap().alive_in_kernel);
    assert!(!rows[1].kernel_memcg.as_ref().unwrap().alive_in_kernel);
    assert_eq!(rows[2].path, "/untracked");
    assert_eq!(rows[2].residual_bytes, 0);
    assert_eq!(rows[2].charged_ancestor_id, 10);
}
