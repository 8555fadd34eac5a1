//! What the programs that userspace runs (`BPF_PROG_TEST_RUN`, never attached) share: they
//! are raw tracepoint programs, so that a run takes up to 12 arguments.

/// Runs `$body` with `$tgid: u32` bound to each argument of the run in turn, up to the first
/// 0 (the list's end). One constant index each: the verifier refuses context reads at a
/// variable offset.
macro_rules! each_tgid_argument {
    ($ctx:expr, |$tgid:ident| $body:block) => {
        $crate::test_run::each_tgid_argument!(@at $ctx, $tgid, $body, 0 1 2 3 4 5 6 7 8 9 10 11)
    };
    (@at $ctx:expr, $tgid:ident, $body:block, $($i:literal)+) => {
        'arguments: {
            $(
                let $tgid: u64 = $ctx.arg($i);
                if $tgid == 0 {
                    break 'arguments;
                }
                let $tgid = $tgid as u32;
                $body
            )+
        }
    };
}

pub(crate) use each_tgid_argument;

// The held flush's batch is what the macro walks.
const _: () = assert!(tracer_common::HELD_FLUSH_BATCH == 12);
