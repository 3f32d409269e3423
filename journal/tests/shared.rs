//! The shared journal against the machine's NATS server (JetStream at 127.0.0.1:4222): copies
//! appended before `append` returns, read back in order by the instance holding their
//! partition, settled by deletion, taken over by another instance when the first lets go.
//! Each test uses a stream of its own and removes it.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use tandem_journal::{JournalError, MirrorLog, SharedJournal, SharedSettings};
use tandem_testkit::{OwnNats, ReservedPort, ScratchStream, NATS};
use tokio::time::{sleep, Instant};

/// How long a condition is waited for before a test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// A JetStream context on the test server, to look at or change its streams behind the
/// journal's back.
async fn server() -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(NATS).await.unwrap())
}

/// The shared journal of `stream` opened as `instance`.
async fn opened(stream: &ScratchStream, instance: &str) -> SharedJournal {
    SharedJournal::open(settings(stream.name(), instance))
        .await
        .unwrap()
}

fn settings(stream: &str, instance: &str) -> SharedSettings {
    SharedSettings {
        url: NATS.to_owned(),
        stream: stream.to_owned(),
        replicas: 1,
        retention: Duration::ZERO,
        max_bytes: 64 << 20,
        partitions: 4,
        lease: Duration::from_secs(3),
        instance: instance.to_owned(),
        request_timeout: Duration::from_millis(200),
    }
}

async fn read_all(journal: &SharedJournal) -> Vec<(u64, Bytes)> {
    journal
        .unsettled_after(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|record| (record.seq, record.payload))
        .collect()
}

#[tokio::test]
async fn copies_come_back_in_order_until_settled_and_outlive_their_instance() {
    let stream = ScratchStream::new("T");
    let first = opened(&stream, "first").await;
    assert_eq!(
        first.partitions_held(),
        vec![0, 1, 2, 3],
        "the only instance holds all"
    );
    let mut seqs = Vec::new();
    for (key, payload) in [("new:/a", "a1"), ("new:/b", "b1"), ("new:/a", "a2")] {
        seqs.push(first.append(key, Bytes::from(payload), None).await.unwrap());
    }
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
    let read = read_all(&first).await;
    assert_eq!(
        read.iter()
            .map(|(_, payload)| payload.clone())
            .collect::<Vec<_>>(),
        ["a1", "b1", "a2"].map(Bytes::from)
    );
    first.settle(seqs[0]);
    assert_eq!(
        read_all(&first).await.len(),
        2,
        "a settled copy is not read again"
    );

    // Another instance finds every partition held; once the first lets go, it takes them
    // and reads what the first left.
    let second = opened(&stream, "second").await;
    assert!(second.partitions_held().is_empty());
    assert!(read_all(&second).await.is_empty());
    first.close().await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while second.partitions_held().len() < 4 {
        assert!(Instant::now() < deadline, "partitions not taken over");
        sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(second.ownership(), 0);
    let left: Vec<u64> = read_all(&second)
        .await
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(
        left,
        seqs[1..],
        "the settled copy was deleted, the rest outlived the first"
    );
    second.checkpoint().await.unwrap();
    assert_eq!(second.stats().unsettled, 2);
    second.close().await.unwrap();
}

/// A read that found nothing is not made again until the stream's end moves: a copy appended
/// since through another instance (which this one has no acknowledgement of) is read all the
/// same, as soon as it is stored.
#[tokio::test]
async fn a_read_that_found_nothing_still_finds_what_another_instance_appends_next() {
    let stream = ScratchStream::new("T");
    let reader = opened(&stream, "reader").await;
    let other = opened(&stream, "other").await;
    assert!(other.partitions_held().is_empty(), "the reader holds all");
    assert!(read_all(&reader).await.is_empty());
    assert!(read_all(&reader).await.is_empty(), "the same read again");
    for (n, key) in ["new:/a", "new:/b", "new:/c"].into_iter().enumerate() {
        let seq = other
            .append(key, Bytes::from(key.to_owned()), None)
            .await
            .unwrap();
        let read = read_all(&reader).await;
        assert_eq!(read.len(), n + 1, "{read:?}");
        assert_eq!(read.last().map(|(last, _)| *last), Some(seq));
    }
    other.close().await.unwrap();
    reader.close().await.unwrap();
}

/// An append whose acknowledgement was lost or late is tried again with the same bytes: the
/// stream keeps the copy once (a second copy would be delivered twice, and not every write is
/// idempotent). The same bytes through another instance are another copy.
#[tokio::test]
async fn an_append_tried_again_is_stored_once() {
    let stream = ScratchStream::new("T");
    let first = opened(&stream, "first").await;
    let payload = Bytes::from("POST /orders/7/charge, accepted at 1 seq 1");
    let seq = first
        .append("new:/orders/7", payload.clone(), None)
        .await
        .unwrap();
    let again = first
        .append("new:/orders/7", payload.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        again, seq,
        "the retry is acknowledged as the copy already stored"
    );
    assert_eq!(read_all(&first).await, vec![(seq, payload.clone())]);
    let other = opened(&stream, "other").await;
    let theirs = other
        .append("new:/orders/7", payload.clone(), None)
        .await
        .unwrap();
    assert!(theirs > seq);
    assert_eq!(read_all(&first).await.len(), 2);
}

#[tokio::test]
async fn partitions_are_shared_out_once_their_holder_has_drained() {
    let stream = ScratchStream::new("T");
    let first = opened(&stream, "first").await;
    assert_eq!(first.partitions_held().len(), 4);
    let second = opened(&stream, "second").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Each read from the start is a new pass of the first's reader, with nothing in
        // flight: partitions beyond its share can go.
        first.unsettled_after(0, 10).await.unwrap();
        second.unsettled_after(0, 10).await.unwrap();
        let (one, two) = (first.partitions_held(), second.partitions_held());
        if one.len() == 2 && two.len() == 2 {
            assert!(
                one.iter().all(|partition| !two.contains(partition)),
                "{one:?} {two:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not shared out: {one:?} {two:?}");
        sleep(Duration::from_millis(100)).await;
    }
    second.close().await.unwrap();
    first.close().await.unwrap();
}

#[tokio::test]
async fn an_instance_with_other_partitions_is_refused_in_one_line() {
    let stream = ScratchStream::new("T");
    let first = opened(&stream, "first").await;
    let other = SharedSettings {
        partitions: 8,
        ..settings(stream.name(), "second")
    };
    let err = SharedJournal::open(other).await.unwrap_err();
    assert!(matches!(err, JournalError::Nats { .. }), "{err}");
    assert!(err.to_string().contains("partitions"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    first.close().await.unwrap();
}

/// A stream of the journal's name made by hand with a bound of its own (at which the server
/// drops the oldest copies), or kept in memory (lost on a restart of the server), is refused.
#[tokio::test]
async fn a_stream_that_could_drop_copies_is_refused_in_one_line() {
    let jetstream = server().await;
    for (config, named) in [
        (
            async_nats::jetstream::stream::Config {
                max_bytes: 1 << 20,
                ..Default::default()
            },
            "bound",
        ),
        (
            async_nats::jetstream::stream::Config {
                max_age: Duration::from_secs(3600),
                ..Default::default()
            },
            "maximum age",
        ),
        (
            async_nats::jetstream::stream::Config {
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            },
            "memory",
        ),
    ] {
        let stream = ScratchStream::new("T");
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.name().to_owned(),
                description: Some("tandem mirror journal, 4 partitions".to_owned()),
                subjects: vec![format!("tandem.{}.>", stream.name())],
                discard: async_nats::jetstream::stream::DiscardPolicy::New,
                ..config
            })
            .await
            .unwrap();
        let err = SharedJournal::open(settings(stream.name(), "only"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(named), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}

/// A stream beside the journal's (here the record of settled copies) made by hand in memory,
/// where it would not outlive a restart of the server, is refused in one line naming it.
#[tokio::test]
async fn a_side_stream_kept_in_memory_is_refused_in_one_line() {
    let jetstream = server().await;
    let stream = ScratchStream::new("T");
    let side = format!("{}_settled", stream.name());
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: side.clone(),
            subjects: vec![format!("tandem.{}-settled", stream.name())],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    let err = SharedJournal::open(settings(stream.name(), "only"))
        .await
        .unwrap_err();
    let said = err.to_string();
    assert!(said.contains(&side) && said.contains("memory"), "{said}");
    assert!(!said.contains('\n'), "{said}");
}

/// The stream is created as configured (replicas, file storage, no age or byte bound on the
/// server); an instance configured to keep copies otherwise than the stream found is refused
/// at start in one line, rather than run with settings it was not given.
#[tokio::test]
async fn the_stream_is_created_as_configured_and_checked_at_start() {
    let stream = ScratchStream::new("T");
    let first = SharedJournal::open(SharedSettings {
        retention: Duration::from_secs(3600),
        ..settings(stream.name(), "first")
    })
    .await
    .unwrap();
    let mut created = server().await.get_stream(stream.name()).await.unwrap();
    let config = created.info().await.unwrap().config.clone();
    assert_eq!(config.num_replicas, 1);
    assert_eq!(
        config.max_age,
        Duration::ZERO,
        "the readers keep the retention: the server would delete copies without a trace"
    );
    assert_eq!(
        config.max_bytes, -1,
        "the instances keep the bound: the server would drop copies at its own"
    );
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::File,
        "copies outlive a restart of the server"
    );
    let err = SharedJournal::open(SharedSettings {
        replicas: 3,
        ..settings(stream.name(), "second")
    })
    .await
    .unwrap_err();
    assert!(matches!(err, JournalError::Nats { .. }), "{err}");
    assert!(err.to_string().contains("replicas"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
    first.close().await.unwrap();
}

/// A copy left undelivered past the retention stays in the stream (the server deletes nothing
/// by age: the copy and its key would be gone without a trace) and is read back with the time
/// it was stored, for the reader to keep it elsewhere, loudly (the proxy's worker).
#[tokio::test]
async fn a_copy_past_the_retention_is_read_back_never_dropped_by_the_server() {
    let stream = ScratchStream::new("T");
    let retention = Duration::from_secs(1);
    let journal = SharedJournal::open(SharedSettings {
        retention,
        ..settings(stream.name(), "only")
    })
    .await
    .unwrap();
    assert_eq!(journal.retention(), Some(retention));
    let seq = journal
        .append("new:/a", Bytes::from("a1"), None)
        .await
        .unwrap();
    // Past the retention, and past the server's next sweep of expired messages.
    sleep(retention * 3).await;
    let read = journal.unsettled_after(0, 10).await.unwrap();
    assert_eq!(
        read.iter().map(|record| record.seq).collect::<Vec<_>>(),
        vec![seq],
        "the copy is gone from the stream"
    );
    let waited = read[0].appended_at.elapsed().unwrap_or_default();
    assert!(waited > retention, "read back as stored {waited:?} ago");
    journal.close().await.unwrap();
}

/// A copy larger than the server takes in one message (its `max_payload`, 1 MiB by default)
/// is refused before the write, as such: never tried, so never failing appends (which would
/// refuse every other write while they fail).
#[tokio::test]
async fn a_copy_larger_than_the_server_takes_is_refused_as_too_large() {
    let stream = ScratchStream::new("T");
    let journal = opened(&stream, "only").await;
    assert_eq!(
        journal.reserve(2 * 1024 * 1024).err(),
        Some(tandem_journal::Refusal::TooLarge)
    );
    assert!(journal.reserve(64 * 1024).is_ok(), "a copy it takes");
}

#[tokio::test]
async fn a_full_stream_refuses_reservations() {
    let stream = ScratchStream::new("T");
    let journal = SharedJournal::open(SharedSettings {
        max_bytes: 4096,
        ..settings(stream.name(), "only")
    })
    .await
    .unwrap();
    assert!(
        journal.reserve(8192).is_err(),
        "more than the stream may hold"
    );
    let held = journal.reserve(1000).unwrap();
    assert!(journal.room() < 4096 - 1000);
    drop(held);
    let mut appended = 0;
    for copy in 0..10_u8 {
        // Copies differ (as a proxy's always do): the same bytes again would be one copy.
        let payload = Bytes::from(vec![copy; 1000]);
        let Ok(room) = journal.reserve(1000) else {
            break;
        };
        journal.append("new:/a", payload, None).await.unwrap();
        drop(room);
        appended += 1;
    }
    assert_eq!(
        appended, 3,
        "three copies of 1000 bytes and their overhead fit"
    );
    journal.close().await.unwrap();
}

/// A copy's room is promised by its reservation, as a proxy takes it before the authoritative
/// side sees the write: a stream filled one small copy at a time (its subject, headers and the
/// server's bookkeeping outweighing the payload) refuses a reservation before the server's
/// bound is reached, and every copy appended is still there. (At its bound a NATS 2.9 server
/// stores a message whose payload and headers fit but whose subject and record do not, and
/// drops the stream's oldest message to make room, discard policy `new` notwithstanding:
/// an undelivered copy lost without a word.)
#[tokio::test]
async fn a_stream_filled_copy_by_copy_refuses_the_reservation_before_the_append() {
    let stream = ScratchStream::new("T");
    let journal = SharedJournal::open(SharedSettings {
        max_bytes: 16 * 1024,
        ..settings(stream.name(), "only")
    })
    .await
    .unwrap();
    let mut refused = None;
    for copy in 0..1000_u64 {
        let payload = Bytes::from(format!("PUT /orders/{copy}"));
        let Ok(room) = journal.reserve(payload.len() as u64) else {
            refused = Some(copy);
            break;
        };
        let mark = journal.mark().await.unwrap();
        if let Err(err) = journal
            .append(&format!("new:/orders/{copy}"), payload, mark)
            .await
        {
            panic!("copy {copy} had its room promised, and its append failed: {err}");
        }
        drop(room);
    }
    assert!(refused.is_some_and(|copy| copy > 10), "{refused:?}");
    let kept: Vec<Bytes> = journal
        .unsettled_after(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.payload)
        .collect();
    let appended: Vec<Bytes> = (0..refused.unwrap_or(0))
        .map(|copy| Bytes::from(format!("PUT /orders/{copy}")))
        .collect();
    assert_eq!(kept, appended, "copies dropped from the stream");
    journal.close().await.unwrap();
}

/// Two instances filling the stream together each see the other's copies only at their next
/// reading of the stream's numbers (a checkpoint, once a second in a proxy): between two, the
/// fleet may go past the bound. Past it, no copy acknowledged is ever dropped to make room.
#[tokio::test]
async fn instances_filling_the_stream_together_never_lose_a_copy() {
    let stream = ScratchStream::new("T");
    let bounded = |instance| SharedSettings {
        max_bytes: 16 * 1024,
        ..settings(stream.name(), instance)
    };
    let first = SharedJournal::open(bounded("first")).await.unwrap();
    let second = SharedJournal::open(bounded("second")).await.unwrap();
    let mut appended = Vec::new();
    let mut refused = [false, false];
    for copy in 0..1000_u64 {
        let which = usize::from(copy % 2 == 1);
        let journal = [&first, &second][which];
        let payload = Bytes::from(format!("PUT /orders/{copy}"));
        let Ok(room) = journal.reserve(payload.len() as u64) else {
            refused[which] = true;
            if refused == [true, true] {
                break;
            }
            continue;
        };
        let mark = journal.mark().await.unwrap();
        if let Err(err) = journal
            .append(&format!("new:/orders/{copy}"), payload.clone(), mark)
            .await
        {
            panic!("copy {copy} had its room promised, and its append failed: {err}");
        }
        appended.push(payload);
        drop(room);
    }
    assert_eq!(refused, [true, true]);
    assert!(second.partitions_held().is_empty(), "the first holds all");
    let kept: Vec<Bytes> = first
        .unsettled_after(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.payload)
        .collect();
    assert_eq!(kept, appended, "copies dropped from the stream");
    second.close().await.unwrap();
    first.close().await.unwrap();
}

#[tokio::test]
async fn a_copy_appended_through_another_instance_during_a_write_is_a_conflict() {
    let stream = ScratchStream::new("T");
    let reader = opened(&stream, "reader").await;
    let other = opened(&stream, "other").await;
    // One after the other: the second write began after the first copy was appended.
    let mark = reader.mark().await.unwrap();
    let one = reader
        .append("new:/a", Bytes::from("1"), mark)
        .await
        .unwrap();
    let mark = other.mark().await.unwrap();
    let two = other
        .append("new:/a", Bytes::from("2"), mark)
        .await
        .unwrap();
    // At once: both writes began before either copy was appended.
    let (mark_reader, mark_other) = (reader.mark().await.unwrap(), other.mark().await.unwrap());
    let three = reader
        .append("new:/b", Bytes::from("3"), mark_reader)
        .await
        .unwrap();
    let four = other
        .append("new:/b", Bytes::from("4"), mark_other)
        .await
        .unwrap();
    // The same instance twice is ordered by its key lock, never a conflict.
    let mark = reader.mark().await.unwrap();
    let five = reader
        .append("new:/c", Bytes::from("5"), mark)
        .await
        .unwrap();
    let six = reader
        .append("new:/c", Bytes::from("6"), mark)
        .await
        .unwrap();
    assert_eq!(reader.unsettled_after(0, 100).await.unwrap().len(), 6);
    let conflicts: Vec<u64> = [one, two, three, four, five, six]
        .into_iter()
        .filter(|seq| reader.take_conflict(*seq))
        .collect();
    assert_eq!(conflicts, [four]);
    assert!(!reader.take_conflict(four), "asked once");
    other.close().await.unwrap();
    reader.close().await.unwrap();
}

/// A NATS server of its own, without JetStream, on a loopback port reserved for it (no other
/// test takes it before the server listens); killed on drop.
struct PlainServer {
    process: Child,
    _port: ReservedPort,
    url: String,
}

impl PlainServer {
    fn start() -> PlainServer {
        let port = ReservedPort::new();
        let process = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        PlainServer {
            process,
            url: format!("nats://{}", port.address()),
            _port: port,
        }
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A key parked through one instance is seen parked by another, by its marker and in the
/// changes; a release at an older marker's revision leaves the newer marker; a release at the
/// newest frees the key, and the changes say so after the markers.
#[tokio::test]
async fn a_key_parked_through_one_instance_is_parked_for_every_instance_until_released() {
    let stream = ScratchStream::new("P");
    let first = opened(&stream, "first").await;
    let second = opened(&stream, "second").await;
    assert_eq!(second.parked("new:/a").await.unwrap(), None);
    let older = first.park("new:/a").await.unwrap().unwrap();
    let newer = first.park("new:/a").await.unwrap().unwrap();
    let other = first.park("old:/b").await.unwrap().unwrap();
    assert!(older < newer && newer < other);
    assert_eq!(second.parked("new:/a").await.unwrap(), Some(newer));
    assert_eq!(
        second.parked("new:/b").await.unwrap(),
        None,
        "by side and key"
    );

    let changes = second.park_changes(0, 100).await.unwrap();
    let seen: Vec<(u64, &str, bool)> = changes
        .iter()
        .map(|change| (change.seq, change.key.as_str(), change.parked))
        .collect();
    assert_eq!(seen, [(newer, "new:/a", true), (other, "old:/b", true)]);

    assert!(
        !second.unpark("new:/a", older).await.unwrap(),
        "a release at an older marker leaves the newer"
    );
    assert_eq!(first.parked("new:/a").await.unwrap(), Some(newer));
    assert!(second.unpark("new:/a", newer).await.unwrap());
    assert_eq!(first.parked("new:/a").await.unwrap(), None);
    let after = first.park_changes(other, 100).await.unwrap();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].key, "new:/a");
    assert!(!after[0].parked);
    first.close().await.unwrap();
    second.close().await.unwrap();
}

#[tokio::test]
async fn a_server_without_jetstream_is_named_in_one_line() {
    let server = PlainServer::start();
    let deadline = Instant::now() + PATIENCE;
    let err = loop {
        match SharedJournal::open(SharedSettings {
            url: server.url.clone(),
            ..settings("NOJS", "only")
        })
        .await
        {
            Err(JournalError::Nats {
                what: "connect", ..
            }) if Instant::now() < deadline => {
                sleep(Duration::from_millis(100)).await;
            }
            other => break other.unwrap_err(),
        }
    };
    assert!(matches!(err, JournalError::NoJetStream { .. }), "{err}");
    assert!(err.to_string().contains("-js"), "{err}");
    assert!(!err.to_string().contains('\n'), "{err}");
}

/// The published 64-bit FNV-1a, as `subject.rs` spreads keys over partitions.
fn partition_of(key: &str, partitions: u64) -> u32 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    u32::try_from(hash % partitions).unwrap()
}

/// Review: a read by partition that fills its batch must not pass over a copy of the
/// partition whose head was being settled when the batch had one slot left.
#[tokio::test]
async fn a_batch_read_by_partition_never_passes_over_a_copy() {
    let stream = ScratchStream::new("T");
    let first = opened(&stream, "first").await;
    let second = opened(&stream, "second").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        first.unsettled_after(0, 10).await.unwrap();
        second.unsettled_after(0, 10).await.unwrap();
        if first.partitions_held().len() == 2 && second.partitions_held().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not shared out");
        sleep(Duration::from_millis(100)).await;
    }
    let held = first.partitions_held();
    let mut copies = Vec::new();
    for i in 0..200 {
        let key = format!("new:/k{i}");
        let seq = first
            .append(&key, Bytes::from(i.to_string()), None)
            .await
            .unwrap();
        let partition = partition_of(&key, 4);
        if held.contains(&partition) {
            copies.push((seq, partition));
        }
    }
    // Two copies of one partition in a row, with a later copy of the other partition.
    let j = (0..copies.len() - 5)
        .find(|&j| {
            copies[j + 3].1 == copies[j + 4].1
                && copies[j + 5..].iter().any(|c| c.1 != copies[j + 3].1)
        })
        .unwrap();
    // Deletions queued ahead, so that copy j+3 is still being settled when the batch is read.
    for bogus in 0..20_000 {
        first.settle(10_000_000 + bogus);
    }
    first.settle(copies[j + 3].0);
    let read: Vec<u64> = first
        .unsettled_after(copies[j].0 - 1, 4)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.seq)
        .collect();
    let expected = vec![
        copies[j].0,
        copies[j + 1].0,
        copies[j + 2].0,
        copies[j + 4].0,
    ];
    assert_eq!(read, expected, "copy {} passed over", copies[j + 4].0);
    drop(second);
    drop(first);
}

/// A loopback relay to the NATS server that can be cut (every connection dropped, new ones
/// refused) and restored: one instance loses the server while the others keep it.
struct Relay {
    url: String,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start() -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (accepting, held) = (up.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accepting.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let link = tokio::spawn(async move {
                    let address = NATS.trim_start_matches("nats://");
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(address).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(link);
            }
        });
        Relay { url, up, links }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Review: an append that failed while its instance had lost the server (the write then
/// answered as not mirrored) and is stored later, on reconnection, behind a newer copy of its
/// key appended through another instance, is never delivered blindly: it is read as a
/// conflict, so that its key is rechecked.
#[tokio::test]
async fn an_append_that_failed_and_is_stored_later_is_read_as_a_conflict() {
    let stream = ScratchStream::new("T");
    let relay = Relay::start().await;
    let cut_off = SharedJournal::open(SettingsThrough::url(&relay.url, stream.name(), "cut-off"))
        .await
        .unwrap();
    let other = opened(&stream, "other").await;
    relay.cut();
    sleep(Duration::from_millis(300)).await;
    // The proxy tries for 5 s (APPEND_RETRY_FOR), then records the write as not mirrored.
    let failed = cut_off.append("new:/k", Bytes::from("v1"), None).await;
    assert!(failed.is_err(), "the server is out of reach: {failed:?}");
    // The client, answered, writes the key again through another instance.
    let newer = other
        .append("new:/k", Bytes::from("v2"), None)
        .await
        .unwrap();
    // Past the failed try's deadline and the clock skew allowed.
    sleep(Duration::from_secs(1)).await;
    relay.restore();
    // The queued publish is sent on reconnection: whoever holds the key's partition reads it.
    let deadline = Instant::now() + PATIENCE;
    let (reader, late) = 'found: loop {
        for journal in [&cut_off, &other] {
            let read = journal.unsettled_after(0, 100).await.unwrap_or_default();
            if let Some(late) = read.iter().find(|record| record.payload == "v1") {
                break 'found (journal, late.seq);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the failed append was never stored"
        );
        sleep(Duration::from_millis(100)).await;
    };
    assert!(late > newer, "stored behind the newer copy");
    assert!(
        reader.take_conflict(late),
        "the late copy would be delivered over the newer one unchecked"
    );
}

struct SettingsThrough;

impl SettingsThrough {
    fn url(url: &str, stream: &str, instance: &str) -> SharedSettings {
        SharedSettings {
            url: url.to_owned(),
            ..settings(stream, instance)
        }
    }
}

/// Waits until the stream holds `copies` copies, as `journal` reads it.
async fn holds_copies(journal: &SharedJournal, copies: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if journal.checkpoint().await.is_ok() && journal.stats().unsettled == copies {
            return;
        }
        assert!(Instant::now() < deadline, "{:?}", journal.stats());
        sleep(Duration::from_millis(20)).await;
    }
}

/// Copies `from` (a directory) to `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A NATS 2.9 server killed (SIGKILL) and restarted forgets deletions it acknowledged (copies
/// deleted out of order come back; its appends survive): here the stream's files from before
/// the deletions are put back while the server is down, the other streams' kept (the
/// stream's first sequence goes back with them). A copy
/// settled before is never read back all the same, by the instance taking over the partitions
/// of the one that settled it; what was not settled is read back, each copy once, and the
/// copies that came back are deleted again.
#[tokio::test]
async fn copies_settled_before_the_server_forgot_their_deletion_are_never_read_back() {
    let mut nats = OwnNats::start().await;
    let url = nats.url();
    let on_own = |instance: &str| SharedSettings {
        url: url.clone(),
        ..settings("KILLED", instance)
    };
    let first = SharedJournal::open(on_own("first")).await.unwrap();
    let mut seqs = Vec::new();
    for copy in 0..400 {
        let key = format!("new:/k{}", copy % 40);
        let payload = Bytes::from(format!("c{copy}"));
        seqs.push(first.append(&key, payload, None).await.unwrap());
    }
    let files = nats.stream_dir("KILLED");
    let before = tempfile::tempdir().unwrap();
    nats.kill();
    copy_dir(&files, before.path());
    nats.restart().await;
    // The first 100 copies settled, which moves the stream's first sequence, then every other
    // one, each deletion leaving a gap behind the first copy.
    let (settled, left): (Vec<u64>, Vec<u64>) = seqs
        .iter()
        .partition(|seq| **seq <= seqs[99] || *seq % 2 == 0);
    for &seq in &settled {
        first.settle(seq);
    }
    holds_copies(&first, 150).await;
    let owned = first.ownership();
    nats.kill();
    std::fs::remove_dir_all(&files).unwrap();
    copy_dir(before.path(), &files);
    nats.restart().await;
    holds_copies(&first, 400).await;
    assert_ne!(
        first.ownership(),
        owned,
        "a restart of the server starts a pass from the beginning"
    );
    // Copies brought back hold no key and do not count as unsettled: every copy of k1 was
    // settled; the first copy unsettled is the 101st, once those before are deleted again.
    assert!(!first.holds("new:/k1").await.unwrap());
    let deadline = Instant::now() + PATIENCE;
    while first.first_unsettled().await.unwrap() != Some(left[0]) {
        assert!(Instant::now() < deadline, "settled copies still ahead");
        sleep(Duration::from_millis(50)).await;
    }
    first.close().await.unwrap();

    let second = SharedJournal::open(on_own("second")).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while second.partitions_held().len() < 4 {
        assert!(Instant::now() < deadline, "partitions not taken over");
        sleep(Duration::from_millis(100)).await;
    }
    let mut read = Vec::new();
    let mut after = 0;
    loop {
        let batch = second.unsettled_after(after, 64).await.unwrap();
        let Some(last) = batch.last() else { break };
        after = last.seq;
        read.extend(batch.into_iter().map(|record| record.seq));
    }
    assert_eq!(read, left, "settled copies read back");
    holds_copies(&second, 150).await;
    second.close().await.unwrap();
}

/// The record of settled copies deleted by hand while an instance runs is made again at the
/// next settlement, which is then recorded and its copy deleted: deletions are not held back
/// for good.
#[tokio::test]
async fn a_record_stream_deleted_by_hand_is_made_again() {
    let stream = ScratchStream::new("T");
    let journal = opened(&stream, "only").await;
    let seq = journal
        .append("new:/a", Bytes::from("a1"), None)
        .await
        .unwrap();
    let jetstream = server().await;
    let record = format!("{}_settled", stream.name());
    jetstream.delete_stream(&record).await.unwrap();
    journal.settle(seq);
    holds_copies(&journal, 0).await;
    let mut made = jetstream.get_stream(&record).await.unwrap();
    assert!(made.info().await.unwrap().state.messages >= 1);
    journal.close().await.unwrap();
}

/// The lease fences when a copy is sent, not when the other side applies it: an instance cut
/// off from the server (not from the other side) may still have a request on its way when its
/// lease expires. The partitions taken from it are read by their next holder only once that
/// instance's request timeout has passed since they were taken, never at once.
#[tokio::test]
async fn partitions_taken_from_an_instance_whose_lease_expired_wait_for_its_requests() {
    let stream = ScratchStream::new("T");
    let relay = Relay::start().await;
    let cut_off = SharedJournal::open(SharedSettings {
        request_timeout: Duration::from_secs(600),
        ..SettingsThrough::url(&relay.url, stream.name(), "cut-off")
    })
    .await
    .unwrap();
    assert_eq!(cut_off.partitions_held().len(), 4);
    let next = opened(&stream, "next").await;
    assert!(next.partitions_held().is_empty(), "every partition is held");
    relay.cut();
    // The cut-off instance's leases expire; the next one takes them.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let backlog = next.partitions_backlog().await.unwrap();
        if backlog
            .iter()
            .all(|partition| partition.holder.as_deref() == Some("next"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "not taken over: {backlog:?}");
        sleep(Duration::from_millis(100)).await;
    }
    assert!(
        next.partitions_held().is_empty(),
        "partitions read while the cut-off instance's requests may still be on their way"
    );
    let seq = next
        .append("new:/a", Bytes::from("a1"), None)
        .await
        .unwrap();
    assert!(
        next.unsettled_after(0, 10).await.unwrap().is_empty(),
        "copy {seq} handed on while the cut-off instance's requests may still be on their way"
    );
    next.close().await.unwrap();
    relay.restore();
    drop(cut_off);
}

/// Waits until `journal`'s instance, `name`, holds the lease of every partition.
async fn taken_over(journal: &SharedJournal, name: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let backlog = journal.partitions_backlog().await.unwrap();
        if backlog
            .iter()
            .all(|partition| partition.holder.as_deref() == Some(name))
        {
            return;
        }
        assert!(Instant::now() < deadline, "not taken over: {backlog:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// Review: a holder that took partitions from an expired one and let them go before its wait
/// ended passes the rest of that wait on. The next holder waits for the first one's requests,
/// not only for its own predecessor's (far shorter) timeout.
#[tokio::test]
async fn a_wait_inherited_and_not_served_passes_to_the_next_holder() {
    let stream = ScratchStream::new("T");
    let relay = Relay::start().await;
    let cut_off = SharedJournal::open(SharedSettings {
        request_timeout: Duration::from_secs(600),
        ..SettingsThrough::url(&relay.url, stream.name(), "cut-off")
    })
    .await
    .unwrap();
    assert_eq!(cut_off.partitions_held().len(), 4);
    let middle = opened(&stream, "middle").await;
    relay.cut();
    taken_over(&middle, "middle").await;
    assert_eq!(middle.partitions_waiting().len(), 4);
    // Given back while the cut-off instance's requests may still be on their way.
    middle.close().await.unwrap();
    let last = opened(&stream, "last").await;
    taken_over(&last, "last").await;
    // Five times the middle and last instances' own timeouts (200 ms).
    sleep(Duration::from_secs(1)).await;
    assert!(
        last.partitions_held().is_empty(),
        "partitions read while the cut-off instance's requests may still be on their way"
    );
    assert_eq!(last.partitions_waiting().len(), 4);
    last.close().await.unwrap();
    relay.restore();
    drop(cut_off);
}

/// Review: a partition whose previous holder left no record of its requests (a rolling upgrade
/// from a build that wrote none, a record without its timeout) is not read at once: the next
/// holder waits its own longest request, the previous one's being unknown.
#[tokio::test]
async fn a_partition_taken_without_a_record_of_its_holder_waits_this_instances_timeout() {
    let stream = ScratchStream::new("T");
    let relay = Relay::start().await;
    let cut_off = SharedJournal::open(SettingsThrough::url(&relay.url, stream.name(), "cut-off"))
        .await
        .unwrap();
    assert_eq!(cut_off.partitions_held().len(), 4);
    // The records gone, as with holders of a build that wrote none.
    let jetstream = server().await;
    let holders = format!("{}_holders", stream.name());
    jetstream.delete_stream(&holders).await.unwrap();
    let next = SharedJournal::open(SharedSettings {
        request_timeout: Duration::from_secs(600),
        ..settings(stream.name(), "next")
    })
    .await
    .unwrap();
    // Two partitions with a record that names no timeout.
    for partition in [0, 1] {
        jetstream
            .publish(
                format!("tandem.{}-holders.{partition}", stream.name()),
                Bytes::from("cut-off"),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    relay.cut();
    taken_over(&next, "next").await;
    assert!(
        next.partitions_held().is_empty(),
        "partitions read while their previous holder's requests may still be on their way"
    );
    assert_eq!(next.partitions_waiting().len(), 4);
    next.close().await.unwrap();
    relay.restore();
    drop(cut_off);
}

/// Sets the largest message `stream` takes (`-1`: no bound of its own).
async fn largest_message(stream: &str, bytes: i32) {
    let jetstream = server().await;
    let mut config = jetstream
        .get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.max_message_size = bytes;
    jetstream.update_stream(config).await.unwrap();
}

/// A copy this instance settled whose settlement is not yet recorded (the record stream
/// refuses every message meanwhile) keeps its key held for the cutover hold: were the
/// instance's lease to lapse before the record, the copy would be left to the next holder and
/// delivered again, so a write let through to its side meanwhile would be overwritten. Once
/// recorded, it holds nothing.
#[tokio::test]
async fn a_settlement_not_yet_recorded_keeps_its_key_held() {
    let stream = ScratchStream::new("T");
    let holder = opened(&stream, "holder").await;
    assert_eq!(holder.partitions_held().len(), 4);
    let first = holder
        .append("new:/first", Bytes::from("f1"), None)
        .await
        .unwrap();
    let key = holder
        .append("new:/key", Bytes::from("k1"), None)
        .await
        .unwrap();
    let read: Vec<u64> = read_all(&holder)
        .await
        .iter()
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(read, vec![first, key]);
    let record = format!("{}_settled", stream.name());
    largest_message(&record, 1).await;
    // The first settlement's record is tried again and again; the second waits behind it.
    holder.settle(first);
    holder.settle(key);
    assert!(
        holder.holds("new:/key").await.unwrap(),
        "a copy whose settlement is not recorded is taken for delivered"
    );
    largest_message(&record, -1).await;
    let deadline = Instant::now() + PATIENCE;
    while holder.holds("new:/key").await.unwrap() {
        assert!(Instant::now() < deadline, "still held once recorded");
        sleep(Duration::from_millis(100)).await;
    }
    holder.close().await.unwrap();
}

/// A copy gone from the stream without a settlement in the record (a NATS 2.9.10 server
/// restarted after a kill was seen to lose copies still being delivered; here it is deleted
/// behind the journal's back) is not taken for delivered: the hold that saw it keeps its key
/// held and the cutover window's first unsettled copy stays at it, until the instance
/// delivering it records its settlement. Taken for delivered (as before), a write let through
/// would be overwritten by the copy still on its way.
#[tokio::test]
async fn a_copy_gone_from_the_stream_unrecorded_keeps_its_key_held_and_the_window_open() {
    let stream = ScratchStream::new("T");
    let holder = opened(&stream, "holder").await;
    let key = holder
        .append("new:/key", Bytes::from("k1"), None)
        .await
        .unwrap();
    assert_eq!(read_all(&holder).await.len(), 1);
    assert!(
        holder.holds("new:/key").await.unwrap(),
        "seen in the stream"
    );
    server()
        .await
        .get_stream(stream.name())
        .await
        .unwrap()
        .delete_message(key)
        .await
        .unwrap();
    assert!(
        holder.holds("new:/key").await.unwrap(),
        "a copy gone from the stream unrecorded is taken for delivered"
    );
    assert!(
        holder
            .first_unsettled()
            .await
            .unwrap()
            .is_some_and(|first| first <= key),
        "the window would close over a copy gone unrecorded"
    );
    assert_eq!(
        holder.fleet().map(|fleet| fleet.copies_lost),
        Some(1),
        "the copy the server lost is not counted"
    );
    holder.settle(key);
    let deadline = Instant::now() + PATIENCE;
    while holder.holds("new:/key").await.unwrap()
        || holder.first_unsettled().await.unwrap().is_some()
    {
        assert!(Instant::now() < deadline, "still held once recorded");
        sleep(Duration::from_millis(100)).await;
    }
    holder.close().await.unwrap();
}

/// A race across a takeover (issue 19): a copy of `/a` through "first" is delivered and
/// deleted by "first", which then lets its partitions go; "second" takes them and reads a
/// copy of `/a` through itself whose write began (its mark) before the first copy was
/// appended. That is a race, though "second" never read the first copy: the record of settled
/// copies says where it came from. A later copy of `/a` whose write began after is none.
#[tokio::test]
async fn a_race_with_a_copy_the_previous_holder_delivered_is_a_conflict() {
    let stream = ScratchStream::new("T");
    let first = opened(&stream, "first").await;
    let before_first = first.mark().await.unwrap();
    let one = first
        .append("new:/a", Bytes::from("1"), first.mark().await.unwrap())
        .await
        .unwrap();
    assert_eq!(read_all(&first).await.len(), 1);
    first.settle(one);
    first.close().await.unwrap();
    let message = server()
        .await
        .get_stream(stream.name())
        .await
        .unwrap()
        .get_raw_message(one)
        .await;
    assert!(
        message.is_err(),
        "the delivered copy is still in the stream"
    );
    let second = opened(&stream, "second").await;
    let deadline = Instant::now() + PATIENCE;
    while second.partitions_held().len() < 4 {
        assert!(Instant::now() < deadline, "partitions not taken over");
        sleep(Duration::from_millis(100)).await;
    }
    let raced = second
        .append("new:/a", Bytes::from("2"), before_first)
        .await
        .unwrap();
    let after = second
        .append("new:/a", Bytes::from("3"), second.mark().await.unwrap())
        .await
        .unwrap();
    let read: Vec<u64> = read_all(&second)
        .await
        .into_iter()
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(read, [raced, after]);
    assert!(
        second.take_conflict(raced),
        "the race with the copy the previous holder delivered went unnoticed"
    );
    assert!(!second.take_conflict(after));
    second.close().await.unwrap();
}
