//! The one thing the kernel side needs from the kernel's BTF that no tracepoint format gives:
//! where `thread.fsbase` sits in `struct task_struct` (x86-64), so the Python frame walk can
//! find the calling thread's pthread (see tracer-ebpf/src/python.rs). A minimal reader of the
//! BTF type section (Documentation/bpf/btf.rst): type ids, names, and struct members.

use std::path::Path;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

struct Type {
    name: u32,
    kind: u32,
    /// (name offset, type id, bit offset) for structs and unions.
    members: Vec<(u32, u32, u32)>,
}

struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

/// Byte offset of `thread.fsbase` in `task_struct`, or None when this kernel's BTF has no
/// such field (not x86-64) or cannot be read.
pub(crate) fn task_fsbase_offset(path: &Path) -> Option<u64> {
    let data = std::fs::read(path).ok()?;
    let btf = Btf::parse(&data)?;
    let task = btf.struct_named("task_struct")?;
    let (thread_type, thread_bits) = btf.member(task, "thread")?;
    let (_, fsbase_bits) = btf.member(thread_type, "fsbase")?;
    Some(u64::from(thread_bits + fsbase_bits) / 8)
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    fn parse(data: &[u8]) -> Option<Self> {
        if u16::from_le_bytes(data.get(0..2)?.try_into().ok()?) != BTF_MAGIC {
            return None;
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types_bytes = data.get(hdr_len + type_off..hdr_len + type_off + type_len)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at + 12 <= types_bytes.len() {
            let name = u32_at(types_bytes, at)?;
            let info = u32_at(types_bytes, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 != 0;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(types_bytes, m + 8)?;
                        let bits = if kind_flag {
                            offset & 0xff_ffff
                        } else {
                            offset
                        };
                        members.push((u32_at(types_bytes, m)?, u32_at(types_bytes, m + 4)?, bits));
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,
                15 | 19 => vlen * 12,
                _ => 0,
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                members,
            });
        }
        Some(Self { types, strings })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn struct_named(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name) == name.as_bytes())
            .map(|id| id as u32)
    }

    /// The type id and bit offset of member `name` of struct `id`, looking into anonymous
    /// structs and unions.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let ty = self.types.get(id as usize)?;
        for &(member_name, member_type, bits) in &ty.members {
            if self.name(member_name) == name.as_bytes() {
                return Some((member_type, bits));
            }
            if member_name == 0
                && let Some((found, inner)) = self.member(member_type, name)
            {
                return Some((found, bits + inner));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This kernel's BTF (every kernel the tracer runs on has one: it is checked at start)
    /// places fsbase inside task_struct, after the scheduler's fields.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn finds_fsbase_in_this_kernels_task_struct() {
        let offset = task_fsbase_offset(Path::new("/sys/kernel/btf/vmlinux"))
            .expect("thread.fsbase in task_struct");
        assert!(offset > 1000 && offset < 16384, "offset {offset}");
    }
}
