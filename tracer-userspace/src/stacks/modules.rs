//! The executable file mappings of a process, captured while it lives so that its stacks can
//! be unwound and symbolized after it has exited or exec'd, and its modules opened from here
//! even when they live in another mount namespace (a container) or were deleted.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs, io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt, io::AsRawFd},
    path::{Path, PathBuf},
};

/// One file-backed executable mapping of a process, from /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    /// The path as `/proc/PID/maps` shows it (without a trailing ` (deleted)`), in the mount
    /// namespace of the process.
    pub path: PathBuf,
    /// The file's device (`makedev(major, minor)`) and inode, from the same line.
    pub dev: u64,
    pub inode: u64,
    /// Where the tracer opens the file when `path` is not it (a process in another mount
    /// namespace, a deleted or replaced file): a descriptor held by [`ModuleFiles`].
    pub open_path: Option<PathBuf>,
}

impl Mapping {
    /// The path at which the tracer reads this module.
    pub(super) fn file(&self) -> &Path {
        self.open_path.as_deref().unwrap_or(&self.path)
    }
}

/// A process's executable file mappings, captured while it lives so its stacks can be
/// symbolized and unwound after it exits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ModuleMap {
    /// Sorted by `start`; mappings never overlap.
    mappings: Vec<Mapping>,
    /// Anonymous executable mappings (JIT code), as (start, end), sorted by start.
    anonymous: Vec<(u64, u64)>,
}

impl ModuleMap {
    /// Reads `/proc/PID/maps`; see [`ModuleMap::parse`] for what is kept.
    pub(super) fn read(pid: u32) -> io::Result<Self> {
        fs::read(format!("/proc/{pid}/maps")).map(|bytes| Self::parse_bytes(&bytes))
    }

    /// Parses the text of a `/proc/PID/maps` file, keeping the mappings with `x` permission
    /// whose path starts with `/` (so not `[vdso]`, ...), and apart from them those without a
    /// path (anonymous memory: JIT code). A trailing ` (deleted)` is stripped from the path.
    /// Malformed lines are skipped.
    #[cfg(test)]
    pub(super) fn parse(text: &str) -> Self {
        Self::parse_bytes(text.as_bytes())
    }

    /// [`ModuleMap::parse`] on raw bytes: paths need not be UTF-8.
    fn parse_bytes(bytes: &[u8]) -> Self {
        let mut mappings = Vec::new();
        let mut anonymous = Vec::new();
        for line in bytes.split(|&b| b == b'\n') {
            match parse_maps_line(line) {
                Some(Parsed::File(mapping)) => mappings.push(mapping),
                Some(Parsed::Anonymous(start, end)) => anonymous.push((start, end)),
                None => {}
            }
        }
        mappings.sort_by_key(|m| m.start);
        anonymous.sort_unstable();
        Self {
            mappings,
            anonymous,
        }
    }

    /// The mappings, sorted by start address.
    pub(super) fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.mappings.is_empty() && self.anonymous.is_empty()
    }

    /// Whether the process has anonymous executable memory (JIT code) at all.
    pub(super) fn has_anonymous_code(&self) -> bool {
        !self.anonymous.is_empty()
    }

    /// Whether `addr` is in anonymous executable memory (JIT code).
    pub(super) fn is_anonymous_code(&self, addr: u64) -> bool {
        let after = self.anonymous.partition_point(|&(start, _)| start <= addr);
        after
            .checked_sub(1)
            .is_some_and(|i| addr < self.anonymous[i].1)
    }

    /// Whether `addr` is code: in an executable file mapping or anonymous executable memory.
    pub(super) fn is_code(&self, addr: u64) -> bool {
        self.find(addr).is_some() || self.is_anonymous_code(addr)
    }

    /// These mappings, plus those of `older` that overlap none of them: a later listing of
    /// the same program image, which may be missing what an exiting process already unmapped.
    pub(super) fn over(mut self, older: &ModuleMap) -> Self {
        let kept: Vec<Mapping> = older
            .mappings
            .iter()
            .filter(|old| {
                let after = self.mappings.partition_point(|m| m.start < old.end);
                after == 0 || self.mappings[after - 1].end <= old.start
            })
            .cloned()
            .collect();
        if !kept.is_empty() {
            self.mappings.extend(kept);
            self.mappings.sort_by_key(|m| m.start);
        }
        let kept: Vec<(u64, u64)> = older
            .anonymous
            .iter()
            .filter(|&&(start, end)| {
                let after = self.anonymous.partition_point(|&(s, _)| s < end);
                after == 0 || self.anonymous[after - 1].1 <= start
            })
            .copied()
            .collect();
        if !kept.is_empty() {
            self.anonymous.extend(kept);
            self.anonymous.sort_unstable();
        }
        self
    }

    /// The mapping containing `addr`.
    pub(super) fn find(&self, addr: u64) -> Option<&Mapping> {
        let after = self.mappings.partition_point(|m| m.start <= addr);
        let mapping = self.mappings.get(after.checked_sub(1)?)?;
        (addr < mapping.end).then_some(mapping)
    }

    /// The file offset of addr in its module: addr - start + file_offset.
    pub(super) fn file_offset(&self, addr: u64) -> Option<(&Mapping, u64)> {
        let mapping = self.find(addr)?;
        let offset = (addr - mapping.start).checked_add(mapping.file_offset)?;
        Some((mapping, offset))
    }
}

/// Takes the next space-separated field off the front of `rest`.
fn next_field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let start = rest.iter().position(|&b| b != b' ')?;
    let trimmed = &rest[start..];
    let end = trimmed
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(trimmed.len());
    let (field, tail) = trimmed.split_at(end);
    *rest = tail;
    Some(field)
}

fn parse_hex(field: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(field).ok()?, 16).ok()
}

/// An executable mapping of `/proc/PID/maps`.
enum Parsed {
    File(Mapping),
    /// Anonymous memory (no path): (start, end).
    Anonymous(u64, u64),
}

/// One line of `/proc/PID/maps`: `START-END PERMS OFFSET DEV INODE   PATH`, where `PATH` may
/// hold spaces and is padded on the left (and is absent for anonymous memory).
fn parse_maps_line(line: &[u8]) -> Option<Parsed> {
    let mut rest = line;
    let range = next_field(&mut rest)?;
    let perms = next_field(&mut rest)?;
    let offset = next_field(&mut rest)?;
    let dev = next_field(&mut rest)?;
    let inode = next_field(&mut rest)?;
    if perms.get(2) != Some(&b'x') {
        return None;
    }
    let dash = range.iter().position(|&b| b == b'-')?;
    let start = parse_hex(&range[..dash])?;
    let end = parse_hex(&range[dash + 1..])?;
    if end <= start {
        return None;
    }
    let Some(start_path) = rest.iter().position(|&b| b != b' ') else {
        return Some(Parsed::Anonymous(start, end));
    };
    let mut path = &rest[start_path..];
    if path.first() != Some(&b'/') {
        return None;
    }
    if let Some(stripped) = path.strip_suffix(b" (deleted)") {
        path = stripped;
    }
    let colon = dev.iter().position(|&b| b == b':')?;
    let (major, minor) = (parse_hex(&dev[..colon])?, parse_hex(&dev[colon + 1..])?);
    Some(Parsed::File(Mapping {
        start,
        end,
        file_offset: parse_hex(offset)?,
        path: PathBuf::from(OsStr::from_bytes(path)),
        dev: libc::makedev(u32::try_from(major).ok()?, u32::try_from(minor).ok()?),
        inode: std::str::from_utf8(inode).ok()?.parse().ok()?,
        open_path: None,
    }))
}

/// Keeps the tracer able to open every module it has seen: a module whose path here is not
/// the file the process mapped (another mount namespace, deleted, replaced) is opened through
/// `/proc/PID/map_files/` while the process lives and the descriptor held, so the module stays
/// readable after the process is gone.
#[derive(Debug, Default)]
pub(super) struct ModuleFiles {
    /// (dev, inode) -> where to open it (None: at its own path).
    known: HashMap<(u64, u64), Option<PathBuf>>,
    held: Vec<fs::File>,
}

impl ModuleFiles {
    /// Reads `/proc/PID/maps` ([`ModuleMap::parse`]) and makes each module openable.
    pub(super) fn read(&mut self, pid: u32) -> io::Result<ModuleMap> {
        let mut map = ModuleMap::read(pid)?;
        for mapping in &mut map.mappings {
            mapping.open_path = self.open_path(pid, mapping);
        }
        Ok(map)
    }

    fn open_path(&mut self, pid: u32, mapping: &Mapping) -> Option<PathBuf> {
        let key = (mapping.dev, mapping.inode);
        if let Some(known) = self.known.get(&key) {
            return known.clone();
        }
        // The same file at the same path here: use the path, so debug files found next to it
        // (debug links) resolve.
        let same_here =
            fs::metadata(&mapping.path).is_ok_and(|meta| (meta.dev(), meta.ino()) == key);
        let open_path = if same_here {
            None
        } else {
            let through = format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                mapping.start, mapping.end
            );
            match fs::File::open(&through) {
                Ok(file) => {
                    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
                    self.held.push(file);
                    Some(path)
                }
                Err(err) => {
                    log::debug!("cannot open {through} ({}): {err}", mapping.path.display());
                    None
                }
            }
        };
        self.known.insert(key, open_path.clone());
        open_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a literal /proc/PID/maps: keeps executable file mappings only, sorted, paths intact.
    #[test]
    fn parses_proc_maps() {
        let text = "\
7f1c2a228000-7f1c2a3bd000 r-xp 00028000 fe:01 1320 /usr/lib/x86_64-linux-gnu/libc.so.6
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 42   /srv/app/my server
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 42   /srv/app/my server
7f1c2a200000-7f1c2a228000 r--p 00000000 fe:01 1320 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a400000-7f1c2a401000 r-xp 00002000 00:01 77   /memfd:jit (deleted)
7f1c2a500000-7f1c2a501000 r-xp 00003000 fe:01 78   /tmp/old.so (deleted)
7f1c2a600000-7f1c2a621000 rw-p 00000000 00:00 0    [heap]
7ffd5a1f0000-7ffd5a1f2000 r-xp 00000000 00:00 0    [vdso]
7f1c2a700000-7f1c2a701000 r-xp 00000000 00:00 0 
garbage line
";
        let maps = ModuleMap::parse(text);
        let mapping = |start, end, file_offset, path: &str, dev, inode| Mapping {
            start,
            end,
            file_offset,
            path: PathBuf::from(path),
            dev,
            inode,
            open_path: None,
        };
        let fe01 = libc::makedev(0xfe, 1);
        assert_eq!(
            maps.mappings(),
            &[
                mapping(
                    0x55d0c0a01000,
                    0x55d0c0a02000,
                    0x1000,
                    "/srv/app/my server",
                    fe01,
                    42
                ),
                mapping(
                    0x7f1c2a228000,
                    0x7f1c2a3bd000,
                    0x28000,
                    "/usr/lib/x86_64-linux-gnu/libc.so.6",
                    fe01,
                    1320
                ),
                mapping(
                    0x7f1c2a400000,
                    0x7f1c2a401000,
                    0x2000,
                    "/memfd:jit",
                    libc::makedev(0, 1),
                    77
                ),
                mapping(
                    0x7f1c2a500000,
                    0x7f1c2a501000,
                    0x3000,
                    "/tmp/old.so",
                    fe01,
                    78
                ),
            ]
        );
        assert_eq!(maps.find(0x55d0c0a00fff), None);
        assert_eq!(
            maps.find(0x55d0c0a01000).map(|m| m.file_offset),
            Some(0x1000)
        );
        assert_eq!(maps.find(0x55d0c0a02000), None);
        assert_eq!(maps.find(0x7ffd5a1f0000), None);
        assert_eq!(maps.find(0), None);
        // The anonymous executable mapping (JIT code) is kept apart.
        assert!(maps.is_anonymous_code(0x7f1c2a700000));
        assert!(maps.is_anonymous_code(0x7f1c2a700fff));
        assert!(!maps.is_anonymous_code(0x7f1c2a701000));
        assert!(!maps.is_anonymous_code(0x7f1c2a600000), "not executable");
        assert!(
            !maps.is_anonymous_code(0x7ffd5a1f0000),
            "[vdso] is not anonymous"
        );
        assert!(maps.is_code(0x7f1c2a700010) && maps.is_code(0x55d0c0a01000));
        assert!(!maps.is_code(0x7ffd5a1f0000));
        let (libc, offset) = maps.file_offset(0x7f1c2a228123).unwrap();
        assert_eq!(libc.path, Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert_eq!(offset, 0x28123);
        assert!(ModuleMap::parse("").is_empty());
    }

    /// A later listing wins where it maps something; mappings only the earlier one has are
    /// kept (an exiting process lists a part of its mappings, or none).
    #[test]
    fn later_listing_over_earlier() {
        let earlier = ModuleMap::parse(
            "1000-2000 r-xp 00000000 08:01 1 /srv/app\n\
             5000-6000 r-xp 00000000 08:01 3 /lib/old.so\n\
             7000-8000 r-xp 00000000 08:01 2 /lib/libc.so.6\n",
        );
        let later = ModuleMap::parse(
            "1000-2000 r-xp 00000000 08:01 1 /srv/app\n\
             5800-6800 r-xp 00000000 08:01 4 /lib/new.so\n",
        );
        let paths = |map: &ModuleMap| -> Vec<String> {
            map.mappings()
                .iter()
                .map(|m| m.path.display().to_string())
                .collect()
        };
        assert_eq!(
            paths(&later.clone().over(&earlier)),
            ["/srv/app", "/lib/new.so", "/lib/libc.so.6"]
        );
        assert_eq!(paths(&ModuleMap::default().over(&earlier)), paths(&earlier));
        assert_eq!(
            paths(&later.clone().over(&ModuleMap::default())),
            paths(&later)
        );
    }

    /// A module visible at its own path keeps it; one that is not (here: a deleted file the
    /// test maps) is opened through map_files and stays readable through the held descriptor.
    #[test]
    fn opens_modules_that_are_not_at_their_path() {
        let mut files = ModuleFiles::default();
        let own = files.read(std::process::id()).unwrap();
        let exe = own
            .mappings()
            .iter()
            .find(|m| m.path == std::env::current_exe().unwrap())
            .expect("the test binary is mapped");
        assert_eq!(exe.open_path, None);
        assert_eq!(exe.file(), exe.path);

        let path = std::env::temp_dir().join(format!("tracer-modules-{}", std::process::id()));
        fs::write(&path, [0xc3u8; 4096]).unwrap();
        let file = fs::File::open(&path).unwrap();
        // SAFETY: a fresh private executable mapping of a file we own; unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        fs::remove_file(&path).unwrap();
        let map = files.read(std::process::id()).unwrap();
        let deleted = map
            .find(addr as u64)
            .expect("the mapping is listed")
            .clone();
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(addr, 4096) };
        let open_path = deleted.open_path.clone().expect("opened through map_files");
        assert!(open_path.starts_with("/proc/self/fd"));
        assert_eq!(fs::read(deleted.file()).unwrap(), vec![0xc3u8; 4096]);
    }
}
