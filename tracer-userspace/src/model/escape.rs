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

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid UTF-8 passes unchanged; each invalid byte becomes one escape.
    #[test]
    fn escapes_only_invalid_bytes() {
        assert_eq!(escape_bytes("/tmp/café".as_bytes()), "/tmp/café");
        assert_eq!(escape_bytes(b"/tmp/caf\xe9\xff"), "/tmp/caf\\xe9\\xff");
    }
}
