//! One symbolized frame of a user stack.

/// One frame of a user stack, as the report shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub addr: u64,
    pub symbol: Option<String>,
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The function was inlined into the next frame, which holds the same address.
    pub inlined: bool,
    /// A frame of Python code (function, file and line from the interpreter's code object),
    /// not a native one.
    pub python: bool,
}

impl Frame {
    pub(crate) fn unknown(addr: u64) -> Self {
        Self {
            addr,
            symbol: None,
            module: None,
            file: None,
            line: None,
            inlined: false,
            python: false,
        }
    }
}
