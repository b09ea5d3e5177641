//! Reads a whole per-CPU hash map with BPF_MAP_LOOKUP_BATCH: a few syscalls instead of two per
//! entry, which is what keeps a sample fast with tens of thousands of (cgroup, cache) entries.
//! aya 0.14 has no batch operations, hence this small wrapper around bpf(2).
use std::{io, mem::size_of, os::fd::RawFd};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call; a hash bucket larger than this makes the kernel answer ENOSPC,
/// and the call is retried with room for more.
const BATCH: u32 = 4096;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of the per-CPU hash map `fd` with `cpus` possible CPUs, the per-CPU
/// values folded into one by `fold` (starting from `V::default()`).
pub fn lookup_all_per_cpu<K: Pod, V: Pod + Default>(
    fd: RawFd,
    cpus: usize,
    fold: impl Fn(&mut V, &V),
) -> io::Result<Vec<(K, V)>> {
    // Per-CPU values are laid out at 8-byte strides.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut batch_size = BATCH;
    let mut out = Vec::new();
    let mut token = [0u8; 16];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; batch_size as usize * size_of::<K>()];
        let mut values = vec![0u8; batch_size as usize * stride * cpus];
        let mut next = [0u8; 16];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch_size,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the attribute points at buffers sized for `count` entries, alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            Some(libc::ENOSPC) if batch_size < 1 << 20 => {
                batch_size *= 4;
                continue;
            }
            Some(libc::ENOENT) | None => {}
            Some(_) => return Err(err.expect("an error")),
        }
        for i in 0..attr.count as usize {
            // SAFETY: the kernel wrote `count` keys and values of these sizes; read unaligned.
            let key = unsafe {
                std::ptr::read_unaligned(keys[i * size_of::<K>()..].as_ptr().cast::<K>())
            };
            let mut value = V::default();
            for cpu in 0..cpus {
                let at = (i * cpus + cpu) * stride;
                // SAFETY: as above.
                let v = unsafe { std::ptr::read_unaligned(values[at..].as_ptr().cast::<V>()) };
                fold(&mut value, &v);
            }
            out.push((key, value));
        }
        if err.is_some() {
            // ENOENT: that was the last batch.
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Deletes `keys` from the hash map `fd` with BPF_MAP_DELETE_BATCH. Keys already gone stop a
/// batch early (ENOENT); the rest of that batch is then deleted on the next round.
pub fn delete_all<K: Pod>(fd: RawFd, keys: &[K]) -> io::Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(BATCH as usize)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        // SAFETY: the attribute points at `count` keys, alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        let deleted = attr.count as usize;
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOENT) {
                return Err(err);
            }
            // Skip the missing key the kernel stopped at.
            rest = &rest[(deleted + 1).min(rest.len())..];
        } else {
            rest = &rest[deleted.max(1).min(rest.len())..];
        }
    }
    Ok(())
}
