//! Whole-map reads and writes with BPF_MAP_{LOOKUP,UPDATE}_BATCH: a few syscalls instead of
//! one or two per entry, which keeps a sample fast with tens of thousands of slots. aya 0.14
//! has no batch operations, hence this small wrapper around bpf(2).
use std::{io, mem::size_of, os::fd::RawFd};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Entries per call.
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

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: the attribute points at buffers sized for `count` entries, alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every (key, value) of the map `fd` that `keep` accepts. For a per-CPU map (`cpus` > 1, or
/// 1 on a one-CPU machine) the CPUs' values are folded into one by `fold`, starting from
/// `V::default()`; for other maps pass `cpus` = 1.
pub fn lookup_all<K: Pod, V: Pod + Default>(
    fd: RawFd,
    cpus: usize,
    keep: impl Fn(&K, &V) -> bool,
    fold: impl Fn(&mut V, &V),
) -> io::Result<Vec<(K, V)>> {
    // Per-CPU values are laid out at 8-byte strides.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut out = Vec::new();
    let mut keys = vec![0u8; BATCH as usize * size_of::<K>()];
    let mut values = vec![0u8; BATCH as usize * stride * cpus];
    let mut token = [0u8; 16];
    let mut next = [0u8; 16];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match &result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(_) => return result.map(|()| out),
        };
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
            if keep(&key, &value) {
                out.push((key, value));
            }
        }
        if done {
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

/// Writes `value` (the same bytes for every CPU of a per-CPU map: pass `cpus`) at each of
/// `keys` of the array map `fd`.
pub fn update_all<K: Pod, V: Pod>(fd: RawFd, keys: &[K], value: &V, cpus: usize) -> io::Result<()> {
    let stride = size_of::<V>().next_multiple_of(8);
    for chunk in keys.chunks(BATCH as usize) {
        let mut values = vec![0u8; chunk.len() * stride * cpus];
        for i in 0..chunk.len() * cpus {
            // SAFETY: within the buffer; unaligned writes of a plain value.
            unsafe {
                std::ptr::write_unaligned(values[i * stride..].as_mut_ptr().cast::<V>(), *value)
            };
        }
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `BPF_F_TEST_RUN_ON_CPU`: run on the CPU given, not on the caller's.
const BPF_F_TEST_RUN_ON_CPU: u32 = 1;

/// Runs the raw tracepoint program `fd` once with `args` as its arguments
/// (`BPF_PROG_TEST_RUN`; the program needs not be attached), on `cpu` if given, and returns
/// its return value.
pub fn run_raw_tracepoint(fd: RawFd, args: &[u64], cpu: Option<u32>) -> io::Result<u32> {
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        ctx_size_in: size_of_val(args) as u32,
        ctx_in: if args.is_empty() {
            0
        } else {
            args.as_ptr() as u64
        },
        flags: cpu.map_or(0, |_| BPF_F_TEST_RUN_ON_CPU),
        cpu: cpu.unwrap_or(0),
        ..Default::default()
    };
    // SAFETY: the attribute points at `args`, alive for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            size_of::<TestRunAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(attr.retval)
    }
}
