//! A bounded queue in front of a dedicated writer thread: the request path never blocks on disk,
//! and when the disk cannot keep up lines are dropped and counted instead. The thread is not
//! woken per line (a wake-up costs the request thread a syscall and the writer a context switch):
//! it wakes every flush interval, or early when a batch worth writing is waiting.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// Lines the queue holds before new lines are dropped. Default is 4096.
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// How often the writer checks whether its file was rotated away. Default is 1 s.
pub const DEFAULT_REOPEN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a queued line may wait before the writer thread wakes and writes it. Default is
/// 100 ms.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Lines written before the buffer is flushed even if more are queued, so a steady stream still
/// reaches the file promptly. Also the queue length that wakes the writer before its interval
/// (half the queue when that is smaller).
const MAX_BATCH_LINES: usize = 512;

/// Buffer size of the file writer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Metric counting lines dropped because the queue was full.
const DROPPED_METRIC: &str = "envoy_access_log_dropped_total";

/// Tuning of a [`Writer`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Queue capacity in lines. Default is [`DEFAULT_QUEUE_CAPACITY`]; at least 1.
    pub queue_capacity: usize,
    /// Rotation check period for files. Default is [`DEFAULT_REOPEN_CHECK_INTERVAL`].
    pub reopen_check_interval: Duration,
    /// Longest wait of a queued line before it is written. Default is
    /// [`DEFAULT_FLUSH_INTERVAL`].
    pub flush_interval: Duration,
}

/// An access log destination. `log` never blocks; dropping the writer flushes every queued line
/// and joins the writer thread.
pub struct Writer {
    tx: Option<SyncSender<String>>,
    dropped: Arc<AtomicU64>,
    dropped_metric: metrics::Counter,
    /// Lines queued and not yet taken by the writer thread (counted before the push, so never
    /// below the queue's length).
    pending: Arc<AtomicUsize>,
    /// Queue length at which the writer thread is woken early.
    wake_at: usize,
    /// The writer thread, to unpark.
    waker: Thread,
    thread: Option<JoinHandle<()>>,
}

/// The writer thread's periods.
#[derive(Clone, Copy)]
struct Timing {
    reopen_check: Duration,
    flush: Duration,
}

/// Where lines end up.
enum Sink {
    File(FileSink),
    /// stdout, stderr or a caller's writer; buffered so a batch costs one write.
    Other(BufWriter<Box<dyn Write + Send>>),
}

struct FileSink {
    path: String,
    out: BufWriter<File>,
    /// (device, inode) of the open file, compared with the path's to detect rotation.
    id: (u64, u64),
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            reopen_check_interval: DEFAULT_REOPEN_CHECK_INTERVAL,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
        }
    }
}

impl Writer {
    /// Opens (creating, appending) a log file, or the process's `/dev/stdout` / `/dev/stderr`,
    /// with default options.
    pub fn open(path: &str) -> io::Result<Writer> {
        Writer::open_with(path, &WriterOptions::default())
    }

    /// Like [`Writer::open`] with explicit options.
    pub fn open_with(path: &str, opts: &WriterOptions) -> io::Result<Writer> {
        let sink = match path {
            "/dev/stdout" => Sink::other(Box::new(io::stdout())),
            "/dev/stderr" => Sink::other(Box::new(io::stderr())),
            _ => Sink::File(FileSink::open(path)?),
        };
        Writer::spawn(sink, opts)
    }

    /// Writes lines to any `Write` (tests, pipes). No rotation checks are made.
    pub fn from_write<W: Write + Send + 'static>(w: W, opts: &WriterOptions) -> io::Result<Writer> {
        Writer::spawn(Sink::other(Box::new(w)), opts)
    }

    fn spawn(sink: Sink, opts: &WriterOptions) -> io::Result<Writer> {
        let capacity = opts.queue_capacity.max(1);
        let (tx, rx) = mpsc::sync_channel(capacity);
        let pending = Arc::new(AtomicUsize::new(0));
        let timing = Timing {
            reopen_check: opts.reopen_check_interval,
            flush: opts.flush_interval,
        };
        let taken = pending.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || run(sink, rx, &taken, timing))?;
        Ok(Writer {
            tx: Some(tx),
            dropped: Arc::new(AtomicU64::new(0)),
            dropped_metric: metrics::counter!(DROPPED_METRIC),
            pending,
            wake_at: (capacity / 2).clamp(1, MAX_BATCH_LINES),
            waker: thread.thread().clone(),
            thread: Some(thread),
        })
    }

    /// Queues one line (a newline is added when missing). Never blocks: when the queue is full
    /// the line is dropped and counted. The line reaches the sink within the flush interval.
    pub fn log(&self, line: String) {
        let Some(tx) = &self.tx else { return };
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        if tx.try_send(line).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_metric.increment(1);
        } else if before + 1 == self.wake_at {
            self.waker.unpark();
        }
    }

    /// Lines dropped so far because the queue was full (or the writer thread had died).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel lets the thread drain the queue, flush and exit.
        self.tx.take();
        self.waker.unpark();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl FileSink {
    fn open(path: &str) -> io::Result<FileSink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let meta = file.metadata()?;
        Ok(FileSink {
            path: path.to_string(),
            out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            id: (meta.dev(), meta.ino()),
        })
    }

    /// Reopens the path when it now names another file or no file (logrotate's rename-and-create
    /// or a plain rename). A truncated file (copytruncate) needs nothing: appends follow the new end.
    fn reopen_if_rotated(&mut self) -> io::Result<()> {
        let rotated = match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.id,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        if rotated {
            self.out.flush()?;
            *self = FileSink::open(&self.path)?;
        }
        Ok(())
    }
}

impl Sink {
    fn other(w: Box<dyn Write + Send>) -> Sink {
        Sink::Other(BufWriter::with_capacity(WRITE_BUFFER_BYTES, w))
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::File(f) => &mut f.out,
            Sink::Other(w) => w,
        }
    }
}

/// The writer thread: sleep until the flush interval passes or the writer wakes it, write what
/// is queued, flush, check for rotation now and then.
fn run(mut sink: Sink, rx: Receiver<String>, pending: &AtomicUsize, timing: Timing) {
    let mut last_check = Instant::now();
    let mut failing = false;
    loop {
        let mut closed = false;
        // Batches of at most MAX_BATCH_LINES, each flushed, until the queue is empty.
        loop {
            let mut n = 0;
            let mut result = Ok(());
            while n < MAX_BATCH_LINES {
                match rx.try_recv() {
                    Ok(line) => {
                        result = result.and(write_line(sink.writer(), &line));
                        n += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            if n == 0 {
                break;
            }
            pending.fetch_sub(n, Ordering::Relaxed);
            report(&mut failing, result.and(sink.writer().flush()));
            if n < MAX_BATCH_LINES {
                break;
            }
        }
        if closed {
            break;
        }
        if last_check.elapsed() >= timing.reopen_check {
            last_check = Instant::now();
            if let Sink::File(f) = &mut sink {
                report(&mut failing, f.reopen_if_rotated());
            }
        }
        std::thread::park_timeout(timing.flush.min(timing.reopen_check));
    }
    let _ = sink.writer().flush();
}

fn write_line(w: &mut dyn Write, line: &str) -> io::Result<()> {
    w.write_all(line.as_bytes())?;
    if !line.ends_with('\n') {
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// Logs the first error of a failing streak only, so a full disk does not flood the process log.
fn report(failing: &mut bool, result: io::Result<()>) {
    match result {
        Ok(()) => *failing = false,
        Err(e) => {
            if !*failing {
                tracing::warn!(error = %e, "access log write failed");
            }
            *failing = true;
        }
    }
}
