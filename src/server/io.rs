//! Thread-per-core serving of the gRPC port.
//!
//! One acceptor hands each new connection to the I/O thread with the fewest
//! open connections; every I/O thread runs its own single-threaded runtime and
//! its own tonic server, so a connection's TLS, HTTP/2 and handler tasks all
//! run on one thread and wake each other without a futex or an inter-processor
//! interrupt. On the 2-core bench host this took ~4 µs of daemon CPU off every
//! call (a quarter of an empty RPC's cost) and lowered the open-loop latency;
//! see BENCHMARKS.md. The price is that a busy thread cannot hand work to an
//! idle one: the balance comes from the connection count (a POSP keeps a pool
//! of long-lived connections), and CPU-heavy calls already go to the blocking
//! pool.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A thread that stopped serving never receives another connection.
const RETIRED: usize = usize::MAX / 2;

/// Open and accepted connections of each I/O thread, read live by `/metrics`.
#[derive(Debug)]
pub struct IoStats {
    open: Box<[AtomicUsize]>,
    accepted: Box<[AtomicU64]>,
    /// Where the next tie-break starts, so equally loaded threads take turns.
    turn: AtomicUsize,
}

impl IoStats {
    /// Counters for `threads` I/O threads (at least one).
    pub fn new(threads: usize) -> Self {
        let n = threads.max(1);
        Self {
            open: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            accepted: (0..n).map(|_| AtomicU64::new(0)).collect(),
            turn: AtomicUsize::new(0),
        }
    }

    pub fn threads(&self) -> usize {
        self.open.len()
    }

    /// Open connections per thread (a retired thread's still-open ones too).
    pub fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| {
                let n = n.load(Relaxed);
                if n >= RETIRED {
                    n - RETIRED
                } else {
                    n
                }
            })
            .collect()
    }

    /// Connections handed to each thread since start.
    pub fn accepted(&self) -> Vec<u64> {
        self.accepted.iter().map(|n| n.load(Relaxed)).collect()
    }

    /// The thread with the fewest open connections; ties are broken in turn.
    /// `None` once every thread is retired.
    fn pick(&self) -> Option<usize> {
        let n = self.open.len();
        let start = self.turn.fetch_add(1, Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .map(|i| (self.open[i].load(Relaxed), i))
            .filter(|&(open, _)| open < RETIRED)
            .min_by_key(|&(open, _)| open)
            .map(|(_, i)| i)
    }

    fn retire(&self, thread: usize) {
        self.open[thread].fetch_add(RETIRED, Relaxed);
    }

    /// Counts a connection on `thread` until the returned ticket is dropped.
    fn admit(self: &Arc<Self>, thread: usize) -> Ticket {
        self.open[thread].fetch_add(1, Relaxed);
        Ticket {
            stats: self.clone(),
            thread,
        }
    }
}

/// One open connection on one I/O thread, for as long as it lives.
#[derive(Debug)]
struct Ticket {
    stats: Arc<IoStats>,
    thread: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.stats.open[self.thread].fetch_sub(1, Relaxed);
    }
}

/// An accepted connection on its way to its I/O thread. It travels as a std
/// socket: a tokio socket stays registered with the reactor of the runtime
/// that created it, which would then wake the I/O thread for every packet.
#[derive(Debug)]
pub struct Accepted {
    stream: std::net::TcpStream,
    ticket: Ticket,
}

impl Accepted {
    /// Registers the socket with the calling thread's runtime.
    pub fn register(self) -> io::Result<CountedStream> {
        Ok(CountedStream {
            io: TcpStream::from_std(self.stream)?,
            _ticket: self.ticket,
        })
    }
}

/// A TCP connection served by an I/O thread, counted open there until dropped.
#[derive(Debug)]
pub struct CountedStream {
    io: TcpStream,
    _ticket: Ticket,
}

impl Connected for CountedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Accept errors that mean "out of a resource": back off instead of spinning.
pub(super) fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The I/O threads: each runs `serve_one` on its own current-thread runtime
/// over the connections the acceptor sends it.
pub(super) struct IoThreads {
    stats: Arc<IoStats>,
    senders: Vec<tokio::sync::mpsc::UnboundedSender<Accepted>>,
    stop: tokio::sync::watch::Sender<bool>,
    done: Vec<tokio::sync::oneshot::Receiver<Result<(), String>>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// What an I/O thread runs: a server over its connections until `stop`.
pub(super) type ServeOne = Arc<
    dyn Fn(
            tokio::sync::mpsc::UnboundedReceiver<Accepted>,
            tokio::sync::watch::Receiver<bool>,
        ) -> Pin<Box<dyn std::future::Future<Output = Result<(), String>>>>
        + Send
        + Sync,
>;

impl IoThreads {
    pub(super) fn start(stats: Arc<IoStats>, serve_one: ServeOne) -> io::Result<IoThreads> {
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut threads = IoThreads {
            stats,
            senders: Vec::new(),
            stop,
            done: Vec::new(),
            handles: Vec::new(),
        };
        for i in 0..threads.stats.threads() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let stop = threads.stop.subscribe();
            let serve_one = serve_one.clone();
            let handle = std::thread::Builder::new()
                .name(format!("poshsm-io-{i}"))
                .spawn(move || {
                    let r = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(serve_one(rx, stop)),
                        Err(e) => Err(format!("cannot start I/O thread {i}'s runtime: {e}")),
                    };
                    if let Err(e) = &r {
                        tracing::error!(thread = i, error = %e, "gRPC I/O thread stopped");
                    }
                    let _ = done_tx.send(r);
                });
            match handle {
                Ok(h) => threads.handles.push(h),
                Err(e) => {
                    threads.shutdown_now();
                    return Err(e);
                }
            }
            threads.senders.push(tx);
            threads.done.push(done_rx);
        }
        Ok(threads)
    }

    /// Hands `stream` to the least loaded live thread; `Err` once none is left
    /// (a connection that cannot be handed over is dropped and logged).
    pub(super) fn dispatch(&self, stream: TcpStream) -> Result<(), String> {
        let mut stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "gRPC connection dropped: cannot hand it to an I/O thread");
                return Ok(());
            }
        };
        loop {
            let Some(i) = self.stats.pick() else {
                return Err("every gRPC I/O thread has stopped".into());
            };
            let conn = Accepted {
                stream,
                ticket: self.stats.admit(i),
            };
            match self.senders[i].send(conn) {
                Ok(()) => {
                    self.stats.accepted[i].fetch_add(1, Relaxed);
                    return Ok(());
                }
                Err(back) => {
                    tracing::error!(
                        thread = i,
                        "gRPC I/O thread stopped; no more connections go to it"
                    );
                    self.stats.retire(i);
                    stream = back.0.stream;
                }
            }
        }
    }

    fn shutdown_now(&mut self) {
        let _ = self.stop.send(true);
        self.senders.clear();
    }

    /// Stops taking connections, lets every thread finish its in-flight calls,
    /// and waits for all of them; the first thread error is returned.
    pub(super) async fn shutdown(mut self) -> Result<(), String> {
        self.shutdown_now();
        let mut first = Ok(());
        for (i, done) in std::mem::take(&mut self.done).into_iter().enumerate() {
            let r = done
                .await
                .unwrap_or_else(|_| Err(format!("gRPC I/O thread {i} panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        let handles = std::mem::take(&mut self.handles);
        let _ = tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        })
        .await;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_loaded_thread_wins_and_ties_take_turns() {
        let stats = Arc::new(IoStats::new(3));
        // Equal threads take turns.
        let tickets: Vec<Ticket> = (0..3)
            .map(|_| {
                let i = stats.pick().unwrap();
                stats.admit(i)
            })
            .collect();
        assert_eq!(stats.open(), [1, 1, 1]);
        // Thread 1 loses its connection: it is the only least loaded one.
        let mut tickets = tickets;
        let gone = tickets.iter().position(|t| t.thread == 1).unwrap();
        drop(tickets.remove(gone));
        assert_eq!(stats.open(), [1, 0, 1]);
        for _ in 0..5 {
            assert_eq!(stats.pick(), Some(1));
        }
        tickets.push(stats.admit(1));
        tickets.push(stats.admit(1));
        assert_eq!(stats.open(), [1, 2, 1]);
        let next: std::collections::HashSet<usize> =
            (0..6).map(|_| stats.pick().unwrap()).collect();
        assert_eq!(next, [0, 2].into(), "both least loaded threads take turns");
    }

    #[test]
    fn a_retired_thread_gets_nothing_and_none_is_left_after_the_last() {
        let stats = Arc::new(IoStats::new(2));
        let t = stats.admit(0);
        stats.retire(1);
        for _ in 0..4 {
            assert_eq!(stats.pick(), Some(0), "retired thread 1 never picked");
        }
        assert_eq!(stats.open(), [1, 0]);
        drop(t);
        stats.retire(0);
        assert_eq!(stats.pick(), None);
    }
}
