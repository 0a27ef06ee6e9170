//! Relays that sit between two of our processes on loopback and count (and, for UDP, disturb)
//! what crosses them.
//!
//! - [`UdpProxy`]: between an agent and a gateway (QUIC). Counts datagrams and payload bytes per
//!   direction, so benchmarks see everything on the UDP socket, QUIC and TLS overhead
//!   included. Faults are set at run time through [`Faults`]: a loss rate per direction, a
//!   fixed delay, a random per-packet delay (reordering), or a blackhole (partition), so tests
//!   can simulate links without netem.
//! - [`TcpProxy`]: between a remote-write sender and a receiver. Counts bytes per direction
//!   (HTTP headers included).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Per-direction counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub up_packets: AtomicU64,
    pub up_bytes: AtomicU64,
    pub down_packets: AtomicU64,
    pub down_bytes: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counters {
    /// Bytes in both directions.
    pub fn total_bytes(&self) -> u64 {
        self.up_bytes.load(Ordering::Relaxed) + self.down_bytes.load(Ordering::Relaxed)
    }
    /// Packets in both directions.
    pub fn total_packets(&self) -> u64 {
        self.up_packets.load(Ordering::Relaxed) + self.down_packets.load(Ordering::Relaxed)
    }
}

/// Faults a [`UdpProxy`] applies, changeable while it runs.
#[derive(Debug, Default)]
pub struct Faults {
    /// Drop every packet (a partition).
    pub blackhole: AtomicBool,
    /// Loss rate client→upstream, in parts per million.
    pub up_loss_ppm: AtomicU64,
    /// Loss rate upstream→client (lost acks), in parts per million.
    pub down_loss_ppm: AtomicU64,
    /// Delay added to every packet, in microseconds.
    pub delay_us: AtomicU64,
    /// A further random delay per packet, up to this many microseconds: packets overtake each
    /// other (reordering).
    pub jitter_us: AtomicU64,
}

impl Faults {
    /// This packet's delay.
    fn delay(&self) -> u64 {
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        self.delay_us.load(Ordering::Relaxed) + if jitter > 0 { rand_u64() % jitter } else { 0 }
    }
}

/// A UDP relay for one client.
pub struct UdpProxy {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    pub faults: Arc<Faults>,
    cancel: CancellationToken,
}

fn lose(ppm: u64) -> bool {
    ppm > 0 && rand_u64() % 1_000_000 < ppm
}

fn rand_u64() -> u64 {
    use std::cell::Cell;
    thread_local!(static S: Cell<u64> = Cell::new(0x853c_49e6_748f_ea9b ^ std::process::id() as u64));
    S.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

impl UdpProxy {
    /// Listens on `listen` and relays to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<UdpProxy> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let back = Arc::new(UdpSocket::bind(SocketAddr::new(listen.ip(), 0)).await?);
        back.connect(upstream).await?;
        let addr = front.local_addr()?;
        let counters = Arc::new(Counters::default());
        let faults = Arc::new(Faults::default());
        let cancel = CancellationToken::new();
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();

        // client -> upstream
        {
            let (front, back, c, f, client, cancel) = (
                front.clone(),
                back.clone(),
                counters.clone(),
                faults.clone(),
                client.clone(),
                cancel.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let (n, from) = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = front.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
                    };
                    if let Ok(mut g) = client.lock() {
                        *g = Some(from);
                    }
                    if f.blackhole.load(Ordering::Relaxed)
                        || lose(f.up_loss_ppm.load(Ordering::Relaxed))
                    {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    c.up_packets.fetch_add(1, Ordering::Relaxed);
                    c.up_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    send_later(&back, None, buf[..n].to_vec(), f.delay()).await;
                }
            });
        }
        // upstream -> client
        {
            let (front, back, c, f, cancel) = (
                front,
                back,
                counters.clone(),
                faults.clone(),
                cancel.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let n = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = back.recv(&mut buf) => match r { Ok(n) => n, Err(_) => continue },
                    };
                    let to = client.lock().ok().and_then(|g| *g);
                    let Some(to) = to else { continue };
                    if f.blackhole.load(Ordering::Relaxed)
                        || lose(f.down_loss_ppm.load(Ordering::Relaxed))
                    {
                        c.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    c.down_packets.fetch_add(1, Ordering::Relaxed);
                    c.down_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    send_later(&front, Some(to), buf[..n].to_vec(), f.delay()).await;
                }
            });
        }
        Ok(UdpProxy {
            addr,
            counters,
            faults,
            cancel,
        })
    }
}

async fn send_later(sock: &Arc<UdpSocket>, to: Option<SocketAddr>, data: Vec<u8>, delay_us: u64) {
    async fn send(sock: Arc<UdpSocket>, to: Option<SocketAddr>, data: Vec<u8>) {
        let _ = match to {
            Some(to) => sock.send_to(&data, to).await,
            None => sock.send(&data).await,
        };
    }
    if delay_us == 0 {
        send(sock.clone(), to, data).await;
    } else {
        let sock = sock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(delay_us)).await;
            send(sock, to, data).await;
        });
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A TCP relay that counts bytes per direction.
pub struct TcpProxy {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    cancel: CancellationToken,
}

impl TcpProxy {
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<TcpProxy> {
        let l = TcpListener::bind(listen).await?;
        let addr = l.local_addr()?;
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let (c, stop) = (counters.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, c.clone(), true));
                tokio::spawn(pump(sr, cw, c.clone(), false));
            }
        });
        Ok(TcpProxy {
            addr,
            counters,
            cancel,
        })
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    c: Arc<Counters>,
    up: bool,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (p, b) = if up {
            (&c.up_packets, &c.up_bytes)
        } else {
            (&c.down_packets, &c.down_bytes)
        };
        p.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
