use super::*;

const SP: u64 = 0x7ffd_0000_1000;
const TGID: u32 = 40;
const SECOND: u64 = 1_000_000_000;

fn walk(deciding: &[(u64, u64)], copied: usize) -> ToGive<'_> {
    ToGive {
        tgid: TGID,
        ip: 0x1000,
        sp: SP,
        bp: None,
        copied,
        deciding,
    }
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

/// A walk given reaches the kernel as offsets from sp and words, under a handle that names
/// its stack for its own process only; the same key is given once.
#[test]
fn gives_each_key_once_and_names_its_stack() {
    let mut given = GivenWalks::default();
    let native: Arc<[u64]> = Arc::from([0x1000, 0x2000]);
    let handle = given
        .give(walk(&[(SP + 8, 0x2000)], 24), &outcome(), &native, 7)
        .expect("given");
    let updates = given.take_updates();
    assert_eq!(updates.len(), 1);
    let (key, memo) = &updates[0];
    assert_eq!((key.tgid, key.ip, key.sp), (TGID, 0x1000, SP));
    let memo = memo.expect("a walk to give");
    assert_eq!(
        (memo.handle, memo.copied, memo.words, memo.bp_decides),
        (handle, 24, 1, 0)
    );
    assert_eq!((memo.offsets[0], memo.values[0]), (8, 0x2000));

    assert!(
        given
            .give(walk(&[(SP + 8, 0x2000)], 24), &outcome(), &native, 7)
            .is_none()
    );
    assert!(given.take_updates().is_empty());

    let hit = given.hit(handle, TGID, 5).expect("names its stack");
    assert_eq!((hit.id, hit.copied, hit.sp), (7, 24, SP));
    assert!(hit.outcome.frames.is_empty());
    assert!(given.hit(handle, TGID + 1, 5).is_none());
    assert_eq!((given.hits, given.unknown), (1, 1));
}

/// Walks that the kernel could not check (too many deciding words, nothing copied, a word
/// off the 8-byte grid or past the copy) are not given.
#[test]
fn gives_only_what_the_kernel_can_check() {
    let mut given = GivenWalks::default();
    let native: Arc<[u64]> = Arc::from([0x1000]);
    let many: Vec<(u64, u64)> = (0..=MEMO_WORDS as u64).map(|i| (SP + 8 * i, i)).collect();
    assert!(
        given
            .give(walk(&many, 4096), &outcome(), &native, 1)
            .is_none()
    );
    assert!(given.give(walk(&[], 0), &outcome(), &native, 1).is_none());
    // The kernel loads each word aligned: a word 4 bytes off is not given.
    assert!(
        given
            .give(walk(&[(SP + 12, 1)], 24), &outcome(), &native, 1)
            .is_none()
    );
    // Nor a word that ends past the copy (the kernel masks offsets, it does not check them).
    assert!(
        given
            .give(walk(&[(SP + 24, 1)], 24), &outcome(), &native, 1)
            .is_none()
    );
    assert!(given.take_updates().is_empty());
}

/// A process's walks are taken back at its exec or end; a handle taken back, or replaced by
/// a walk with another copy length, still names its stack for a second of event time (the
/// kernel may have sent it in events still in the ring), then nothing.
#[test]
fn taken_back_handles_retire_after_a_second() {
    let mut given = GivenWalks::default();
    let native: Arc<[u64]> = Arc::from([0x1000, 0x2000]);
    given.saw(10 * SECOND);
    let first = given
        .give(walk(&[(SP + 8, 0x2000)], 24), &outcome(), &native, 7)
        .expect("given");
    // The thread's base was learned: the kernel copies 16 bytes now.
    let second = given
        .give(walk(&[(SP + 8, 0x2000)], 16), &outcome(), &native, 7)
        .expect("replaces the first");
    assert!(second > first);
    assert!(
        given.take_taken_back(),
        "a replaced walk makes the CPUs' copies stale"
    );
    assert!(given.hit(first, TGID, 10 * SECOND + SECOND / 2).is_some());
    assert!(given.hit(first, TGID, 11 * SECOND + 1).is_none());
    assert!(given.hit(second, TGID, 11 * SECOND + 1).is_some());
    given.take_updates();

    assert!(!given.take_taken_back());
    given.take_back(TGID, 12 * SECOND);
    assert!(given.take_taken_back(), "so does a walk taken back");
    let updates = given.take_updates();
    assert_eq!(updates.len(), 1);
    assert!(updates[0].1.is_none());
    assert!(given.hit(second, TGID, 12 * SECOND + SECOND / 2).is_some());
    assert!(given.hit(second, TGID, 13 * SECOND + 1).is_none());
    assert_eq!(given.len(), 0);
    // The key may be given again, under a new handle.
    let third = given
        .give(walk(&[(SP + 8, 0x2000)], 16), &outcome(), &native, 7)
        .expect("given again");
    assert!(third > second);
    assert!(!given.take_taken_back(), "a walk given takes nothing back");
}

/// The table never holds more than the kernel's map: past MAX_STACK_MEMOS live walks,
/// nothing more is given until some are taken back.
#[test]
fn bounded_by_the_kernel_map() {
    let mut given = GivenWalks::default();
    let native: Arc<[u64]> = Arc::from([0x1000]);
    for i in 0..MAX_STACK_MEMOS as u64 {
        let mut w = walk(&[], 8);
        w.sp = SP + 16 * i;
        w.tgid = 1 + (i % 7) as u32;
        assert!(given.give(w, &outcome(), &native, 1).is_some(), "walk {i}");
    }
    let mut w = walk(&[], 8);
    w.sp = SP - 16;
    assert!(given.give(w, &outcome(), &native, 1).is_none());
    given.take_back(3, 0);
    given.take_back(3, 2 * SECOND);
    let mut w = walk(&[], 8);
    w.sp = SP - 16;
    assert!(given.give(w, &outcome(), &native, 1).is_some());
}

mod in_the_store {
    //! The store gives a whole-stack walk to the kernel, and an event the kernel sent as its
    //! handle gets the stack the walk found, re-interned if its id was dropped since.

    use crate::{
        events::{Event, StackTop},
        stacks::{
            StackStore,
            test_support::{self, NoKernelStacks},
        },
    };

    const SP: u64 = 0x7000_0000_0000;

    fn accept4() -> u64 {
        test_support::libc_function(c"accept4")
    }

    fn caller() -> u64 {
        accept4 as fn() -> u64 as usize as u64 + 1
    }

    fn opened(fd: i32, t: u64) -> Event {
        test_support::opened(std::process::id(), fd, t)
    }

    fn birth(store: &mut StackStore, fd: i32, bytes: &[u8], memo: u32) -> Option<u32> {
        let mut event = opened(fd, u64::from(fd.unsigned_abs()));
        let top = StackTop {
            sp: SP,
            bp: 0,
            ip: accept4(),
            bytes,
            memo,
        };
        assert!(
            store
                .annotate(&mut event, Some(top), &NoKernelStacks)
                .is_none()
        );
        event.header.stack_id
    }

    #[test]
    fn a_stack_sent_as_a_handle_is_the_walks_stack() {
        let me = std::process::id();
        let bytes: Vec<u8> = [caller(), 0, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut store = StackStore::new();
        store.capture(me);
        let first = birth(&mut store, 3, &bytes, 0).expect("unwound at once");
        let updates = store.take_given_updates();
        assert_eq!(updates.len(), 1, "the walk is given to the kernel");
        let memo = updates[0].1.expect("given");
        // The return address, and the 0 above it where the walk ended.
        assert_eq!((memo.copied as usize, memo.words), (bytes.len(), 2));
        assert_eq!(
            (&memo.offsets[..2], &memo.values[..2]),
            (&[0, 8][..], &[caller(), 0][..])
        );

        // The kernel matched a stack against it and sent no copy.
        assert_eq!(birth(&mut store, 4, &[], memo.handle), Some(first));
        assert_eq!(store.interned(first).1, 1, "not unwound again");

        // Its interned id was dropped since: the same frames are interned again.
        store.drop_unused(&std::collections::HashSet::new());
        let again = birth(&mut store, 5, &[], memo.handle).expect("re-interned");
        assert!(again > first);
        assert_eq!(store.interned(again).0, Some(vec![accept4(), caller()]));

        // A handle that names nothing here gives no stack (and is counted).
        assert_eq!(birth(&mut store, 6, &[], memo.handle + 1), None);
        assert_eq!(store.given.unknown, 1);
    }
}
