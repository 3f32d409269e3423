//! The streams beside the journal's (`<stream>_leases`, `<stream>_holders`, `<stream>_parked`,
//! `<stream>_settled`): created at start, or checked when found, so that one made by hand or
//! by another build with settings that could lose what tandem relies on (kept in memory, a
//! bound that drops messages, other subjects or replicas) is refused in one line rather than
//! used.

use async_nats::jetstream::{self, stream};

use super::Failure;

/// Creates the side stream `wanted` describes, or finds it and checks that it keeps messages
/// as `wanted` says.
pub(crate) async fn open(
    jetstream: &jetstream::Context,
    wanted: stream::Config,
    what: &'static str,
) -> Result<stream::Stream, Failure> {
    let mut stream = jetstream
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|err| (what, err.to_string()))?;
    let found = stream
        .info()
        .await
        .map_err(|err| (what, err.to_string()))?
        .config
        .clone();
    check(&found, &wanted).map_err(|reason| (what, reason))?;
    Ok(stream)
}

/// Why a side stream found on the server does not keep messages as `wanted` says, if it does
/// not.
fn check(found: &stream::Config, wanted: &stream::Config) -> Result<(), String> {
    let name = &found.name;
    if found.subjects != wanted.subjects {
        return Err(format!(
            "stream {name} has subjects {:?}, not {:?}",
            found.subjects, wanted.subjects
        ));
    }
    if found.storage != wanted.storage {
        return Err(format!(
            "stream {name} is kept in memory: what it holds would not outlive a restart of the \
             server"
        ));
    }
    if found.num_replicas != wanted.num_replicas {
        return Err(format!(
            "stream {name} has {} replicas, not {}",
            found.num_replicas, wanted.num_replicas
        ));
    }
    if limit(found.max_messages) != limit(wanted.max_messages)
        || limit(found.max_bytes) != limit(wanted.max_bytes)
        || limit(found.max_messages_per_subject) != limit(wanted.max_messages_per_subject)
        || found.max_age != wanted.max_age
        || found.retention != wanted.retention
    {
        return Err(format!(
            "stream {name} keeps or drops messages otherwise than tandem made it (limits, \
             retention); delete it (`nats stream rm {name}`) for tandem to make it again"
        ));
    }
    Ok(())
}

/// A stream's limit as the server reports it: none (0, as the client sends it unset) is -1.
fn limit(value: i64) -> i64 {
    if value <= 0 {
        -1
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> stream::Config {
        stream::Config {
            name: "J_settled".to_owned(),
            subjects: vec!["tandem.J-settled".to_owned()],
            num_replicas: 1,
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }

    #[test]
    fn a_side_stream_made_as_wanted_serves() {
        assert_eq!(check(&wanted(), &wanted()), Ok(()));
        let as_reported = stream::Config {
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            ..wanted()
        };
        assert_eq!(
            check(&as_reported, &wanted()),
            Ok(()),
            "no limit either way"
        );
    }

    #[test]
    fn a_side_stream_that_could_lose_messages_is_refused_in_one_line_naming_why() {
        for (found, named) in [
            (
                stream::Config {
                    storage: stream::StorageType::Memory,
                    ..wanted()
                },
                "memory",
            ),
            (
                stream::Config {
                    max_bytes: 1 << 20,
                    ..wanted()
                },
                "limits",
            ),
            (
                stream::Config {
                    max_messages: 10,
                    ..wanted()
                },
                "limits",
            ),
            (
                stream::Config {
                    max_age: std::time::Duration::from_secs(60),
                    ..wanted()
                },
                "limits",
            ),
            (
                stream::Config {
                    num_replicas: 3,
                    ..wanted()
                },
                "replicas",
            ),
            (
                stream::Config {
                    subjects: vec!["other".to_owned()],
                    ..wanted()
                },
                "subjects",
            ),
        ] {
            let err = check(&found, &wanted()).unwrap_err();
            assert!(err.contains(named), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
