//! Field offsets of kernel structs, from the kernel's BTF (/sys/kernel/btf/vmlinux), for the
//! few fields the programs read without CO-RE (the descriptor table sys_enter_close checks, and
//! `thread.fsbase`, by which the Python frame walk finds the calling thread's pthread): enough
//! of the BTF format (linux/btf.h) to find a struct by name and a member's byte offset in it,
//! through anonymous structs and unions.

use std::{fs, path::Path};

use tracer_common::{FIELD_ABSENT, KernelOffsets, TimeWaitOffsets};

#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF, or cut short: {0}")]
    Malformed(&'static str),
    #[error("the BTF has no struct {0}")]
    NoStruct(String),
    #[error("the BTF's struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("the BTF's struct {0} holds {1} through a pointer")]
    NotEmbedded(String, String),
}

const MAGIC: u16 = 0xEB9F;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
/// Kinds that only qualify or rename another type: typedef, volatile, const, restrict,
/// type_tag.
const KINDS_QUALIFYING: [u32; 5] = [8, 9, 10, 11, 18];

/// One type's header and where its kind-specific data starts in the type section.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kflag: bool,
    /// The size of a struct, or the type a qualifier or pointer refers to.
    size_or_type: u32,
    extra: usize,
}

struct Btf<'a> {
    types: Vec<Type>,
    section: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let short = BtfError::Malformed;
        let magic = u16::from_ne_bytes(
            data.get(0..2)
                .ok_or(short("header"))?
                .try_into()
                .unwrap_or_default(),
        );
        if magic != MAGIC {
            return Err(short("wrong magic number"));
        }
        let header = |at| u32_at(data, at).map(|v| v as usize).ok_or(short("header"));
        let (hdr_len, type_off, type_len) = (header(4)?, header(8)?, header(12)?);
        let (str_off, str_len) = (header(16)?, header(20)?);
        let section = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(short("type section"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(short("string section"))?;
        // Type ids start at 1; id 0 is void.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            vlen: 0,
            kflag: false,
            size_or_type: 0,
            extra: 0,
        }];
        let mut at = 0;
        while at < section.len() {
            let word = |i: usize| u32_at(section, at + 4 * i).ok_or(short("type"));
            let info = word(1)?;
            let ty = Type {
                name_off: word(0)?,
                kind: (info >> 24) & 0x1f,
                vlen: info & 0xffff,
                kflag: info >> 31 == 1,
                size_or_type: word(2)?,
                extra: at + 12,
            };
            let vlen = ty.vlen as usize;
            let extra = match ty.kind {
                1 | 14 | 17 => 4,
                3 => 12,
                KIND_STRUCT | KIND_UNION | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                _ => return Err(short("unknown type kind")),
            };
            types.push(ty);
            at += 12 + extra;
        }
        Ok(Self {
            types,
            section,
            strings,
        })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// The struct called `name` (a definition, not a forward declaration).
    fn struct_named(&self, name: &str) -> Result<Type, BtfError> {
        self.types
            .iter()
            .find(|t| {
                t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name_off) == name.as_bytes()
            })
            .copied()
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))
    }

    /// The type `id` refers to once typedefs and qualifiers are looked through.
    fn resolved(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let ty = *self.types.get(id as usize)?;
            if !KINDS_QUALIFYING.contains(&ty.kind) {
                return Some(ty);
            }
            id = ty.size_or_type;
        }
        None
    }

    /// Byte offset and type id of member `member` in `ty`, looking into anonymous structs and
    /// unions.
    fn member_offset(&self, ty: Type, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for i in 0..ty.vlen as usize {
            let at = ty.extra + 12 * i;
            let (name_off, type_id, offset) = (
                u32_at(self.section, at)?,
                u32_at(self.section, at + 4)?,
                u32_at(self.section, at + 8)?,
            );
            // With kflag, the top 8 bits hold a bitfield's size.
            let bits = if ty.kflag {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            let name = self.name(name_off);
            if name == member.as_bytes() {
                return Some((bits / 8, type_id));
            }
            if name.is_empty()
                && let Some(inner) = self.resolved(type_id)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some((found, found_type)) = self.member_offset(inner, member, depth + 1)
            {
                return Some((bits / 8 + found, found_type));
            }
        }
        None
    }

    fn offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        self.member(strukt, member).map(|(offset, _)| offset)
    }

    fn member(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        self.member_offset(self.struct_named(strukt)?, member, 0)
            .ok_or_else(|| BtfError::NoMember(strukt.to_owned(), member.to_owned()))
    }

    /// Byte offset of `member`, a struct held in `strukt` itself (not a pointer to one).
    fn embedded(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let (offset, type_id) = self.member(strukt, member)?;
        match self.resolved(type_id) {
            Some(ty) if ty.kind == KIND_STRUCT => Ok(offset),
            _ => Err(BtfError::NotEmbedded(strukt.to_owned(), member.to_owned())),
        }
    }

    /// Size in bytes of the struct called `name`.
    fn size(&self, name: &str) -> Result<u32, BtfError> {
        Ok(self.struct_named(name)?.size_or_type)
    }
}

/// What the programs need from this kernel's BTF, read in one parse of the file at `path`.
#[derive(Debug)]
pub(crate) struct KernelLayout {
    /// The offsets sys_enter_close and inet_sock_set_state need. A group the BTF lacks a
    /// field of is left absent, which turns its check off (said once, here).
    pub(crate) offsets: KernelOffsets,
    /// Byte offset of `thread.fsbase` in `task_struct`, or None when this kernel has no such
    /// field (not x86-64): Python frames are then not captured.
    pub(crate) task_fsbase: Option<u64>,
}

pub(crate) fn kernel_layout(path: &Path) -> Result<KernelLayout, BtfError> {
    let data = fs::read(path).map_err(|source| BtfError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let btf = Btf::parse(&data)?;
    let mut offsets = match fd_table(&btf) {
        Ok(offsets) => offsets,
        Err(err) => {
            log::warn!(
                "cannot find the descriptor table's layout in this kernel's BTF ({err}): \
                 closes of descriptors that were not open (EBADF) are not reported"
            );
            KernelOffsets::absent()
        }
    };
    (offsets.task_mm, offsets.mm_start_stack) = start_stack(&btf).unwrap_or_else(|err| {
        log::debug!(
            "cannot find where the main thread's stack starts in this kernel's BTF ({err}): \
             until its stack base is learned, its stack copy is cut to the stack mapping by \
             retries"
        );
        (FIELD_ABSENT, FIELD_ABSENT)
    });
    offsets.tw = time_wait(&btf).unwrap_or_else(|err| {
        log::warn!(
            "cannot find the TCP connection table's layout in this kernel's BTF ({err}): a \
             connection closed without a TIME_WAIT socket (net.ipv4.tcp_max_tw_buckets \
             reached, or reset) is counted as TIME_WAIT"
        );
        TimeWaitOffsets::absent()
    });
    Ok(KernelLayout {
        offsets,
        task_fsbase: task_fsbase(&btf),
    })
}

fn task_fsbase(btf: &Btf) -> Option<u64> {
    let thread = btf.offset("task_struct", "thread").ok()?;
    let fsbase = btf.offset("thread_struct", "fsbase").ok()?;
    Some(u64::from(thread + fsbase))
}

fn fd_table(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    Ok(KernelOffsets {
        task_files: btf.offset("task_struct", "files")?,
        files_fdt: btf.offset("files_struct", "fdt")?,
        fdt_max_fds: btf.offset("fdtable", "max_fds")?,
        fdt_fd: btf.offset("fdtable", "fd")?,
        task_mm: FIELD_ABSENT,
        mm_start_stack: FIELD_ABSENT,
        tw: TimeWaitOffsets::absent(),
    })
}

/// `task_struct.mm` and `mm_struct.start_stack` (see [`KernelOffsets`]).
fn start_stack(btf: &Btf) -> Result<(u32, u32), BtfError> {
    Ok((
        btf.offset("task_struct", "mm")?,
        btf.offset("mm_struct", "start_stack")?,
    ))
}

/// See [`TimeWaitOffsets`]: `net->ipv4.tcp_death_row` is embedded since Linux 6.1, which
/// also gave it `hashinfo` (the per-namespace table, or the global one).
fn time_wait(btf: &Btf) -> Result<TimeWaitOffsets, BtfError> {
    Ok(TimeWaitOffsets {
        skc_hash: btf.offset("sock_common", "skc_hash")?,
        skc_portpair: btf.offset("sock_common", "skc_portpair")?,
        skc_state: btf.offset("sock_common", "skc_state")?,
        skc_net: btf.offset("sock_common", "skc_net")?,
        skc_nulls_node: btf.offset("sock_common", "skc_nulls_node")?,
        nulls_next: btf.offset("hlist_nulls_node", "next")?,
        net_hashinfo: btf.embedded("net", "ipv4")?
            + btf.embedded("netns_ipv4", "tcp_death_row")?
            + btf.offset("inet_timewait_death_row", "hashinfo")?,
        hashinfo_ehash: btf.offset("inet_hashinfo", "ehash")?,
        hashinfo_ehash_mask: btf.offset("inet_hashinfo", "ehash_mask")?,
        bucket_size: btf.size("inet_ehash_bucket")?,
        bucket_first: btf.embedded("inet_ehash_bucket", "chain")?
            + btf.offset("hlist_nulls_head", "first")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct outer { int a; union { int x; int wanted; }; }`, the union
    /// anonymous at byte 8, `wanted` at byte 4 of it (not real C layout, but what BTF says).
    fn synthetic() -> Vec<u8> {
        let strings = b"\0outer\0a\0wanted\0x\0int\0";
        let (outer, a, wanted, x, int) = (1u32, 7, 9, 16, 18);
        let mut types: Vec<u32> = Vec::new();
        // [1] int, 4 bytes.
        types.extend([int, 1 << 24, 4, 32]);
        // [2] anonymous union, 2 members, kflag set (bitfield sizes in the top bits).
        types.extend([0, (1 << 31) | (KIND_UNION << 24) | 2, 4]);
        types.extend([x, 1, 0, wanted, 1, (3 << 24) | 32]);
        // [3] struct outer, 2 members.
        types.extend([outer, (KIND_STRUCT << 24) | 2, 16]);
        types.extend([a, 1, 0, 0, 2, 64]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut data = Vec::new();
        data.extend(MAGIC.to_ne_bytes());
        data.extend([1u8, 0]);
        for word in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            data.extend(word.to_ne_bytes());
        }
        data.extend(type_bytes);
        data.extend(strings);
        data
    }

    /// Members are found directly and through an anonymous union, whose offset is added.
    #[test]
    fn finds_members_through_anonymous_unions() {
        let data = synthetic();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.offset("outer", "wanted").unwrap(), 8 + 4);
        assert!(matches!(
            btf.offset("outer", "nope"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.offset("inner", "a"),
            Err(BtfError::NoStruct(_))
        ));
    }

    /// Garbage and truncated blobs are errors, not panics.
    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"hello world, not btf at all").is_err());
        let data = synthetic();
        assert!(Btf::parse(&data[..30]).is_err());
        assert!(Btf::parse(&[]).is_err());
    }

    /// On the running kernel: `struct fdtable` starts with `unsigned int max_fds` then the
    /// `fd` array pointer (include/linux/fdtable.h), and `files` lies inside task_struct.
    #[test]
    fn reads_this_kernels_fd_table_layout() {
        let offsets = kernel_layout(Path::new("/sys/kernel/btf/vmlinux"))
            .unwrap()
            .offsets;
        assert_eq!((offsets.fdt_max_fds, offsets.fdt_fd), (0, 8));
        assert!(offsets.task_files > 0 && offsets.task_files < 16384);
        assert!(offsets.files_fdt > 0 && offsets.files_fdt < 256);
    }

    /// On the running kernel: a hash bucket is one `hlist_nulls_head` (a pointer), whose
    /// `first` and a node's `next` come first (include/linux/list_nulls.h); the connection
    /// table's fields are all found, inside `struct sock_common` and `struct net`.
    #[test]
    fn reads_this_kernels_connection_table_layout() {
        let tw = kernel_layout(Path::new("/sys/kernel/btf/vmlinux"))
            .unwrap()
            .offsets
            .tw;
        assert_eq!((tw.bucket_size, tw.bucket_first, tw.nulls_next), (8, 0, 0));
        assert_eq!(tw.hashinfo_ehash, 0);
        for field in [
            tw.skc_hash,
            tw.skc_portpair,
            tw.skc_state,
            tw.skc_net,
            tw.skc_nulls_node,
        ] {
            assert!(field < 136, "sock_common is 136 bytes: {tw:?}");
        }
        assert!(tw.net_hashinfo > 0 && tw.net_hashinfo < 65536, "{tw:?}");
    }

    /// This kernel's BTF (every kernel the tracer runs on has one: it is checked at start)
    /// places fsbase inside task_struct, after the scheduler's fields.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn finds_fsbase_in_this_kernels_task_struct() {
        let offset = kernel_layout(Path::new("/sys/kernel/btf/vmlinux"))
            .unwrap()
            .task_fsbase
            .expect("thread.fsbase in task_struct");
        assert!(offset > 1000 && offset < 16384, "offset {offset}");
    }
}
