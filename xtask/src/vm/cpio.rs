//! Writes a cpio archive in the "newc" format, the one the kernel unpacks as an initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Written here rather than by `cpio -o`: the archive's layout (where each file lands, which
//! directories are symlinks) is decided in code, and one host tool fewer has to be installed.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// One entry of the archive.
enum Entry {
    Dir,
    /// A host file copied in with this mode.
    File {
        source: PathBuf,
        mode: u32,
    },
    /// Bytes given here (the init script).
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

/// The tree of an initramfs, by path inside the archive (no leading `/`).
#[derive(Default)]
pub(super) struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds `source` (a host file, symlinks followed) as `path`, keeping its permissions.
    pub(super) fn file(&mut self, path: &str, source: &Path) -> Result<()> {
        let meta =
            fs::metadata(source).with_context(|| format!("cannot read {}", source.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", source.display());
        }
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o7777;
        self.insert(
            path,
            Entry::File {
                source: source.to_path_buf(),
                mode,
            },
        )
    }

    /// Adds `data` as the file `path` with permissions `mode`.
    pub(super) fn bytes(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<()> {
        self.insert(path, Entry::Bytes { data, mode })
    }

    /// Adds the symlink `path` -> `target`.
    pub(super) fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Adds the (empty) directory `path` and its parents.
    pub(super) fn dir(&mut self, path: &str) -> Result<()> {
        self.insert(path, Entry::Dir)
    }

    /// Whether something was already added at `path`.
    pub(super) fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(normalize(path))
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        let path = normalize(path);
        if path.is_empty() {
            bail!("an archive entry needs a name");
        }
        // Parents first: the kernel creates entries in archive order and does not create
        // missing directories. A parent that is a symlink would be replaced by a directory
        // on unpacking, so it is an error here.
        let mut parent = String::new();
        for component in Path::new(path).parent().into_iter().flat_map(Path::iter) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(&component.to_string_lossy());
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(_) => bail!("cannot add {path}: {parent} is not a directory"),
            }
        }
        match (self.entries.get(path), &entry) {
            (Some(Entry::Dir), Entry::Dir) | (None, _) => {}
            (Some(_), _) => bail!("{path} is added to the archive twice"),
        }
        self.entries.insert(path.to_owned(), entry);
        Ok(())
    }

    /// Writes the archive. Paths sort before their children ("a" < "a/b"), so iterating the
    /// map in order puts every directory before what it holds.
    pub(super) fn write(&self, out: &mut impl Write) -> Result<()> {
        let mut writer = NewcWriter { out, ino: 1 };
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir => writer.entry(path, 0o040_755, &[])?,
                Entry::File { source, mode } => {
                    let data = fs::read(source)
                        .with_context(|| format!("cannot read {}", source.display()))?;
                    writer.entry(path, 0o100_000 | mode, &data)?;
                }
                Entry::Bytes { data, mode } => writer.entry(path, 0o100_000 | mode, data)?,
                Entry::Symlink { target } => {
                    writer.entry(path, 0o120_777, target.as_bytes())?;
                }
            }
        }
        writer.entry("TRAILER!!!", 0, &[])?;
        Ok(())
    }
}

fn normalize(path: &str) -> &str {
    path.trim_start_matches('/').trim_end_matches('/')
}

struct NewcWriter<'a, W: Write> {
    out: &'a mut W,
    ino: u32,
}

impl<W: Write> NewcWriter<'_, W> {
    /// One header, the NUL-terminated name and the data, each padded to 4 bytes.
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let name_size = name.len() + 1;
        let file_size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name} is larger than 4 GiB")))?;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs give the same archive
            file_size,
            0,
            0,
            0,
            0, // dev major/minor, rdev major/minor
            name_size as u32,
            0, // check
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name_size)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let padding = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..padding])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(archive: &Archive) -> Vec<u8> {
        let mut out = Vec::new();
        archive.write(&mut out).unwrap();
        out
    }

    /// Names in the order the archive holds them.
    fn names(bytes: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(&bytes[at..at + 6], b"070701", "header magic at {at}");
            let field = |i: usize| {
                let start = at + 6 + i * 8;
                u32::from_str_radix(std::str::from_utf8(&bytes[start..start + 8]).unwrap(), 16)
                    .unwrap() as usize
            };
            let (file_size, name_size) = (field(6), field(11));
            let name_start = at + 110;
            names.push(
                String::from_utf8(bytes[name_start..name_start + name_size - 1].to_vec()).unwrap(),
            );
            let data_start = (name_start + name_size).next_multiple_of(4);
            at = (data_start + file_size).next_multiple_of(4);
        }
        names
    }

    /// Parents are created before their children, and the trailer ends the archive.
    #[test]
    fn parents_come_first_and_trailer_last() {
        let mut archive = Archive::default();
        archive
            .bytes("/usr/lib/x/libc.so.6", b"elf".to_vec(), 0o755)
            .unwrap();
        archive.symlink("lib", "usr/lib").unwrap();
        archive
            .bytes("init", b"#!/bin/sh\n".to_vec(), 0o755)
            .unwrap();
        assert_eq!(
            names(&written(&archive)),
            [
                "init",
                "lib",
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/libc.so.6",
                "TRAILER!!!"
            ]
        );
    }

    /// Every header and every data block starts 4-byte aligned, whatever the name lengths.
    #[test]
    fn entries_are_aligned() {
        let mut archive = Archive::default();
        archive.bytes("a", b"12345".to_vec(), 0o644).unwrap();
        archive.bytes("bcd", b"1".to_vec(), 0o644).unwrap();
        let bytes = written(&archive);
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(names(&bytes), ["a", "bcd", "TRAILER!!!"]);
    }

    /// A file under a path that is a symlink would be lost on unpacking: refused.
    #[test]
    fn refuses_a_file_below_a_symlink() {
        let mut archive = Archive::default();
        archive.symlink("lib", "usr/lib").unwrap();
        let err = archive
            .bytes("lib/libc.so.6", Vec::new(), 0o644)
            .unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    /// The same path twice is a mistake in the caller, not something to overwrite silently.
    #[test]
    fn refuses_duplicates() {
        let mut archive = Archive::default();
        archive.bytes("init", Vec::new(), 0o755).unwrap();
        assert!(archive.bytes("init", Vec::new(), 0o755).is_err());
        assert!(archive.contains("/init"));
    }
}
