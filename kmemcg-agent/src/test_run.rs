//! Runs a program once, outside any event (`BPF_PROG_TEST_RUN`), on a CPU of choice: how the
//! agent drives the inventory and the sweep. aya 0.14 cannot pass a raw tracepoint's
//! arguments or a CPU, hence this small wrapper around bpf(2).
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd, RawFd},
};

use crate::error::ReadError;

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

/// Runs the loaded program `program` (file descriptor `fd`) once, as
/// [`run_raw_tracepoint`] does, saying which program failed.
pub fn run_program(
    program: &'static str,
    fd: BorrowedFd<'_>,
    args: &[u64],
    cpu: Option<u32>,
) -> Result<u32, ReadError> {
    run_raw_tracepoint(fd.as_raw_fd(), args, cpu)
        .map_err(|source| ReadError::TestRun { program, source })
}
