//! Line numbers from a code object's line table, for the instruction a frame is at.
//!
//! 3.10 (`co_linetable`, Objects/lnotab_notes.txt): pairs of (bytecode bytes, signed line
//! delta), -128 meaning "no line". 3.11+ (`co_linetable`, Objects/locations.md): entries of
//! a first byte (bit 7 set, a 4-bit code, a length of 1-8 code units) and the code's varints.

/// The line of bytecode byte `offset` (3.10), counting from `first`.
pub(super) fn line_310(table: &[u8], first: i32, offset: u64) -> Option<u32> {
    let mut line = first;
    let mut end: u64 = 0;
    let mut current = None;
    for pair in table.chunks_exact(2) {
        let (sdelta, ldelta) = (u64::from(pair[0]), pair[1] as i8);
        let start = end;
        end += sdelta;
        if ldelta == -128 {
            current = None;
        } else if ldelta != 0 || current.is_none() && start == 0 {
            line += i32::from(ldelta);
            current = Some(line);
        }
        if start <= offset && offset < end {
            return current.and_then(|l| u32::try_from(l).ok());
        }
    }
    None
}

/// The line of code unit `unit` (3.11+), counting from `first`.
pub(super) fn line_311(table: &[u8], first: i32, unit: u64) -> Option<u32> {
    let mut bytes = table.iter().copied();
    let mut line = first;
    let mut at: u64 = 0;
    while let Some(head) = bytes.next() {
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let length = u64::from(head & 7) + 1;
        let has_line = match code {
            15 => false,
            14 => {
                line += svarint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                true
            }
            13 => {
                line += svarint(&mut bytes)?;
                true
            }
            10..=12 => {
                line += i32::from(code) - 10;
                bytes.next()?;
                bytes.next()?;
                true
            }
            _ => {
                bytes.next()?;
                true
            }
        };
        if at <= unit && unit < at + length {
            return has_line.then(|| u32::try_from(line).ok()).flatten();
        }
        at += length;
    }
    None
}

fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u32> {
    let mut b = bytes.next()?;
    let mut value = u32::from(b & 63);
    let mut shift = 0;
    while b & 64 != 0 {
        b = bytes.next()?;
        shift += 6;
        if shift > 30 {
            return None;
        }
        value |= u32::from(b & 63) << shift;
    }
    Some(value)
}

fn svarint(bytes: &mut impl Iterator<Item = u8>) -> Option<i32> {
    let v = varint(bytes)?;
    let magnitude = (v >> 1) as i32;
    Some(if v & 1 != 0 { -magnitude } else { magnitude })
}
