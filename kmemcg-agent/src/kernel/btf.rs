//! What the programs need to know about this kernel's types, read from its BTF at load time:
//! `struct kmem_cache` field offsets, the `__GFP_ACCOUNT` and `SLAB_ACCOUNT` bits, and the
//! argument lists of the hooks' tracepoints.
use std::path::Path;

use btf_rs::{Btf, Type};
use fallible_iterator::FallibleIterator;
use kmemcg_common::{HOOKS, HookKind};

use crate::error::StartError;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `__GFP_ACCOUNT` and `SLAB_ACCOUNT` on kernels where they are `#define`s, absent from BTF
/// (before 6.10, which made them enumerators): the same values from Linux 4.5 to 6.9.
const GFP_ACCOUNT_BEFORE_6_10: u64 = 0x40_0000;
const SLAB_ACCOUNT_BEFORE_6_10: u32 = 0x0400_0000;

/// Layout facts passed to the programs as globals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    pub gfp_account: u64,
    pub slab_account: u32,
    pub kmem_cache_flags_offset: u32,
    pub kmem_cache_size_offset: u32,
    pub kmem_cache_name_offset: u32,
    pub cgroup_kn_offset: u32,
    pub cgroup_root_offset: u32,
    pub kernfs_node_id_offset: u32,
    pub cgroup_root_hierarchy_id_offset: u32,
}

/// Parses a kernel's BTF (about a second for vmlinux on the test VM: parse it once).
pub fn parse(path: &Path) -> Result<Btf, StartError> {
    if !path.exists() {
        return Err(StartError::NoBtf {
            path: path.display().to_string(),
        });
    }
    Btf::from_file(path).map_err(|e| StartError::BadBtf {
        what: format!("cannot parse {}", path.display()),
        reason: e.to_string(),
    })
}

/// Parses the running kernel's BTF.
pub fn running_kernel() -> Result<Btf, StartError> {
    parse(Path::new(VMLINUX_BTF))
}

impl KernelLayout {
    /// Reads the layout from the running kernel's BTF.
    pub fn from_running_kernel() -> Result<Self, StartError> {
        Self::from_btf(&running_kernel()?)
    }

    pub fn from_btf(btf: &Btf) -> Result<Self, StartError> {
        // vmalloc hooks are optional (see `hook_available`).
        for hook in HOOKS.iter().filter(|h| h.kind != HookKind::Vmalloc) {
            check_hook(btf, hook.name)?;
        }
        let kmem_cache = find_struct(btf, "kmem_cache")?;
        let offset = |field: &str| member_offset(btf, &kmem_cache, "kmem_cache", field);
        let field = |name: &str, field: &str| {
            let st = find_struct(btf, name)?;
            member_offset(btf, &st, name, field)
        };
        Ok(Self {
            cgroup_kn_offset: field("cgroup", "kn")?,
            cgroup_root_offset: field("cgroup", "root")?,
            kernfs_node_id_offset: field("kernfs_node", "id")?,
            cgroup_root_hierarchy_id_offset: field("cgroup_root", "hierarchy_id")?,
            gfp_account: enum_value(btf, "___GFP_ACCOUNT_BIT")
                .map_or(GFP_ACCOUNT_BEFORE_6_10, |bit| 1u64 << bit),
            slab_account: enum_value(btf, "_SLAB_ACCOUNT")
                .map_or(SLAB_ACCOUNT_BEFORE_6_10, |bit| 1u32 << bit),
            kmem_cache_flags_offset: offset("flags")?,
            kmem_cache_size_offset: offset("size")?,
            kmem_cache_name_offset: offset("name")?,
        })
    }
}

/// Whether an optional hook's tracepoint is in the kernel, as the program expects it.
pub fn hook_available(btf: &Btf, hook: &str) -> bool {
    check_hook(btf, hook).is_ok()
}

/// The tracepoint exists (`btf_trace_<hook>`) and passes the arguments the program reads.
fn check_hook(btf: &Btf, hook: &str) -> Result<(), StartError> {
    let missing = || StartError::HookMissing {
        hook: hook.to_string(),
    };
    let typedef = btf
        .resolve_types_by_name(&format!("btf_trace_{hook}"))
        .map_err(|_| missing())?
        .into_iter()
        .find_map(|t| match t {
            Type::Typedef(t) => Some(t),
            _ => None,
        })
        .ok_or_else(missing)?;
    let proto = btf
        .chained_type_iter(&typedef)
        .find_map(|t| match t {
            Type::FuncProto(p) => Some(p),
            _ => None,
        })
        .ok_or_else(missing)?;
    // The first parameter is the tracepoint's private `void *__data`, not passed to programs.
    let arity = proto.parameters.len().saturating_sub(1);
    let expected = HOOKS.iter().find(|h| h.name == hook).map_or(0, |h| h.arity);
    if arity != expected {
        return Err(StartError::BadBtf {
            what: format!("tracepoint {hook}"),
            reason: format!("it passes {arity} arguments where kmemcg expects {expected}"),
        });
    }
    Ok(())
}

/// The definition (not a forward declaration) of `struct name`.
pub(crate) fn struct_named(btf: &Btf, name: &str) -> Option<btf_rs::Struct> {
    btf.resolve_types_by_name(name)
        .ok()
        .into_iter()
        .flatten()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
}

fn find_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct, StartError> {
    struct_named(btf, name).ok_or_else(|| StartError::BadBtf {
        what: format!("struct {name}"),
        reason: "not found in the kernel's BTF".into(),
    })
}

fn member_offset(
    btf: &Btf,
    st: &btf_rs::Struct,
    struct_name: &str,
    field: &str,
) -> Result<u32, StartError> {
    st.members
        .iter()
        .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == field))
        .map(|m| m.bit_offset() / 8)
        .ok_or_else(|| StartError::BadBtf {
            what: format!("struct {struct_name}"),
            reason: format!("it has no field `{field}`"),
        })
}

/// Value of an enumerator, searched in every enum (`___GFP_*_BIT` live in an anonymous one).
pub(crate) fn enum_value(btf: &Btf, enumerator: &str) -> Option<u32> {
    let mut types = btf.type_iter();
    while let Ok(Some(ty)) = types.next() {
        if let Type::Enum(e) = ty {
            for member in &e.members {
                if btf.resolve_name(member).is_ok_and(|n| n == enumerator) {
                    return Some(member.val());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_btf_is_a_clear_error() {
        let Err(err) = parse(Path::new("/nonexistent/vmlinux")) else {
            panic!("parsed a missing file");
        };
        assert!(matches!(err, StartError::NoBtf { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn reads_the_running_kernels_layout() {
        // Needs only a readable /sys/kernel/btf/vmlinux, no privileges.
        if !Path::new(VMLINUX_BTF).exists() {
            return;
        }
        let layout = KernelLayout::from_running_kernel().expect("layout");
        assert_eq!(layout.gfp_account.count_ones(), 1);
        assert_eq!(layout.slab_account.count_ones(), 1);
        assert!(layout.kmem_cache_size_offset > layout.kmem_cache_flags_offset);
        assert!(layout.kmem_cache_name_offset > 0);
        assert!(layout.cgroup_kn_offset > 0 && layout.cgroup_root_offset > 0);
    }
}
