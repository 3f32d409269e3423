//! Which read-only transactions `shadow` and `live` compare on the other side: a fraction of
//! them (`--compare-reads`), chosen read by read when the transaction ends, so that a read
//! left out is never queued, takes no place in the commit order and costs the other side
//! nothing. Writes and session settings are never sampled: they are carried whatever the
//! fraction.

use metrics::counter;

/// The fraction of read-only transactions compared on the other side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadSample {
    fraction: f64,
}

impl ReadSample {
    /// Every read compared (the default).
    pub const EVERY: ReadSample = ReadSample { fraction: 1.0 };

    /// A sample of `fraction` of the reads; `None` unless it is within 0 and 1.
    #[must_use]
    pub fn new(fraction: f64) -> Option<ReadSample> {
        (0.0..=1.0)
            .contains(&fraction)
            .then_some(ReadSample { fraction })
    }

    /// The fraction compared.
    #[must_use]
    pub fn fraction(self) -> f64 {
        self.fraction
    }

    /// Whether the read ending now is compared, counted either way in
    /// `tandem_pg_shadow_reads_total{decision}`.
    pub(crate) fn takes(self) -> bool {
        let taken =
            self.fraction >= 1.0 || (self.fraction > 0.0 && fastrand::f64() < self.fraction);
        let decision = if taken { "compared" } else { "skipped" };
        counter!("tandem_pg_shadow_reads_total", "decision" => decision).increment(1);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::ReadSample;

    #[test]
    fn only_fractions_between_none_and_every_read_are_samples() {
        for refused in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(ReadSample::new(refused), None, "{refused}");
        }
        assert_eq!(ReadSample::new(1.0), Some(ReadSample::EVERY));
        assert_eq!(ReadSample::new(0.25).map(ReadSample::fraction), Some(0.25));
    }

    #[test]
    fn the_ends_take_every_read_or_none() {
        let (every, none) = (ReadSample::EVERY, ReadSample::new(0.0).unwrap());
        assert!((0..1_000).all(|_| every.takes()));
        assert!((0..1_000).all(|_| !none.takes()));
    }

    #[test]
    fn a_fraction_takes_reads_chosen_one_by_one() {
        fastrand::seed(14);
        let tenth = ReadSample::new(0.1).unwrap();
        let taken = (0..10_000).filter(|_| tenth.takes()).count();
        // 1,000 expected (seeded, so always the same count): within 5 standard deviations.
        assert!((850..=1_150).contains(&taken), "{taken}");
    }
}
