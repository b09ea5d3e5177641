//! The layout the inventory needs to find percpu chunks and their owner records: `struct
//! page`'s pointer words, `struct pcpu_chunk` and `struct pcpuobj_ext`, from BTF. A kernel
//! without an owner vector in its chunks (no memcg accounting of percpu memory) gets no
//! percpu inventory, with the reason in the status.
use btf_rs::Btf;
use kmemcg_common::PercpuLayout;

use super::slab_layout::{find_struct, member_bytes};

pub fn from_btf(btf: &Btf) -> Result<PercpuLayout, String> {
    let page = find_struct(btf, "page")?;
    let chunk = find_struct(btf, "pcpu_chunk")?;
    let bytes = |st: &btf_rs::Struct, name: &str, field: &str| member_bytes(btf, st, name, field);
    let mapping = bytes(&page, "page", "mapping")?;
    let private = bytes(&page, "page", "private")?;
    if private != mapping + 16 {
        return Err("struct page's mapping, index and private are not adjacent".into());
    }
    // Linux 6.10 made the obj_cgroup vector a vector of `struct pcpuobj_ext`.
    let (vector, ext_size, objcg) = match bytes(&chunk, "pcpu_chunk", "obj_exts") {
        Ok(vector) => {
            let ext = find_struct(btf, "pcpuobj_ext")?;
            let objcg = bytes(&ext, "pcpuobj_ext", "cgroup").map_err(
                |_| "percpu owner records carry no obj_cgroup (a kernel without CONFIG_MEMCG)",
            )?;
            (vector, ext.size() as u32, objcg)
        }
        Err(_) => (
            bytes(&chunk, "pcpu_chunk", "obj_cgroups")
                .map_err(|_| "percpu chunks have no owner records on this kernel")?,
            8,
            0,
        ),
    };
    Ok(PercpuLayout {
        page_mapping_offset: mapping,
        chunk_list_offset: bytes(&chunk, "pcpu_chunk", "list")?,
        chunk_base_addr_offset: bytes(&chunk, "pcpu_chunk", "base_addr")?,
        chunk_bound_map_offset: bytes(&chunk, "pcpu_chunk", "bound_map")?,
        chunk_obj_exts_offset: vector,
        chunk_nr_pages_offset: bytes(&chunk, "pcpu_chunk", "nr_pages")?,
        obj_ext_size: ext_size,
        obj_ext_objcg_offset: objcg,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn reads_the_running_kernels_percpu_layout() {
        let path = Path::new(super::super::btf::VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let Ok(layout) = from_btf(&btf) else {
            return; // a kernel without percpu owner records: nothing to check
        };
        assert!(layout.chunk_obj_exts_offset > layout.chunk_list_offset);
        assert!(layout.obj_ext_size >= 8 && layout.obj_ext_size % 8 == 0);
        assert!(layout.obj_ext_objcg_offset < layout.obj_ext_size);
        assert!(layout.page_mapping_offset >= 8);
    }
}
