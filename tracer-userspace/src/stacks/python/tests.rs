//! The line tables of a real function (`co_linetable` and `co_lines()` printed by pyenv's
//! 3.10.13 and 3.11.7 for the same source: a multi-line expression, blank lines, a loop, a
//! comprehension), the debug offsets of a real 3.13 build, and the merge.

use super::{
    Pending,
    detect::Interpreter,
    layout::{self, Layout},
    lines, merge,
};

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// `co_lines()` of the function, as (first byte offset, line) runs.
fn expand(runs: &[(u64, u64, u32)]) -> Vec<(u64, u32)> {
    runs.iter()
        .flat_map(|&(start, end, line)| (start..end).step_by(2).map(move |o| (o, line)))
        .collect()
}

#[test]
fn line_table_310() {
    let table = unhex("04010401140104020204020104ff0c020a010801");
    let expected = expand(&[
        (0, 4, 3),
        (4, 8, 4),
        (8, 28, 5),
        (28, 32, 7),
        (32, 34, 11),
        (34, 36, 12),
        (36, 40, 11),
        (40, 52, 13),
        (52, 62, 14),
        (62, 70, 15),
    ]);
    for (offset, line) in expected {
        assert_eq!(
            lines::line_310(&table, 2, offset),
            Some(line),
            "offset {offset}"
        );
    }
}

#[test]
fn line_table_311() {
    let table = unhex(
        "8000d808098041d80708f00003050ed80c21d00c219d05986199089c08d00c21d10c21d40c2188018801\
         e00c0d8801f008000a0bd8090af103010a0b8041e50d12903189588c58f00001050ff00001050f8801d8\
         08098851890688018801d80b0c88718935804c",
    );
    let expected = expand(&[
        (0, 2, 2),
        (2, 6, 3),
        (6, 10, 4),
        (10, 62, 5),
        (62, 66, 7),
        (66, 68, 11),
        (68, 70, 12),
        (70, 76, 11),
        (76, 110, 13),
        (110, 122, 14),
        (122, 132, 15),
    ]);
    for (offset, line) in expected {
        assert_eq!(
            lines::line_311(&table, 2, offset / 2),
            Some(line),
            "offset {offset}"
        );
    }
}

/// pyenv's 3.13.0 gives, through `_Py_DebugOffsets`, the offsets measured on it with gdb
/// (../shared/PYTHON-STACKS.md §2-§3). Skipped, with a line, where it is not installed.
#[test]
fn debug_offsets_of_313() {
    use object::{Object, ObjectSection};
    let root = std::env::var("PYENV_ROOT").unwrap_or_else(|_| "/root/.pyenv".into());
    let path = format!("{root}/versions/3.13.0/lib/libpython3.13.so.1.0");
    let Ok(data) = std::fs::read(&path) else {
        eprintln!("skipped: {path} is not installed");
        return;
    };
    let file = object::File::parse(&*data).unwrap();
    let section = file.section_by_name(".PyRuntime").unwrap();
    let layout = layout::from_debug_offsets(section.data().unwrap()).unwrap();
    let k = &layout.kernel;
    assert_eq!(
        (
            k.interpreters_head,
            k.interp_threads_head,
            k.tstate_thread_id,
            k.tstate_frame
        ),
        (632, 7344, 152, 72)
    );
    assert_eq!(
        (k.frame_code, k.frame_back, k.frame_instr, k.frame_flag),
        (0, 8, 56, 70)
    );
    assert_eq!((k.code_filename, k.code_firstlineno), (112, 68));
    assert_eq!(layout.code.code_adaptive, Some(200));
    assert_eq!(layout.native_thread_id, Some(160));
}

fn interpreter(layout: Layout) -> Interpreter {
    Interpreter {
        layout,
        runtime: 0,
        code_type: 0,
        none: 0,
        eval: vec![(0x1000, 0x2000)],
        module: "libpython".into(),
    }
}

/// 3.11+: one eval activation runs frames up to its entry frame; the Python frames go in
/// front of it, the native frames all stay, and a cut stack says so after its last frame.
#[test]
fn merge_puts_each_run_in_front_of_its_eval_call() {
    let interp = interpreter(layout::builtin(11).unwrap());
    let (a, b, c, cut) = (
        0xffff_f000_0000_0001,
        0xffff_f000_0000_0002,
        0xffff_f000_0000_0003,
        0xffff_f000_0000_0009,
    );
    let pending = Pending {
        frames: vec![(a, false), (b, true), (c, true)],
        cut: Some(cut),
        pid: 1,
    };
    // leaf, helper, eval, glue, eval, main
    let native = [0x500, 0x600, 0x1100, 0x700, 0x1200, 0x800];
    assert_eq!(
        merge(&native, &pending, &interp),
        [0x500, 0x600, a, b, 0x1100, 0x700, c, cut, 0x1200, 0x800]
    );
    // Frames left when the native walk ended early follow it.
    assert_eq!(
        merge(&native[..3], &pending, &interp),
        [0x500, 0x600, a, b, 0x1100, c, cut]
    );
    // Without Python frames the stack is the native one.
    let none = Pending::default();
    assert_eq!(merge(&native, &none, &interp), native);
}
