//! Reading a connection in bursts: a replication stream's walsender sends every change as a
//! message of its own, and a socket read as each arrives wakes its reader once per change.
//! Lingering, the socket's receive low-water mark (`SO_RCVLOWAT`) is half a read buffer, so
//! the kernel wakes the reader only once that much waits; a read that has waited its linger
//! (or is hurried, [`Hurry`]) lowers the mark to one byte, which wakes it at once when
//! anything waits (Linux re-checks the mark as it is set, since 4.18), and takes what has
//! arrived. The next read raises the mark again.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use tandem_control::Side;
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::stream::ServerStream;

/// The receive low-water mark while lingering: half the replication stream's read buffer.
pub(crate) const LOW_WATER: i32 = 32 * 1024;

/// Tells a lingering stream to take what has arrived now rather than at the end of its
/// linger: someone waits for a marker that was just written (a compared read after writes,
/// a change of authoritative side). A hurry while no read lingers makes the next one not
/// linger.
#[derive(Debug, Clone, Default)]
pub struct Hurry(Arc<Notify>);

impl Hurry {
    /// Ends the current (or the next) linger.
    pub fn now(&self) {
        self.0.notify_one();
    }
}

/// A connection's lingering: how long, and where it stands.
#[derive(Debug)]
pub(crate) struct Linger {
    side: Side,
    wait: Duration,
    hurry: Hurry,
    /// When the current read stops waiting for a half buffer (kept across a cancelled read,
    /// so that cancelling and reading again does not wait afresh).
    until: Option<Instant>,
    /// The mark set now.
    low_water: i32,
    /// The kernel refused the mark: reads take every message as it arrives.
    off: bool,
}

impl Linger {
    /// Lingering of `wait` for the connection to `side`, hurried by `hurry`; `None` on a
    /// kernel whose lowered mark would not wake the reader.
    pub(crate) fn new(side: Side, wait: Duration, hurry: Hurry) -> Option<Linger> {
        low_water_wakes().then_some(Linger {
            side,
            wait,
            hurry,
            until: None,
            low_water: 1,
            off: false,
        })
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
        if Instant::now() < until {
            if self.low_water != LOW_WATER {
                if let Err(err) = stream.set_receive_low_water(LOW_WATER) {
                    // The socket keeps the mark it had: one byte.
                    tracing::warn!(error = %err, side = %self.side, "the socket's receive low-water mark cannot be set; reading every change as it arrives");
                    self.off = true;
                    return stream.read_buf(buffer).await;
                }
                self.low_water = LOW_WATER;
            }
            let hurry = Arc::clone(&self.hurry.0);
            tokio::select! {
                read = stream.read_buf(buffer) => {
                    self.until = None;
                    return read;
                }
                () = tokio::time::sleep_until(until) => {}
                () = hurry.notified() => {}
            }
        }
        if self.low_water != 1 {
            stream.set_receive_low_water(1)?;
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
                got += tokio::time::timeout(HANG, linger.fill(&mut stream, &mut buffer))
                    .await
                    .expect("what arrived is read once the linger is over")
                    .unwrap();
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
        // Below the mark, within an hour's linger: not read (the read is cancelled).
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            linger.fill(&mut stream, &mut buffer),
        )
        .await;
        assert!(waited.is_err(), "read below the mark: {waited:?}");
        assert_eq!(stream.receive_low_water().unwrap(), LOW_WATER);
        assert!(buffer.is_empty());
        let until = linger.until;
        assert!(until.is_some(), "the linger is kept across the cancel");
        // Hurried: what arrived is taken now.
        hurry.now();
        let read = tokio::time::timeout(HANG, linger.fill(&mut stream, &mut buffer))
            .await
            .expect("a hurried read takes what arrived")
            .unwrap();
        assert_eq!((read, &buffer[..]), (6, &b"marker"[..]));
        assert_eq!(stream.receive_low_water().unwrap(), 1);
        assert_eq!(linger.until, None);
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
            let read = tokio::time::timeout(HANG, linger.fill(&mut stream, &mut buffer))
                .await
                .expect("a burst past the mark, then the end, are read without the hour's linger")
                .unwrap();
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
    }
}
