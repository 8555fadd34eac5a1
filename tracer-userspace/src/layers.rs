//! The one-way layer rule, checked against the source: a module may use only modules of a
//! lower layer, so data flows from the kernel to the report and nothing imports the session.
//!
//! ```text
//! session                      wires everything; imported by main only
//! cli, export                  command-line options; --serve's HTTP endpoint and formats
//! report                       the report contract, built from the tables; text, flame graph
//! aggregator, tcp, host        descriptor tables, TCP connections, --all's growth (pure)
//! stacks                       unwinding and symbolizing user stacks
//! events, capture, procfs      decoded kernel events; the loaded programs; /proc
//! model, clock                 plain shared types; the one clock
//! ```

/// Top-level modules from the bottom layer up; a module may use any module of a lower layer.
const LAYERS: &[&[&str]] = &[
    &["model", "clock"],
    &["events", "capture", "procfs"],
    &["stacks"],
    &["aggregator", "tcp", "host"],
    &["report"],
    &["cli", "export"],
    &["session"],
];

/// The top-level modules a source file names through `crate::`: `crate::a::b` and each
/// item of `crate::{a::b, c}` give `a` (and `c`).
fn crate_modules_used(source: &str) -> Vec<String> {
    let mut used = Vec::new();
    for (at, _) in source.match_indices("crate::") {
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Items at brace depth 0 of the group: the first segment of each.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && depth == 0 && c.is_alphabetic() => {
                        item_start = false;
                        used.push(first_segment(&group[i..]));
                    }
                    _ => {}
                }
            }
        } else {
            used.push(first_segment(rest));
        }
    }
    used
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

mod tests {
    use std::{
        fs,
        path::{Path, PathBuf},
    };

    use super::*;

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read the source tree") {
            let path = entry.expect("read a source entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every module of the library sits in a layer, and uses only modules of lower layers.
    #[test]
    fn modules_use_only_lower_layers() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut broken = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).expect("a file under src");
            let top = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .map(|name| name.trim_end_matches(".rs").to_owned())
                .expect("a file name");
            if ["lib", "main", "layers"].contains(&top.as_str()) {
                continue;
            }
            let Some(own) = layer_of(&top) else {
                broken.push(format!(
                    "{}: module `{top}` is in no layer",
                    relative.display()
                ));
                continue;
            };
            let source = fs::read_to_string(&file).expect("read a source file");
            for used in crate_modules_used(&source) {
                if used == top {
                    continue;
                }
                match layer_of(&used) {
                    Some(layer) if layer < own => {}
                    _ => broken.push(format!(
                        "{}: `{top}` uses `{used}`, which is not in a lower layer",
                        relative.display()
                    )),
                }
            }
        }
        assert!(
            broken.is_empty(),
            "layer rule broken:\n{}",
            broken.join("\n")
        );
    }

    /// Paths and groups both count, nested groups by their first segment only.
    #[test]
    fn finds_modules_in_paths_and_groups() {
        let source = "use crate::{\n    aggregator::{Aggregator, X},\n    model::Frame,\n};\n\
                      let x = crate::tcp::state_name(1);";
        assert_eq!(
            crate_modules_used(source),
            ["aggregator", "model", "tcp"].map(String::from)
        );
    }
}
