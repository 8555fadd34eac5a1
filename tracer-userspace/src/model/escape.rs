//! Raw bytes from the kernel (paths, names) as report text. Linux paths are bytes, not UTF-8;
//! the report keeps every byte: valid UTF-8 as is, each invalid byte as `\xNN`.

/// UTF-8 text as is; each invalid byte as `\xNN`.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Like [`escape_bytes`], reusing the buffer when the bytes are UTF-8 (most paths).
pub(crate) fn escape_owned(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|err| escape_bytes(err.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid UTF-8 passes unchanged; each invalid byte becomes one escape.
    #[test]
    fn escapes_only_invalid_bytes() {
        assert_eq!(escape_bytes("/tmp/café".as_bytes()), "/tmp/café");
        assert_eq!(escape_bytes(b"/tmp/caf\xe9\xff"), "/tmp/caf\\xe9\\xff");
    }

    /// The owned form says the same as the borrowed one.
    #[test]
    fn owned_bytes_escape_alike() {
        for bytes in [&b"/tmp/caf\xc3\xa9"[..], b"/tmp/caf\xe9\xff", b""] {
            assert_eq!(escape_owned(bytes.to_vec()), escape_bytes(bytes));
        }
    }
}
