//! Reading a connection in bursts: a replication stream's walsender sends every change as a
//! message of its own, and a socket read as each arrives wakes its reader once per change.
//! Lingering, the socket's receive low-water mark (`SO_RCVLOWAT`) is half a read buffer, so
//! the kernel wakes the reader only once that much waits; a read that has waited its linger
//! (or is hurried, [`Hurry`]) lowers the mark to one byte, which wakes it at once when
//! anything waits (Linux re-checks the mark as it is set, since 4.18), and takes what has
//! arrived. The next read raises the mark again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tandem_control::Side;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::lsn::Lsn;
use crate::stream::ServerStream;

/// The receive low-water mark while lingering: half the replication stream's read buffer.
pub(crate) const LOW_WATER: i32 = 32 * 1024;

/// Tells a lingering stream not to linger until it has received the log up to a position:
/// someone waits for a marker that was just written there (a compared read after writes, a
/// change of authoritative side). The current linger ends at once.
#[derive(Debug, Clone)]
pub struct Hurry(Arc<watch::Sender<Lsn>>);

impl Default for Hurry {
    fn default() -> Hurry {
        Hurry(Arc::new(watch::channel(Lsn(0)).0))
    }
}

impl Hurry {
    /// Reads take what has arrived as it arrives until the stream has received `position`.
    pub fn through(&self, position: Lsn) {
        self.0.send_if_modified(|through| {
            let later = position > *through;
            if later {
                *through = position;
            }
            later
        });
    }
}

/// Set once a kernel refused to lower the mark: no connection lingers from then on (each
/// would end at its first lowering, and the capture start over, again and again).
static LOWERING_REFUSED: AtomicBool = AtomicBool::new(false);

/// A connection's lingering: how long, and where it stands.
#[derive(Debug)]
pub(crate) struct Linger {
    side: Side,
    wait: Duration,
    /// Keeps the [`Hurry`] alive, so that `hurried` always has a sender.
    _hurry: Hurry,
    /// The position reads are hurried through.
    hurried: watch::Receiver<Lsn>,
    /// When the current read stops waiting for a half buffer (kept across a cancelled read,
    /// so that cancelling and reading again does not wait afresh).
    until: Option<Instant>,
    /// The mark set now.
    low_water: i32,
    /// How far the stream has received (for [`Hurry`]).
    received: Lsn,
    /// The kernel refused the mark: reads take every message as it arrives.
    off: bool,
}

impl Linger {
    /// Lingering of `wait` for the connection to `side`, hurried by `hurry`; `None` on a
    /// kernel whose lowered mark would not wake the reader.
    pub(crate) fn new(side: Side, wait: Duration, hurry: Hurry) -> Option<Linger> {
        (low_water_wakes() && !LOWERING_REFUSED.load(Ordering::SeqCst)).then_some(Linger {
            side,
            wait,
            hurried: hurry.0.subscribe(),
            _hurry: hurry,
            until: None,
            low_water: 1,
            received: Lsn(0),
            off: false,
        })
    }

    /// The stream has received the log up to `position`.
    pub(crate) fn received(&mut self, position: Lsn) {
        self.received = self.received.max(position);
    }

    /// Reads what the server sent into `buffer`; the bytes read (0 at its end). Cancel-safe.
    ///
    /// # Errors
    /// The read's; or the kernel refusing to lower the mark (the socket would then wait for
    /// a half buffer that may never come: the connection must end).
    pub(crate) async fn fill(
        &mut self,
        stream: &mut ServerStream,
        buffer: &mut BytesMut,
    ) -> std::io::Result<usize> {
        if self.off {
            return stream.read_buf(buffer).await;
        }
        let until = *self.until.get_or_insert_with(|| Instant::now() + self.wait);
        let received = self.received;
        // (Hurried already: not raising the mark only to lower it at once.)
        if Instant::now() < until && *self.hurried.borrow() <= received {
            if self.low_water != LOW_WATER {
                if let Err(err) = stream.set_receive_low_water(LOW_WATER) {
                    // The socket keeps the mark it had: one byte.
                    tracing::warn!(error = %err, side = %self.side, "the socket's receive low-water mark cannot be set; reading every change as it arrives");
                    self.off = true;
                    return stream.read_buf(buffer).await;
                }
                self.low_water = LOW_WATER;
            }
            // Hurried, a read that starts again after this one is cancelled does not linger
            // either: the stream is still short of the position.
            tokio::select! {
                read = stream.read_buf(buffer) => {
                    self.until = None;
                    return read;
                }
                () = tokio::time::sleep_until(until) => {}
                _ = self.hurried.wait_for(|through| *through > received) => {}
            }
        }
        if self.low_water != 1 {
            if let Err(err) = stream.set_receive_low_water(1) {
                LOWERING_REFUSED.store(true, Ordering::SeqCst);
                return Err(err);
            }
            self.low_water = 1;
        }
        let read = stream.read_buf(buffer).await;
        self.until = None;
        read
    }
}

/// Whether lowering a socket's receive low-water mark wakes its reader when that much already
/// waits: Linux does so since 4.18 (`tcp_set_rcvlowat`). Elsewhere a read that waited out its
/// linger could wait on for data already there, so reads do not linger.
fn low_water_wakes() -> bool {
    static WAKES: OnceLock<bool> = OnceLock::new();
    *WAKES.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let wakes = kernel_at_least(&release, (4, 18));
        if !wakes {
            tracing::info!(
                kernel = release.trim(),
                "the replication stream is read as each change arrives (lingering needs Linux 4.18)"
            );
        }
        wakes
    })
}

/// Whether a Linux release string (`6.1.0-18-amd64`) is at least `major.minor`.
fn kernel_at_least(release: &str, (major, minor): (u32, u32)) -> bool {
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(found_major)), Some(Ok(found_minor))) => {
            (found_major, found_minor) >= (major, minor)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A lingering plain connection to a local socket, and the socket's other end; `None`
    /// where this kernel does not linger (the tests then have nothing to check).
    async fn lingering_pair(
        wait: Duration,
        hurry: &Hurry,
    ) -> Option<(Linger, ServerStream, TcpStream)> {
        let linger = Linger::new(Side::Old, wait, hurry.clone())?;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(address), listener.accept());
        Some((
            linger,
            ServerStream::Plain(client.unwrap()),
            server.unwrap().0,
        ))
    }

    /// An upper bound on a wait that must end, so that a failure is a failure, not a hang.
    const HANG: Duration = Duration::from_secs(30);

    /// Checks that a read below the mark lingers (not done within 100 ms of an hour's
    /// linger; the read is cancelled) with the mark raised (the kernel caps it at half the
    /// largest receive buffer it allows).
    async fn assert_lingers(linger: &mut Linger, stream: &mut ServerStream, buffer: &mut BytesMut) {
        let waited =
            tokio::time::timeout(Duration::from_millis(100), linger.fill(stream, buffer)).await;
        assert!(waited.is_err(), "read below the mark: {waited:?}");
        assert!(stream.receive_low_water().unwrap() > 1, "the mark raised");
    }

    /// A read that must end (within [`HANG`]): the bytes it read.
    async fn read_now(
        linger: &mut Linger,
        stream: &mut ServerStream,
        buffer: &mut BytesMut,
        what: &str,
    ) -> usize {
        tokio::time::timeout(HANG, linger.fill(stream, buffer))
            .await
            .unwrap_or_else(|_| panic!("{what}"))
            .unwrap()
    }

    #[tokio::test]
    async fn a_read_takes_what_arrived_below_the_mark_once_its_linger_is_over() {
        let hurry = Hurry::default();
        let Some((mut linger, mut stream, mut server)) =
            lingering_pair(Duration::from_millis(5), &hurry).await
        else {
            return;
        };
        let mut buffer = BytesMut::with_capacity(1024);
        for round in 0..3_u8 {
            server.write_all(&[round; 10]).await.unwrap();
            let mut got = 0;
            while got < 10 {
                let what = "what arrived is read once the linger is over";
                got += read_now(&mut linger, &mut stream, &mut buffer, what).await;
            }
            assert_eq!(&buffer.split()[..], &[round; 10]);
        }
    }

    #[tokio::test]
    async fn a_read_waits_for_a_half_buffer_until_hurried_and_a_cancelled_one_goes_on() {
        let hurry = Hurry::default();
        let Some((mut linger, mut stream, mut server)) =
            lingering_pair(Duration::from_secs(3600), &hurry).await
        else {
            return;
        };
        let mut buffer = BytesMut::with_capacity(1024);
        server.write_all(b"marker").await.unwrap();
        assert_lingers(&mut linger, &mut stream, &mut buffer).await;
        assert!(buffer.is_empty());
        let until = linger.until;
        assert!(until.is_some(), "the linger is kept across the cancel");
        // Hurried through position 100: what arrived is taken now.
        hurry.through(Lsn(100));
        let what = "a hurried read takes what arrived";
        let read = read_now(&mut linger, &mut stream, &mut buffer, what).await;
        assert_eq!((read, &buffer.split()[..]), (6, &b"marker"[..]));
        assert_eq!(stream.receive_low_water().unwrap(), 1);
        assert_eq!(linger.until, None);
        // Until the stream has received position 100, no read lingers.
        linger.received(Lsn(60));
        server.write_all(b"commit").await.unwrap();
        let what = "a read short of the hurried position does not linger";
        let read = read_now(&mut linger, &mut stream, &mut buffer, what).await;
        assert_eq!((read, &buffer.split()[..]), (6, &b"commit"[..]));
        // Past it, reads linger again.
        linger.received(Lsn(100));
        server.write_all(b"later").await.unwrap();
        assert_lingers(&mut linger, &mut stream, &mut buffer).await;
        // A hurry while a read lingers ends it.
        let (read, ()) = tokio::join!(
            tokio::time::timeout(HANG, linger.fill(&mut stream, &mut buffer)),
            async { hurry.through(Lsn(200)) }
        );
        let read = read.expect("a hurry ends the linger").unwrap();
        assert_eq!((read, &buffer.split()[..]), (5, &b"later"[..]));
    }

    #[tokio::test]
    async fn a_burst_past_the_mark_is_read_without_waiting_and_the_end_releases_the_rest() {
        let hurry = Hurry::default();
        let Some((mut linger, mut stream, mut server)) =
            lingering_pair(Duration::from_secs(3600), &hurry).await
        else {
            return;
        };
        let wire: Vec<u8> = (0..121_000_u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let sent = wire.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&sent).await.unwrap();
            // The end of the stream wakes the reader whatever the mark.
            server.shutdown().await.unwrap();
            server
        });
        let mut buffer = BytesMut::with_capacity(64 * 1024);
        let mut received = Vec::new();
        loop {
            let what = "a burst past the mark, then the end, are read without the hour's linger";
            let read = read_now(&mut linger, &mut stream, &mut buffer, what).await;
            received.extend_from_slice(&buffer.split());
            if read == 0 {
                break;
            }
        }
        assert_eq!(received, wire);
        drop(writer.await.unwrap());
    }

    #[test]
    fn only_a_kernel_whose_low_water_mark_wakes_lingers() {
        for (release, wakes) in [
            ("6.1.0-18-amd64", true),
            ("4.18.0-553.el8_10.x86_64", true),
            ("5.4.0", true),
            ("4.17.19", false),
            ("3.10.0-1160.el7.x86_64", false),
            ("10.0", true),
            ("v5.4", false),
            ("", false),
            ("garbage", false),
        ] {
            assert_eq!(kernel_at_least(release, (4, 18)), wakes, "{release}");
        }
        // The lingering tests above ran, not returned early: this suite's kernels are newer.
        #[cfg(target_os = "linux")]
        assert!(low_water_wakes());
    }
}
