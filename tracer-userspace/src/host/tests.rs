use super::*;

const S: u64 = 1_000_000_000;

fn seen(pid: u32, threads: u64) -> Seen {
    Seen {
        pid,
        ppid: 1,
        comm: format!("p{pid}"),
        start_time: u64::from(pid) * 10,
        threads,
        zombie: false,
    }
}

/// A process whose descriptors rise at every look is leaking and ranks first; one that
/// churns (up and down) or holds steady is not, whatever it holds.
#[test]
fn the_one_that_keeps_growing_ranks_first() {
    let mut watch = HostWatch::new();
    let all = [seen(10, 1), seen(11, 1), seen(12, 1)];
    for look in 0..6u64 {
        let now = (look + 1) * S;
        watch.look(&all, now);
        watch.set(10, Level::Descriptors, 500, now); // steady, many
        watch.set(11, Level::Descriptors, 3 + look, now); // +1 per second
        watch.set(12, Level::Descriptors, 20 + (look % 2) * 5, now); // churns
    }
    let now = 6 * S;
    let ranked: Vec<u32> = watch.ranked(now).iter().map(|w| w.pid).collect();
    assert_eq!(ranked[0], 11);
    let leaker = watch.get(11).unwrap();
    assert!(leaker.leaking(now));
    let rate = leaker.per_minute(Level::Descriptors, now);
    assert!((4.0..=5.0).contains(&rate), "{rate}");
    assert!(!watch.get(10).unwrap().leaking(now));
    assert!(!watch.get(12).unwrap().leaking(now));
}

/// Two rises are not yet a leak: it takes RISES_TO_LEAK looks that saw it grow.
#[test]
fn a_leak_needs_several_rises() {
    let mut series = Series::default();
    for (i, value) in [1, 2, 3].into_iter().enumerate() {
        series.set(value, i as u64 * S);
    }
    assert!(!series.growing(2 * S));
    series.set(4, 3 * S);
    assert!(series.growing(3 * S));
    // A minute later with nothing new, it is not growing now.
    series.set(4, 70 * S);
    assert!(!series.growing(70 * S));
}

/// Zombies are counted under their parent; a process gone from /proc, or whose pid came
/// back with another start time, is dropped.
#[test]
fn zombies_and_departures() {
    let mut watch = HostWatch::new();
    let mut child = seen(21, 1);
    child.ppid = 20;
    child.zombie = true;
    let new = watch.look(&[seen(20, 1), child.clone()], S);
    assert_eq!(new, vec![20]);
    assert_eq!(watch.get(20).unwrap().value(Level::Zombies), Some(1));
    let mut reused = seen(20, 1);
    reused.start_time += 1;
    assert_eq!(watch.look(&[reused], 2 * S), vec![20]);
    assert_eq!(watch.get(20).unwrap().value(Level::Zombies), Some(0));
    watch.look(&[], 3 * S);
    assert_eq!(watch.len(), 0);
}

/// The kernel's counts tell which processes to look at again.
#[test]
fn moved_kernel_counts() {
    let mut watch = HostWatch::new();
    watch.look(&[seen(30, 1)], S);
    assert!(watch.kernel_counts(30, (1, 0, 0)));
    assert!(!watch.kernel_counts(30, (1, 0, 0)));
    assert!(watch.kernel_counts(30, (1, 1, 0)));
    assert!(!watch.kernel_counts(31, (5, 0, 0)));
}

/// `--follow-top 1`: the fastest leaker is followed; while it lives the next one waits,
/// and once it exits the next leaker takes its place (seen on a shared host: a process
/// that grew fast for a few seconds while starting, then exited, held the only place).
#[test]
fn an_exited_followed_process_gives_its_place() {
    let mut watch = HostWatch::new();
    let both = [seen(40, 1), seen(41, 1)];
    for look in 0..5u64 {
        let now = (look + 1) * S;
        watch.look(&both, now);
        watch.set(40, Level::Descriptors, 10 + 10 * look, now); // starting up, fast
        watch.set(41, Level::Descriptors, 3 + look, now); // the slow leak
    }
    let now = 5 * S;
    let first: Vec<u32> = watch.to_follow(1, now).iter().map(|w| w.pid).collect();
    assert_eq!(first, vec![40]);
    watch.mark_followed(40, now);
    assert_eq!(watch.followed(), vec![40]);
    assert!(watch.to_follow(1, now).is_empty());
    // 40 exits: 41 is followed next, and 40 is not counted any more.
    watch.look(&[seen(41, 1)], 6 * S);
    watch.set(41, Level::Descriptors, 8, 6 * S);
    assert!(watch.followed().is_empty());
    let next: Vec<u32> = watch.to_follow(1, 6 * S).iter().map(|w| w.pid).collect();
    assert_eq!(next, vec![41]);
    watch.mark_followed(41, 6 * S);
    assert_eq!(watch.followed(), vec![41]);
    assert!(watch.to_follow(1, 6 * S).is_empty());
}
