//! What the sweep reads of a `struct vmap_area` (see kmemcg-ebpf's `truth::vmalloc`), from
//! BTF. Without it the sweep leaves `vmap_area` objects to the slab checks alone.
use btf_rs::Btf;
use kmemcg_common::VmallocLayout;

use super::slab_layout::{find_struct, member_bytes};

pub fn from_btf(btf: &Btf) -> Result<VmallocLayout, String> {
    let va = find_struct(btf, "vmap_area")?;
    let offset = |field: &str| member_bytes(btf, &va, "vmap_area", field);
    let (start, vm) = (offset("va_start")?, offset("vm")?);
    // `vm` shares its word with `subtree_max_size`: the sweep tells them apart.
    if offset("subtree_max_size")? != vm {
        return Err("struct vmap_area keeps vm and subtree_max_size apart".into());
    }
    Ok(VmallocLayout {
        va_start_offset: start,
        va_vm_offset: vm,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn reads_the_running_kernels_vmap_area() {
        let path = Path::new(super::super::btf::VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let layout = from_btf(&Btf::from_file(path).unwrap()).expect("struct vmap_area");
        assert_eq!(layout.va_start_offset, 0);
        assert!(layout.va_vm_offset >= 16);
    }
}
