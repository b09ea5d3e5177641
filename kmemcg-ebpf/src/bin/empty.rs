//! Empty programs on kmemcg's memory hooks: the benchmark's baseline for what attaching anything
//! to these tracepoints costs.
#![no_std]
#![no_main]

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

#[btf_tracepoint(function = "kmem_cache_alloc")]
pub fn kmem_cache_alloc(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "kmalloc")]
pub fn kmalloc(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "kmem_cache_free")]
pub fn kmem_cache_free(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "kfree")]
pub fn kfree(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "percpu_alloc_percpu")]
pub fn percpu_alloc_percpu(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "percpu_free_percpu")]
pub fn percpu_free_percpu(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
