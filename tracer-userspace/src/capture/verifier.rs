//! Why the kernel refused a program, in one line: the verifier's log names a helper this
//! kernel lacks or does not offer to tracepoint programs, or ends with what it refused. The
//! full log goes to the debug log.

use aya::programs::ProgramError;

use super::LoadError;

/// One readable line for a refused program; the verifier's full log only at debug level.
pub(super) fn program_error(program: &'static str, err: ProgramError) -> LoadError {
    let reason = match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            log::debug!("verifier log for {program}:\n{log}");
            verifier_reason(&io_error.to_string(), &log)
        }
        other => paranoid_hint(with_causes(&other), perf_event_paranoid()),
    };
    LoadError::Program { program, reason }
}

/// An error and its causes, as one line ("`perf_event_open` failed: Permission denied").
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        line.push_str(": ");
        line.push_str(&err.to_string());
        cause = err.source();
    }
    line
}

/// `kernel.perf_event_paranoid`, if it can be read.
fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A refusal to attach, with what to do when it is Debian's: its kernels (and Ubuntu's)
/// default to `kernel.perf_event_paranoid=3`, under which opening a tracepoint's perf event
/// needs CAP_SYS_ADMIN whatever CAP_PERFMON says.
fn paranoid_hint(reason: String, paranoid: Option<i32>) -> String {
    let denied = ["Permission denied", "Operation not permitted"]
        .iter()
        .any(|what| reason.contains(what));
    match paranoid {
        Some(level) if denied && level >= 3 => format!(
            "{reason} (kernel.perf_event_paranoid is {level}: this kernel lets only \
             CAP_SYS_ADMIN attach tracepoints then; grant tracer CAP_SYS_ADMIN, or set \
             kernel.perf_event_paranoid to 2)"
        ),
        _ => reason,
    }
}

/// BPF helpers the programs call that not every kernel has: (helper id, name, the Linux
/// version that added it). A kernel names a helper it does not know by its id only
/// ("invalid func unknown#158"), so the name comes from here.
const NEWER_HELPERS: &[(u32, &str, &str)] = &[
    (112, "bpf_probe_read_user", "5.5"),
    (113, "bpf_probe_read_kernel", "5.5"),
    (114, "bpf_probe_read_user_str", "5.5"),
    (130, "bpf_ringbuf_output", "5.8"),
    (131, "bpf_ringbuf_reserve", "5.8"),
    (132, "bpf_ringbuf_submit", "5.8"),
    (133, "bpf_ringbuf_discard", "5.8"),
    (158, "bpf_get_current_task_btf", "5.11"),
    (175, "bpf_task_pt_regs", "5.15"),
];

/// The oldest kernel that has every helper in [`NEWER_HELPERS`].
const OLDEST_KERNEL: &str = "5.15";

/// The verifier's log as one line. A helper call it refused is named: "invalid func
/// unknown#ID" is a helper this kernel does not have, "unknown func NAME#ID" one it has but
/// does not offer to tracepoint programs. Otherwise the last line that is not the verifier's
/// statistics, which says what it refused.
fn verifier_reason(io_error: &str, log: &str) -> String {
    const DEBUG_HINT: &str = "run with RUST_LOG=debug for the verifier's full log";
    if let Some(call) = log.lines().find_map(refused_call) {
        let known = NEWER_HELPERS
            .iter()
            .find(|(id, name, _)| Some(*id) == call.id || *name == call.name);
        let needs = match known {
            Some((_, _, since)) => {
                format!(" (added in Linux {since}); tracer needs Linux {OLDEST_KERNEL} or later")
            }
            None => String::new(),
        };
        let id = call.id.map(|id| format!(" (#{id})")).unwrap_or_default();
        return match (call.kernel_knows_it, known) {
            (false, Some((_, name, _))) => {
                format!("this kernel lacks the BPF helper {name}{needs} ({DEBUG_HINT})")
            }
            (false, None) => format!("this kernel lacks a BPF helper{id} ({DEBUG_HINT})"),
            (true, _) => format!(
                "this kernel does not let tracepoint programs call the BPF helper {}{id} \
                 ({DEBUG_HINT})",
                call.name
            ),
        };
    }
    let is_statistics = |line: &str| {
        [
            "processed ",
            "verification time",
            "stack depth",
            "max_states_per_insn",
        ]
        .iter()
        .any(|prefix| line.starts_with(prefix))
    };
    let last = log
        .lines()
        .map(str::trim)
        .rev()
        .find(|line| !line.is_empty() && !is_statistics(line))
        .unwrap_or("");
    format!("{io_error} (verifier: {last}; {DEBUG_HINT})")
}

/// A helper call the verifier refused.
struct RefusedCall<'a> {
    id: Option<u32>,
    name: &'a str,
    /// "unknown func NAME#ID": the kernel has the helper, but not for this program type.
    kernel_knows_it: bool,
}

/// `invalid func NAME#ID` or `unknown func NAME#ID`.
fn refused_call(line: &str) -> Option<RefusedCall<'_>> {
    let line = line.trim();
    let (call, kernel_knows_it) = match line.strip_prefix("unknown func ") {
        Some(call) => (call, true),
        None => (line.strip_prefix("invalid func ")?, false),
    };
    let (name, id) = match call.split_once('#') {
        Some((name, id)) => (name, id.trim().parse().ok()),
        None => (call, None),
    };
    Some(RefusedCall {
        id,
        name,
        kernel_knows_it,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal under perf_event_paranoid 3 names the sysctl and the capability; others
    /// are left as they are.
    #[test]
    fn paranoid_refusals_say_what_to_do() {
        let denied = "`perf_event_open` failed: Permission denied (os error 13)".to_owned();
        let hinted = paranoid_hint(denied.clone(), Some(3));
        assert!(hinted.starts_with(&denied), "{hinted}");
        assert!(
            hinted.contains("kernel.perf_event_paranoid is 3") && hinted.contains("CAP_SYS_ADMIN"),
            "{hinted}"
        );
        assert_eq!(paranoid_hint(denied.clone(), Some(2)), denied);
        assert_eq!(paranoid_hint(denied.clone(), None), denied);
        let other = "`perf_event_open` failed: No such device".to_owned();
        assert_eq!(paranoid_hint(other.clone(), Some(4)), other);
        // aya's error says which call failed; its cause says why.
        let io_error = std::io::Error::from_raw_os_error(libc::EACCES);
        let err = ProgramError::SyscallError(aya::sys::SyscallError {
            call: "perf_event_open",
            io_error,
        });
        assert_eq!(
            with_causes(&err),
            "`perf_event_open` failed: Permission denied (os error 13)"
        );
    }

    /// A helper the kernel has but does not offer to tracepoint programs is named.
    #[test]
    fn names_a_helper_not_offered() {
        let log = "0: (bf) r6 = r1\n1: (85) call bpf_task_pt_regs#175\n\
                   unknown func bpf_task_pt_regs#175\nprocessed 3 insns\n";
        let reason = verifier_reason("Invalid argument (os error 22)", log);
        assert!(
            reason.starts_with(
                "this kernel does not let tracepoint programs call the BPF helper \
                 bpf_task_pt_regs (#175) (run with"
            ),
            "{reason}"
        );
        assert!(!reason.contains('\n'), "one line: {reason}");
    }

    /// A kernel names a helper it lacks by id only (seen under `cargo xtask test --vm` on
    /// Debian 11's 5.10.0-46): the id is looked up, and the statistics that end the log are
    /// not taken for the reason.
    #[test]
    fn names_a_missing_helper_known_by_id_only() {
        let log = "; fun()\n97: (85) call unknown#158\ninvalid func unknown#158\n\
                   verification time 30379 usec\nstack depth 56+0\n\
                   processed 185 insns (limit 1000000) max_states_per_insn 1 total_states 8 \
                   peak_states 8 mark_read 5\n\n";
        let reason = verifier_reason("Invalid argument (os error 22)", log);
        assert!(
            reason.starts_with(
                "this kernel lacks the BPF helper bpf_get_current_task_btf (added in Linux \
                 5.11); tracer needs Linux 5.15 or later"
            ),
            "{reason}"
        );
    }

    /// A missing helper we do not know by id is still said to be missing, with its id.
    #[test]
    fn unknown_ids_are_shown() {
        let reason = verifier_reason(
            "Invalid argument (os error 22)",
            "invalid func unknown#999\n",
        );
        assert!(
            reason.starts_with("this kernel lacks a BPF helper (#999)"),
            "{reason}"
        );
    }

    /// Any other refusal: the last line that is not statistics, on one line, with the errno.
    #[test]
    fn falls_back_to_the_last_line() {
        let log = "0: (79) r1 = *(u64 *)(r1 +8)\nR1 invalid mem access 'inv'\n\
                   processed 1 insns (limit 1000000)\n";
        let reason = verifier_reason("Permission denied (os error 13)", log);
        assert_eq!(
            reason,
            "Permission denied (os error 13) (verifier: R1 invalid mem access 'inv'; run with \
             RUST_LOG=debug for the verifier's full log)"
        );
    }
}
