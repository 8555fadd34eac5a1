//! [`abi_enum!`]: a `#[repr(u32)]` enum that crosses the kernel/user boundary as a number,
//! declared once with its values (and names), so that the conversions cannot drift from the
//! variants.

/// Declares a `#[repr(u32)]` enum from one list of `Variant = value` (or `Variant = value =>
/// "name"`) and generates:
/// - `ALL`: every variant, in declaration order;
/// - `TryFrom<u32>`, which gives back the raw value when no variant has it;
/// - with names, `const fn name(self) -> &'static str`.
macro_rules! abi_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $value:literal => $text:literal,)+
        }
    ) => {
        $crate::abi_enum::abi_enum! {
            $(#[$meta])*
            pub enum $name {
                $($(#[$variant_meta])* $variant = $value,)+
            }
        }

        impl $name {
            /// The name reports use.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $value:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$variant_meta])* $variant = $value,)+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];
        }

        impl TryFrom<u32> for $name {
            type Error = u32;
            fn try_from(raw: u32) -> Result<Self, u32> {
                match raw {
                    $($value => Ok(Self::$variant),)+
                    other => Err(other),
                }
            }
        }
    };
}
pub(crate) use abi_enum;

#[cfg(test)]
mod tests {
    use crate::{EventKind, Syscall};

    /// Every variant converts to its number and back; the numbers count from 1 in
    /// declaration order, and the numbers around them are refused.
    #[test]
    fn every_variant_round_trips() {
        for (i, &kind) in EventKind::ALL.iter().enumerate() {
            assert_eq!(kind as u32, i as u32 + 1, "{kind:?}");
            assert_eq!(EventKind::try_from(kind as u32), Ok(kind));
        }
        for (i, &syscall) in Syscall::ALL.iter().enumerate() {
            assert_eq!(syscall as u32, i as u32 + 1, "{syscall:?}");
            assert_eq!(Syscall::try_from(syscall as u32), Ok(syscall));
        }
        assert_eq!(EventKind::ALL.len(), 11);
        assert_eq!(Syscall::ALL.len(), 41);
        for raw in [0, 12, u32::MAX] {
            assert_eq!(EventKind::try_from(raw), Err(raw));
        }
        for raw in [0, 42, u32::MAX] {
            assert_eq!(Syscall::try_from(raw), Err(raw));
        }
    }

    /// Syscall names are the kernel's (lowercase, digits and `_`), one per syscall.
    #[test]
    fn syscall_names_are_distinct() {
        assert_eq!(Syscall::Openat.name(), "openat");
        assert_eq!(Syscall::EpollCreate1.name(), "epoll_create1");
        for (i, a) in Syscall::ALL.iter().enumerate() {
            let name = a.name();
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            for b in &Syscall::ALL[i + 1..] {
                assert_ne!(name, b.name());
            }
        }
    }
}
