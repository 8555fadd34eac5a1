//! tracefs: mounting it when missing, and reading tracepoint record layouts from
//! `events/CATEGORY/NAME/format`, so the eBPF programs read fields where this kernel puts them.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use tracer_common::{FIELD_ABSENT, TracepointOffsets};

/// Where tracefs lives on current kernels, and where older setups expose it.
const MOUNT_POINT: &str = "/sys/kernel/tracing";
const DEBUGFS_PATH: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub(crate) enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it failed ({0}); mount it with: mount -t tracefs nodev {MOUNT_POINT}"
    )]
    Mount(io::Error),
    #[error("cannot read tracepoint format {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("tracepoint {tracepoint} has no field {field} on this kernel")]
    MissingField {
        tracepoint: String,
        field: &'static str,
    },
    #[error("sys_exit tracepoints disagree on where `ret` is ({0}); this kernel is not supported")]
    InconsistentRet(String),
}

/// The tracefs root, mounting tracefs first when it is missing (it is not mounted at boot on
/// some systems, including ours).
pub(super) fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    for root in [MOUNT_POINT, DEBUGFS_PATH] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    log::info!("tracefs is not mounted; mounting it at {MOUNT_POINT}");
    mount_tracefs(Path::new(MOUNT_POINT)).map_err(TracefsError::Mount)?;
    Ok(PathBuf::from(MOUNT_POINT))
}

fn mount_tracefs(at: &Path) -> io::Result<()> {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let target = CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The fields of one tracepoint's record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Format {
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of a tracefs `format` file. Lines look like
    /// `\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;`.
    pub(super) fn parse(text: &str) -> Self {
        let fields = text.lines().filter_map(parse_field_line).collect();
        Self { fields }
    }

    pub(super) fn offset_of(&self, name: &str) -> Option<u32> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.offset)
    }
}

fn parse_field_line(line: &str) -> Option<Field> {
    let mut declaration = None;
    let mut offset = None;
    let mut size = None;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(decl) = part.strip_prefix("field:") {
            declaration = Some(decl);
        } else if let Some(value) = part.strip_prefix("offset:") {
            offset = value.parse().ok();
        } else if let Some(value) = part.strip_prefix("size:") {
            size = value.parse().ok();
        }
    }
    // The name is the last word of the declaration, without any array suffix:
    // `char comm[16]`, `__data_loc char[] parent_comm`, `const char * filename`.
    let name = declaration?
        .split(|c: char| c.is_whitespace() || c == '*')
        .rfind(|word| !word.is_empty())?;
    let name = name.split('[').next()?.to_string();
    Some(Field {
        name,
        offset: offset?,
        size: size?,
    })
}

/// Reads the format of CATEGORY/NAME; `None` when this kernel has no such tracepoint.
pub(super) fn read_format(
    root: &Path,
    category: &str,
    name: &str,
) -> Result<Option<Format>, TracefsError> {
    let path = root.join("events").join(category).join(name).join("format");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(Some(Format::parse(&text))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TracefsError::Read { path, source }),
    }
}

/// Formats of the tracepoints we use, by name; absent ones are simply missing.
pub(super) struct Formats {
    by_name: Vec<(&'static str, Format)>,
}

impl Formats {
    pub(super) fn read(
        root: &Path,
        tracepoints: &[(&'static str, &'static str)],
    ) -> Result<Self, TracefsError> {
        let mut by_name = Vec::new();
        for &(category, name) in tracepoints {
            if let Some(format) = read_format(root, category, name)? {
                by_name.push((name, format));
            }
        }
        Ok(Self { by_name })
    }

    pub(super) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn get(&self, name: &str) -> Option<&Format> {
        self.by_name
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
    }

    /// Offset of `field` in `tracepoint`; [`FIELD_ABSENT`] when the tracepoint is missing
    /// (its program is then not attached), an error when it exists without the field.
    fn offset(&self, tracepoint: &str, field: &'static str) -> Result<u32, TracefsError> {
        match self.get(tracepoint) {
            None => Ok(FIELD_ABSENT),
            Some(format) => format
                .offset_of(field)
                .ok_or_else(|| TracefsError::MissingField {
                    tracepoint: tracepoint.to_string(),
                    field,
                }),
        }
    }

    /// Like [`Self::offset`], for fields that only some kernels have.
    fn optional_offset(&self, tracepoint: &str, field: &str) -> u32 {
        self.get(tracepoint)
            .and_then(|format| format.offset_of(field))
            .unwrap_or(FIELD_ABSENT)
    }

    /// Every offset the eBPF programs need.
    pub(super) fn offsets(&self) -> Result<TracepointOffsets, TracefsError> {
        Ok(TracepointOffsets {
            exit_ret: self.exit_ret_offset()?,
            close_fd: self.offset("sys_enter_close", "fd")?,
            fork_child_pid: self.offset("sched_process_fork", "child_pid")?,
            exit_group_dead: self.optional_offset("sched_process_exit", "group_dead"),
            tcp_skaddr: self.offset("inet_sock_set_state", "skaddr")?,
            tcp_oldstate: self.offset("inet_sock_set_state", "oldstate")?,
            tcp_newstate: self.offset("inet_sock_set_state", "newstate")?,
            tcp_sport: self.offset("inet_sock_set_state", "sport")?,
            tcp_dport: self.offset("inet_sock_set_state", "dport")?,
            tcp_family: self.offset("inet_sock_set_state", "family")?,
            tcp_protocol: self.offset("inet_sock_set_state", "protocol")?,
            tcp_saddr: self.offset("inet_sock_set_state", "saddr")?,
            tcp_daddr: self.offset("inet_sock_set_state", "daddr")?,
            tcp_saddr_v6: self.offset("inet_sock_set_state", "saddr_v6")?,
            tcp_daddr_v6: self.offset("inet_sock_set_state", "daddr_v6")?,
            close_range_fd: self.offset("sys_enter_close_range", "fd")?,
            close_range_max_fd: self.offset("sys_enter_close_range", "max_fd")?,
            close_range_flags: self.offset("sys_enter_close_range", "flags")?,
        })
    }

    /// Every `sys_exit_*` record has `long ret` at the same place; one offset serves all exit
    /// programs, so make sure that is true here.
    fn exit_ret_offset(&self) -> Result<u32, TracefsError> {
        let mut seen = Vec::new();
        for (name, format) in &self.by_name {
            if name.starts_with("sys_exit_") {
                let offset = format
                    .offset_of("ret")
                    .ok_or_else(|| TracefsError::MissingField {
                        tracepoint: name.to_string(),
                        field: "ret",
                    })?;
                seen.push((*name, offset));
            }
        }
        let first = seen
            .first()
            .map(|(_, offset)| *offset)
            .unwrap_or(FIELD_ABSENT);
        if seen.iter().any(|(_, offset)| *offset != first) {
            let listing: Vec<String> = seen.iter().map(|(n, o)| format!("{n}={o}")).collect();
            return Err(TracefsError::InconsistentRet(listing.join(", ")));
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAT: &str = "name: sys_enter_openat\nID: 700\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;\n\
\nprint fmt: \"dfd: 0x%08lx\", ((unsigned long)(REC->dfd))\n";

    /// Field names come out without types, pointers or array suffixes, with their offsets.
    #[test]
    fn parses_syscall_format() {
        let format = Format::parse(OPENAT);
        assert_eq!(format.offset_of("common_type"), Some(0));
        assert_eq!(format.offset_of("dfd"), Some(16));
        assert_eq!(format.offset_of("filename"), Some(24));
        assert_eq!(format.offset_of("flags"), Some(32));
        assert_eq!(format.offset_of("mode"), None);
    }

    /// `__data_loc char[]` and `char comm[16]` declarations yield the bare field name.
    #[test]
    fn parses_array_and_data_loc_fields() {
        let format = Format::parse(
            "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
             \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
             \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n",
        );
        assert_eq!(format.offset_of("parent_comm"), Some(8));
        assert_eq!(format.offset_of("comm"), Some(8));
        assert_eq!(format.offset_of("child_pid"), Some(20));
    }

    /// A tracepoint this kernel lacks gives FIELD_ABSENT; one that lacks a field is an error.
    #[test]
    fn missing_tracepoint_is_absent_but_missing_field_is_an_error() {
        let formats = Formats {
            by_name: vec![("sys_enter_openat", Format::parse(OPENAT))],
        };
        assert_eq!(
            formats.offset("sys_enter_open", "filename").unwrap(),
            FIELD_ABSENT
        );
        assert!(formats.offset("sys_enter_openat", "nonesuch").is_err());
        assert_eq!(
            formats.optional_offset("sys_enter_openat", "nonesuch"),
            FIELD_ABSENT
        );
    }

    /// Differing `ret` offsets across sys_exit tracepoints are refused rather than misread.
    #[test]
    fn inconsistent_exit_ret_is_refused() {
        let ret_at = |offset: u32| Format {
            fields: vec![Field {
                name: "ret".into(),
                offset,
                size: 8,
            }],
        };
        let formats = Formats {
            by_name: vec![
                ("sys_exit_openat", ret_at(16)),
                ("sys_exit_close", ret_at(24)),
            ],
        };
        assert!(matches!(
            formats.exit_ret_offset(),
            Err(TracefsError::InconsistentRet(_))
        ));
    }
}
