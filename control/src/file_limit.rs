//! The process's limit of open files, raised at start: every client connection, upstream
//! connection and journal segment is one, and a proxy that runs out answers nobody.

/// Raises the soft limit of open files to the hard limit, and returns the limit in force
/// (`None` where the platform has none tandem can read).
#[must_use]
pub fn raise_open_files_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            metrics::gauge!("tandem_open_files_limit").set(u64_to_f64(limit));
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read or raise the limit of open files");
            None
        }
    }
}

#[allow(clippy::cast_precision_loss)]
fn u64_to_f64(value: u64) -> f64 {
    value as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let raised = raise_open_files_limit().expect("a limit on Linux");
        let (soft, hard) = rlimit::Resource::NOFILE.get().expect("readable");
        assert_eq!(raised, soft);
        assert_eq!(soft, hard);
    }
}
