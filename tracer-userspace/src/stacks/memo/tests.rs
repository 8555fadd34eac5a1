use super::*;

const SP: u64 = 0x7ffd_0000_1000;

fn key(copied: usize) -> Key {
    Key {
        modules: 1,
        ip: 0x1000,
        sp: SP,
        copied,
        kernel_id: None,
    }
}

/// Stack bytes holding `words` from SP up.
fn stack(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn outcome() -> Unwound {
    Unwound {
        frames: vec![0x1000, 0x2000],
        complete: true,
        reached_root: true,
        stack_used: 16,
        rejected: None,
    }
}

impl Memo<()> {
    /// `look` for a stack whose %rbp is 0.
    fn look_at(&mut self, key: &Key, modules: &Arc<()>, bytes: &[u8]) -> Lookup<'_> {
        self.look(key, 0, modules, bytes)
    }
}

fn hit(lookup: Lookup) -> Option<Option<u32>> {
    match lookup {
        Lookup::Hit(walk) => Some(walk.id),
        _ => None,
    }
}

/// A stack with the same word at every address the remembered walk read is a hit, whatever
/// the words it did not read; a differing word read is not.
#[test]
fn hits_only_when_every_word_read_is_the_same() {
    let modules = Arc::new(());
    let mut memo = Memo::default();
    let bytes = stack(&[0xaaaa, 0x2000, 0xbbbb]);
    // Read the return address at SP + 8 only.
    memo.record(
        key(24),
        &modules,
        (&[(SP + 8, 0x2000)], Some(0)),
        &outcome(),
        Some(7),
    );
    assert_eq!(hit(memo.look_at(&key(24), &modules, &bytes)), Some(Some(7)));
    let other_scratch = stack(&[0x1234, 0x2000, 0x5678]);
    assert_eq!(
        hit(memo.look_at(&key(24), &modules, &other_scratch)),
        Some(Some(7))
    );
    let other_caller = stack(&[0xaaaa, 0x3000, 0xbbbb]);
    assert!(matches!(
        memo.look_at(&key(24), &modules, &other_caller),
        Lookup::Learn
    ));
    assert_eq!(memo.hits, 2);
    // The outcome kept is what the stack base learning needs, without the frames.
    let Lookup::Hit(walk) = memo.look_at(&key(24), &modules, &bytes) else {
        panic!("no hit");
    };
    assert_eq!(
        walk.outcome,
        Unwound {
            frames: Vec::new(),
            ..outcome()
        }
    );
}

/// Another length copied, other registers or another module map are other keys; a copy
/// shorter than a word read is never a hit.
#[test]
fn keys_tell_apart_what_the_walk_depends_on() {
    let modules = Arc::new(());
    let mut memo = Memo::default();
    let bytes = stack(&[0, 0x2000]);
    memo.record(
        key(16),
        &modules,
        (&[(SP + 8, 0x2000)], Some(0)),
        &outcome(),
        Some(1),
    );
    assert!(hit(memo.look_at(&key(16), &modules, &bytes)).is_some());
    // The key says 16 bytes; 8 were copied.
    assert!(matches!(
        memo.look_at(&key(16), &modules, &bytes[..8]),
        Lookup::Miss
    ));
    for other in [
        Key {
            ip: 0x1001,
            ..key(16)
        },
        Key {
            sp: SP - 8,
            ..key(16)
        },
        Key {
            kernel_id: Some(3),
            ..key(16)
        },
        Key {
            modules: 2,
            ..key(16)
        },
    ] {
        assert!(
            hit(memo.look_at(&other, &modules, &bytes)).is_none(),
            "{other:?}"
        );
    }
    // %rbp decided the walk: another %rbp is not the same walk.
    assert!(hit(memo.look(&key(16), 1, &modules, &bytes)).is_none());
    // The same address, another map (the entry was made for the first one).
    let other_map = Arc::new(());
    assert!(hit(memo.look_at(&key(16), &other_map, &bytes)).is_none());
}

/// A key seen for the first time is a miss (deferred as before); seen again without a
/// matching walk it is learned, at most MAX_LEARNS times, and at most MAX_VARIANTS walks are
/// kept.
#[test]
fn learns_a_site_seen_twice_within_bounds() {
    let modules = Arc::new(());
    let mut memo = Memo::default();
    let words = |caller: u64| stack(&[0, caller]);
    assert!(matches!(
        memo.look_at(&key(16), &modules, &words(0x2000)),
        Lookup::Miss
    ));
    let mut learned = 0;
    for caller in 0..100u64 {
        match memo.look_at(&key(16), &modules, &words(caller)) {
            Lookup::Learn => {
                learned += 1;
                memo.record(
                    key(16),
                    &modules,
                    (&[(SP + 8, caller)], Some(0)),
                    &outcome(),
                    None,
                );
            }
            Lookup::Hit(_) => panic!("caller {caller} was never seen"),
            Lookup::Miss => {}
        }
    }
    assert_eq!(learned, MAX_VARIANTS);
    assert_eq!(memo.sizes(), (1, MAX_VARIANTS));
    for caller in 0..MAX_VARIANTS as u64 {
        assert_eq!(
            hit(memo.look_at(&key(16), &modules, &words(caller))),
            Some(None)
        );
    }

    // Walks that cannot be remembered stop being learned after MAX_LEARNS.
    let other = Key {
        ip: 0x9999,
        ..key(16)
    };
    let mut learned = 0;
    for _ in 0..100 {
        if matches!(memo.look_at(&other, &modules, &words(1)), Lookup::Learn) {
            learned += 1;
        }
    }
    assert_eq!(learned, usize::from(MAX_LEARNS));
}

/// The table is emptied when full, and forgets walks whose stack id was dropped.
#[test]
fn bounded_and_forgets_dropped_ids() {
    let modules = Arc::new(());
    let mut memo = Memo::default();
    for sp in 0..MAX_KEYS as u64 {
        let key = Key { sp, ..key(0) };
        memo.record(key, &modules, (&[], None), &outcome(), Some(sp as u32));
    }
    assert_eq!(memo.sizes(), (MAX_KEYS, MAX_KEYS));
    memo.retain_ids(|id| id % 2 == 0);
    assert_eq!(memo.sizes(), (MAX_KEYS, MAX_KEYS / 2));
    assert!(hit(memo.look_at(&Key { sp: 1, ..key(0) }, &modules, &[])).is_none());
    assert_eq!(
        hit(memo.look_at(&Key { sp: 2, ..key(0) }, &modules, &[])),
        Some(Some(2))
    );
    memo.record(
        Key {
            sp: u64::MAX,
            ..key(0)
        },
        &modules,
        (&[], None),
        &outcome(),
        None,
    );
    assert_eq!(memo.sizes(), (1, 1));
}

mod in_the_store {
    //! The memo in the stack store, on real code: a stack met again gets the stack an eager
    //! store unwinds, without being copied or deferred.

    use crate::{
        events::{Event, StackTop},
        stacks::{
            StackStore,
            test_support::{self, NoKernelStacks},
        },
    };

    const SP: u64 = 0x7000_0000_0000;
    const WORDS: usize = 4;

    /// A stack at the first instruction of libc's accept4 (no frame: the caller is the word
    /// at sp) called from `caller`, then `rest`.
    fn stack_bytes(caller: u64, rest: [u64; WORDS - 1]) -> (u64, Vec<u8>) {
        let accept4 = test_support::libc_function(c"accept4");
        let bytes = std::iter::once(caller)
            .chain(rest)
            .flat_map(|w| w.to_le_bytes())
            .collect();
        (accept4, bytes)
    }

    fn caller() -> u64 {
        stack_bytes as fn(u64, [u64; WORDS - 1]) -> (u64, Vec<u8>) as usize as u64 + 1
    }

    fn opened(fd: i32, t: u64) -> Event {
        test_support::opened(std::process::id(), fd, t)
    }

    /// Annotates a birth with the stack `bytes`; its stack id, and whether it was deferred.
    fn birth(store: &mut StackStore, fd: i32, ip: u64, bytes: &[u8]) -> (Option<u32>, bool) {
        let mut event = opened(fd, u64::from(fd.unsigned_abs()));
        let top = StackTop {
            sp: SP,
            bp: 0,
            ip,
            bytes,
            memo: 0,
        };
        let deferred = store.annotate(&mut event, Some(top), &NoKernelStacks);
        (event.header.stack_id, deferred.is_some())
    }

    /// The thread's first birth is unwound (and its walk remembered); the same stack again,
    /// with another word where the walk read nothing, is found without being deferred and
    /// is the stack an eager store without the memo unwinds. A stack whose return address
    /// differs is not found: it is deferred, then learned when met again.
    #[test]
    fn a_stack_met_again_is_the_eager_stack_without_deferral() {
        let me = std::process::id();
        let (ip, bytes) = stack_bytes(caller(), [0; WORDS - 1]);
        let mut store = StackStore::new();
        let mut eager = StackStore::with_defer_window(0).without_memo();
        store.capture(me);
        eager.capture(me);

        let (first, deferred) = birth(&mut store, 3, ip, &bytes);
        assert!(!deferred);
        let first = first.expect("unwound at once");
        assert_eq!(store.interned(first), (Some(vec![ip, caller()]), 1));
        // The walk read the return address, and stopped before the last word.
        let read: Vec<u64> = store.reads.iter().map(|&(at, _)| (at - SP) / 8).collect();
        assert_eq!(read.first(), Some(&0), "{read:?}");
        assert!(!read.contains(&(WORDS as u64 - 1)), "{read:?}");

        let mut rest = [0; WORDS - 1];
        rest[WORDS - 2] = 0xdead_beef;
        let (_, other_unread) = stack_bytes(caller(), rest);
        let (again, deferred) = birth(&mut store, 4, ip, &other_unread);
        assert!(!deferred);
        assert_eq!(again, Some(first));
        // Found, not unwound again.
        assert_eq!(store.interned(first).1, 1);
        let (eager_id, _) = birth(&mut eager, 4, ip, &other_unread);
        assert_eq!(
            store.interned(first).0,
            eager.interned(eager_id.expect("eager")).0
        );

        // Another caller at the same site: the word read differs, so it is not found; the
        // site was met before, so it is learned (unwound at once), then found.
        let (_, elsewhere) = stack_bytes(caller() + 1, [0; WORDS - 1]);
        let (learned, deferred) = birth(&mut store, 5, ip, &elsewhere);
        assert!(!deferred);
        let learned = learned.expect("unwound at once");
        assert_ne!(learned, first);
        assert_eq!(store.interned(learned), (Some(vec![ip, caller() + 1]), 2));
        assert_eq!(birth(&mut store, 6, ip, &elsewhere), (Some(learned), false));
        assert_eq!(store.interned(learned).1, 2);

        // A site never met (another stack pointer) is deferred the first time.
        let mut event = opened(7, 7);
        let top = StackTop {
            sp: SP - 64,
            bp: 0,
            ip,
            bytes: &bytes,
            memo: 0,
        };
        let deferred = store.annotate(&mut event, Some(top), &NoKernelStacks);
        assert!(deferred.is_some());
    }

    /// A dropped stack's id is never handed out again by the memo: the path met again is
    /// unwound and interned anew.
    #[test]
    fn dropped_stacks_are_forgotten() {
        let me = std::process::id();
        let (ip, bytes) = stack_bytes(caller(), [0; WORDS - 1]);
        let mut store = StackStore::new();
        store.capture(me);
        let (first, _) = birth(&mut store, 3, ip, &bytes);
        let first = first.expect("unwound");
        store.drop_unused(&std::collections::HashSet::new());
        let (again, deferred) = birth(&mut store, 4, ip, &bytes);
        // Not a hit any more: seen again, it is learned (unwound) under a new id.
        assert!(!deferred);
        let again = again.expect("unwound");
        assert!(again > first, "{again} reused {first}");
        assert_eq!(store.interned(again), (Some(vec![ip, caller()]), 2));
    }

    unsafe extern "C" {
        /// `push %rbp; mov %rsp,%rbp; nop; pop %rbp; ret`, with CFI (stacks/unwind/tests.rs).
        fn tracer_unwind_test_fp();
    }

    /// Annotates a birth at `ip` with %rbp `bp` and the stack `words`; its stack id, and
    /// whether it was deferred.
    fn birth_at(
        store: &mut StackStore,
        fd: i32,
        (ip, bp): (u64, u64),
        words: &[u64],
    ) -> (Option<u32>, bool) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut event = opened(fd, u64::from(fd.unsigned_abs()));
        let top = StackTop {
            sp: SP,
            bp,
            ip,
            bytes: &bytes,
            memo: 0,
        };
        let deferred = store.annotate(&mut event, Some(top), &NoKernelStacks);
        (event.header.stack_id, deferred.is_some())
    }

    /// Right after `push %rbp` the walk restores %rbp from the stack, and the caller's CFI
    /// never looks at it: the saved word (a request's address in a server) and %rbp at the
    /// event do not decide the walk, so a stack where both differ is found at once, as the
    /// stack the first walk gave.
    #[test]
    fn a_saved_register_that_decides_nothing_is_not_compared() {
        let me = std::process::id();
        let ip = tracer_unwind_test_fp as *const () as u64 + 1;
        let mut store = StackStore::new();
        store.capture(me);
        let (first, deferred) = birth_at(&mut store, 3, (ip, 0x1111), &[0xaaaa, caller(), 0, 0]);
        assert!(!deferred);
        let first = first.expect("unwound at once");
        assert_eq!(store.interned(first), (Some(vec![ip, caller()]), 1));
        for (fd, saved) in [(4, 0xbbbb), (5, 0x7fff_0000_1234)] {
            let (again, deferred) =
                birth_at(&mut store, fd, (ip, saved + 1), &[saved, caller(), 0, 0]);
            assert_eq!(
                (again, deferred),
                (Some(first), false),
                "saved %rbp {saved:#x}"
            );
        }
        // Found, not unwound again.
        assert_eq!(store.interned(first).1, 1);
        // Another caller is another walk.
        let (other, _) = birth_at(&mut store, 6, (ip, 0x1111), &[0xaaaa, caller() + 1, 0, 0]);
        assert_ne!(other, Some(first));
    }

    /// After `mov %rsp,%rbp` the frame is found through %rbp: %rbp at the event decides the
    /// walk, and a stack with another %rbp (whose walk reads elsewhere) is not taken for the
    /// first.
    #[test]
    fn a_frame_pointer_that_decides_is_compared() {
        let me = std::process::id();
        let ip = tracer_unwind_test_fp as *const () as u64 + 4;
        let mut store = StackStore::new();
        store.capture(me);
        let words = [0xaaaa, caller(), 0, 0];
        let (first, _) = birth_at(&mut store, 3, (ip, SP), &words);
        let first = first.expect("unwound at once");
        assert_eq!(store.interned(first), (Some(vec![ip, caller()]), 1));
        assert_eq!(
            birth_at(&mut store, 4, (ip, SP), &words),
            (Some(first), false)
        );
        // %rbp one word up: the return address is read from SP + 16, which holds 0.
        let (other, _) = birth_at(&mut store, 5, (ip, SP + 8), &words);
        assert_ne!(other, Some(first));
    }
}
