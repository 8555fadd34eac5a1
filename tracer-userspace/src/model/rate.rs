//! Rates that describe what happens now, not the average over the run: an exponentially
//! decaying count with a one-minute time constant. Each event counts 1 when it happens and
//! e^(-age / 60 s) later, and the sum of those weights is the rate per minute: a steady rate
//! reads as itself once a few minutes have passed, a burst counts at most its size (500 in
//! 0.1 s reads 500/min at once, 184/min a minute later, 25/min after three), and nothing is
//! extrapolated from a short span. Updating it is O(1) per event and it is two numbers.

/// The time constant, seconds: the weight of an event falls by e every minute.
pub(crate) const TIME_CONSTANT_S: f64 = 60.0;

/// The decayed count of events of the given ages (seconds), which is their rate per minute.
/// For groups built at report time from the events' own times.
pub(crate) fn recent_per_minute(ages_s: impl IntoIterator<Item = f64>) -> f64 {
    let sum: f64 = ages_s
        .into_iter()
        .map(|age| (-age.max(0.0) / TIME_CONSTANT_S).exp())
        .sum();
    round_tenth(sum * 60.0 / TIME_CONSTANT_S)
}

/// The same rate, kept up to date as events arrive: the weight at the newest event's time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct DecayingRate {
    weight: f64,
    at_ns: u64,
}

impl DecayingRate {
    /// Counts an event at `at_ns` (CLOCK_MONOTONIC); one older than the newest counted is
    /// counted at its own, smaller, weight.
    pub(crate) fn record(&mut self, at_ns: u64) {
        if at_ns >= self.at_ns {
            self.weight = self.weight * decay(at_ns - self.at_ns) + 1.0;
            self.at_ns = at_ns;
        } else {
            self.weight += decay(self.at_ns - at_ns);
        }
    }

    /// Counts `n` events at once at `at_ns` (a level that rose by `n` between two looks).
    pub(crate) fn record_many(&mut self, at_ns: u64, n: f64) {
        if at_ns >= self.at_ns {
            self.weight = self.weight * decay(at_ns - self.at_ns) + n;
            self.at_ns = at_ns;
        } else {
            self.weight += n * decay(self.at_ns - at_ns);
        }
    }

    /// Events per minute at `now_ns`, one decimal.
    pub(crate) fn per_minute(&self, now_ns: u64) -> f64 {
        round_tenth(self.weight * decay(now_ns.saturating_sub(self.at_ns)) * 60.0 / TIME_CONSTANT_S)
    }
}

fn decay(ns: u64) -> f64 {
    (-(ns as f64 / 1e9) / TIME_CONSTANT_S).exp()
}

fn round_tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// A burst of 500 in 0.1 s reads about 500/min at once and fades within minutes; it is
    /// never stretched into a rate over a shorter span than a minute.
    #[test]
    fn a_burst_fades() {
        let mut rate = DecayingRate::default();
        let start = 30 * S;
        for i in 0..500 {
            rate.record(start + i * (S / 10) / 500);
        }
        let just_after = rate.per_minute(start + S / 10);
        assert!((499.0..=500.0).contains(&just_after), "{just_after}");
        let minute_later = rate.per_minute(start + 60 * S);
        assert!((180.0..190.0).contains(&minute_later), "{minute_later}");
        assert!(rate.per_minute(start + 600 * S) < 0.1);
    }

    /// Counting n at once is counting n one by one at that time.
    #[test]
    fn many_at_once_is_many() {
        let (mut one_by_one, mut at_once) = (DecayingRate::default(), DecayingRate::default());
        for t in [5 * S, 20 * S] {
            for _ in 0..7 {
                one_by_one.record(t);
            }
            at_once.record_many(t, 7.0);
        }
        assert_eq!(one_by_one.per_minute(40 * S), at_once.per_minute(40 * S));
        assert!((8.0..9.0).contains(&at_once.per_minute(40 * S)));
    }

    /// A steady 10 per minute reads 10/min after a while, however long it has run.
    #[test]
    fn a_steady_rate_reads_as_itself() {
        let mut rate = DecayingRate::default();
        let mut t = 0;
        for _ in 0..600 {
            t += 6 * S;
            rate.record(t);
        }
        let now = rate.per_minute(t);
        assert!((10.0..=10.6).contains(&now), "{now}");
    }

    /// Counting as events arrive and summing over their ages at the end agree, also when
    /// events arrive out of order.
    #[test]
    fn streaming_and_batch_agree() {
        let times = [3 * S, S, 40 * S, 39 * S, 90 * S];
        let mut rate = DecayingRate::default();
        for t in times {
            rate.record(t);
        }
        let now = 100 * S;
        let ages = times.iter().map(|t| (now - t) as f64 / 1e9);
        assert_eq!(rate.per_minute(now), recent_per_minute(ages));
    }
}
