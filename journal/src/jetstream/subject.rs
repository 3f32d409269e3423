//! Where a copy goes in the stream: its key's partition and subject, from a hash every instance
//! computes the same way (FNV-1a, fixed by its definition, not by a library version).

/// The subjects of one stream: `<prefix>.<partition>.<key hash>`.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
    partitions: u32,
}

impl Subjects {
    /// The subjects of stream `stream`, its keys spread over `partitions`.
    pub(crate) fn new(stream: &str, partitions: u32) -> Self {
        Self {
            prefix: format!("tandem.{stream}"),
            partitions: partitions.max(1),
        }
    }

    /// The number of partitions.
    pub(crate) fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The prefix of the partitions' lease subjects.
    pub(crate) fn leases(&self) -> String {
        format!("{}-leases", self.prefix)
    }

    /// The prefix of the subjects of the partitions' last holders: `<prefix>.<partition>`.
    pub(crate) fn holders(&self) -> String {
        format!("{}-holders", self.prefix)
    }

    /// The subject of the record of settled copies.
    pub(crate) fn settled(&self) -> String {
        format!("{}-settled", self.prefix)
    }

    /// The prefix of the parked keys' subjects.
    pub(crate) fn parked(&self) -> String {
        format!("{}-parked", self.prefix)
    }

    /// The filter every subject of the stream matches.
    pub(crate) fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The filter the subjects of one partition match.
    pub(crate) fn partition(&self, partition: u32) -> String {
        format!("{}.{partition}.*", self.prefix)
    }

    /// The subject of a copy of a write to `key`.
    pub(crate) fn of(&self, key: &str) -> String {
        let hash = fnv1a(key.as_bytes());
        format!("{}.{}.{hash:016x}", self.prefix, self.partition_of(key))
    }

    /// The length of the longest subject of a copy ([`Subjects::of`]).
    pub(crate) fn longest(&self) -> usize {
        let partition_digits = (self.partitions - 1).to_string().len();
        self.prefix.len() + 1 + partition_digits + 1 + 16
    }

    /// The partition of a copy on `subject` (`None`: not one of this stream's).
    pub(crate) fn partition_of_subject(&self, subject: &str) -> Option<u32> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        rest.split_once('.')?.0.parse().ok()
    }

    /// The partition of `key`'s copies.
    pub(crate) fn partition_of(&self, key: &str) -> u32 {
        let partition = fnv1a(key.as_bytes()) % u64::from(self.partitions);
        u32::try_from(partition).unwrap_or(u32::MAX)
    }
}

/// 64-bit FNV-1a.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_on_the_same_subject_within_its_partition() {
        let subjects = Subjects::new("T1", 8);
        let subject = subjects.of("new:/orders/7");
        assert_eq!(subject, subjects.of("new:/orders/7"));
        let partition: u32 = subject.split('.').nth(2).unwrap().parse().unwrap();
        assert!(partition < 8);
        assert_eq!(subjects.partition_of("new:/orders/7"), partition);
        assert!(subject.starts_with(&subjects.partition(partition).replace('*', "")));
        assert_ne!(subject, subjects.of("new:/orders/8"));
        assert_eq!(subjects.partition_of_subject(&subject), Some(partition));
        assert_eq!(subjects.partition_of_subject("tandem.T2.1.00ff"), None);
        assert_eq!(subjects.partition_of_subject("tandem.T1-leases.1"), None);
        let wide = Subjects::new("T1", 16);
        let longest = (0..100)
            .map(|key| wide.of(&format!("new:/orders/{key}")).len())
            .max();
        assert_eq!(
            longest,
            Some(wide.longest()),
            "partitions 10 to 15 among them"
        );
    }

    #[test]
    fn the_hash_is_the_published_fnv1a() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
