//! Bidirectional byte copy with half-close, reset propagation, an idle timeout, and buffers
//! that exist only while bytes are moving.

use std::future::{Future, poll_fn};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Size of the on-stack buffer for the first read after a quiet period; request/response
/// traffic that fits in it is copied without touching the heap. Default is 4 KiB.
pub const SMALL_BUFFER: usize = 4 * 1024;

/// Largest heap buffer a bulk flow grows to (doubling from 2 × [`SMALL_BUFFER`] each time a
/// read fills the buffer). Default is 64 KiB.
pub const MAX_BUFFER: usize = 64 * 1024;

/// The error inside the `io::Error` (kind `TimedOut`) that [`proxy`] and [`proxy_io`]
/// return when no byte moved in either direction for the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no bytes moved within the idle timeout")]
pub struct IdleTimeout;

/// How a copy ended when it did not end with both directions closed.
enum Failure {
    Idle,
    Io(io::Error),
}

/// One direction of the copy: reads from one side, writes to the other.
struct Pump {
    /// Heap buffer, empty (no allocation) while the direction is quiet.
    buf: Vec<u8>,
    /// Bytes `buf[pos..len]` are read but not yet written.
    pos: usize,
    len: usize,
    /// Size of the next heap buffer; it grows while reads keep filling the buffer.
    next_size: usize,
    read_eof: bool,
    need_flush: bool,
    done: bool,
    bytes: u64,
}

impl Pump {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            len: 0,
            next_size: 2 * SMALL_BUFFER,
            read_eof: false,
            need_flush: false,
            done: false,
            bytes: 0,
        }
    }

    /// Moves bytes until the reader is drained (Pending) or at EOF and the writer shut down
    /// (Ready(Ok)). Sets `moved` when any byte was read or written.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            // Write out what is buffered before reading more: memory stays at one buffer
            // and a slow writer pushes back on the reader through TCP.
            while self.pos < self.len {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.len]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
                *moved = true;
            }
            if self.read_eof {
                self.buf = Vec::new();
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                // Half-close: the peer sees EOF while the other direction keeps running.
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
            if self.buf.is_empty() {
                ready!(self.poll_read_small(cx, reader, writer, moved))?;
            } else {
                ready!(self.poll_read_bulk(cx, reader, writer, moved))?;
            }
        }
    }

    /// Quiet mode: reads into a stack buffer and writes straight through. Only bytes the
    /// writer cannot take now, or a read that filled the buffer (a bulk flow), move the
    /// direction onto a heap buffer.
    fn poll_read_small<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        // Left uninitialised: zeroing 4 KiB on every poll (two or three per request on a
        // request/response flow) cost more than the copy itself. The reader fills it; only
        // the filled part is ever read.
        let mut stack = [const { MaybeUninit::<u8>::uninit() }; SMALL_BUFFER];
        let mut read_buf = ReadBuf::uninit(&mut stack);
        if Pin::new(&mut *reader)
            .poll_read(cx, &mut read_buf)?
            .is_pending()
        {
            return self.poll_quiet(cx, writer);
        }
        let filled = read_buf.filled();
        let n = filled.len();
        if n == 0 {
            self.read_eof = true;
            return Poll::Ready(Ok(()));
        }
        self.bytes += n as u64;
        *moved = true;
        let mut written = 0;
        while written < n {
            match Pin::new(&mut *writer).poll_write(cx, &filled[written..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(k)) => {
                    written += k;
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if written < n || n == SMALL_BUFFER {
            let rest = n - written;
            self.buf = vec![0; self.next_size];
            self.buf[..rest].copy_from_slice(&filled[written..n]);
            self.pos = 0;
            self.len = rest;
        }
        Poll::Ready(Ok(()))
    }

    /// Bulk mode: reads into the heap buffer, growing it while reads fill it, and frees it
    /// as soon as the reader has nothing more.
    fn poll_read_bulk<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        // Everything buffered has been written, so the buffer can be swapped freely.
        if self.buf.len() < self.next_size {
            self.buf = vec![0; self.next_size];
        }
        let mut read_buf = ReadBuf::new(&mut self.buf);
        if Pin::new(&mut *reader)
            .poll_read(cx, &mut read_buf)?
            .is_pending()
        {
            // The burst is over: give the memory back while waiting.
            self.buf = Vec::new();
            self.pos = 0;
            self.len = 0;
            return self.poll_quiet(cx, writer);
        }
        let n = read_buf.filled().len();
        if n == 0 {
            self.read_eof = true;
            return Poll::Ready(Ok(()));
        }
        self.bytes += n as u64;
        *moved = true;
        self.pos = 0;
        self.len = n;
        if n == self.buf.len() {
            self.next_size = (self.next_size * 2).min(MAX_BUFFER);
        }
        Poll::Ready(Ok(()))
    }

    /// The reader is drained: flush what was written so it is not held back by a buffering
    /// writer, then wait for the reader.
    fn poll_quiet<W>(&mut self, cx: &mut Context<'_>, writer: &mut W) -> Poll<io::Result<()>>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.need_flush {
            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
            self.need_flush = false;
        }
        Poll::Pending
    }
}

impl Failure {
    fn into_io(self) -> io::Error {
        match self {
            Self::Idle => io::Error::new(io::ErrorKind::TimedOut, IdleTimeout),
            Self::Io(e) => e,
        }
    }
}

/// True when `err` is the idle timeout of [`proxy`] or [`proxy_io`].
pub fn is_idle_timeout(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<IdleTimeout>())
}

/// Copies bytes between two TCP connections in both directions and returns the counts
/// `(a → b, b → a)`.
///
/// When one side reaches EOF the other side's write half is shut down and the opposite
/// direction keeps running; the copy ends when both directions have ended. With `idle` set,
/// it also ends (with an [`IdleTimeout`] error, see [`is_idle_timeout`]) once no byte moved in
/// either direction for that long. Default is no idle timeout (`None`). An I/O error on
/// either side (such as a reset) ends the copy and resets both connections, so the peer of
/// the healthy side sees the failure instead of a clean close. An idle connection holds no
/// copy buffer.
pub async fn proxy(
    mut a: TcpStream,
    mut b: TcpStream,
    idle: Option<Duration>,
) -> io::Result<(u64, u64)> {
    match run(&mut a, &mut b, idle).await {
        Ok(counts) => Ok(counts),
        Err(Failure::Io(e)) => {
            // Zero linger makes close send RST; errors only mean the socket is already gone.
            let _ = a.set_zero_linger();
            let _ = b.set_zero_linger();
            Err(e)
        }
        Err(failure) => Err(failure.into_io()),
    }
}

/// [`proxy`] for any pair of byte streams (for example an upgraded HTTP connection and a TCP
/// stream): same half-close, idle-timeout and buffer behaviour. On error both streams are
/// dropped; how that is signalled to the peers is up to the stream types.
pub async fn proxy_io<A, B>(mut a: A, mut b: B, idle: Option<Duration>) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    run(&mut a, &mut b, idle).await.map_err(Failure::into_io)
}

async fn run<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> Result<(u64, u64), Failure>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Pump::new();
    let mut b_to_a = Pump::new();
    let timer = idle.map(tokio::time::sleep);
    tokio::pin!(timer);
    let mut last_moved = Instant::now();
    poll_fn(|cx| {
        let mut moved = false;
        if !a_to_b.done {
            match a_to_b.poll_copy(cx, &mut *a, &mut *b, &mut moved) {
                Poll::Ready(Ok(())) => a_to_b.done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Io(e))),
                Poll::Pending => {}
            }
        }
        if !b_to_a.done {
            match b_to_a.poll_copy(cx, &mut *b, &mut *a, &mut moved) {
                Poll::Ready(Ok(())) => b_to_a.done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Io(e))),
                Poll::Pending => {}
            }
        }
        if a_to_b.done && b_to_a.done {
            return Poll::Ready(Ok((a_to_b.bytes, b_to_a.bytes)));
        }
        if let (Some(limit), Some(mut sleep)) = (idle, timer.as_mut().as_pin_mut()) {
            if moved {
                last_moved = Instant::now();
            }
            // The timer is only re-armed when it fires, not on every byte: cheap on hot flows.
            while sleep.as_mut().poll(cx).is_ready() {
                let deadline = last_moved + limit;
                if deadline <= sleep.deadline() {
                    return Poll::Ready(Err(Failure::Idle));
                }
                sleep.as_mut().reset(deadline);
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn duplex_copies_and_half_closes() {
        let (mut client, proxy_a) = duplex(64);
        let (proxy_b, mut server) = duplex(64);
        let task = tokio::spawn(proxy_io(proxy_a, proxy_b, None));
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        server.write_all(b"done").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        assert_eq!(task.await.unwrap().unwrap(), (100_000, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn duplex_idle_timeout_fires_after_last_byte() {
        let (mut client, proxy_a) = duplex(1024);
        let (proxy_b, mut server) = duplex(1024);
        let started = Instant::now();
        let task = tokio::spawn(proxy_io(proxy_a, proxy_b, Some(Duration::from_secs(10))));
        tokio::time::sleep(Duration::from_secs(6)).await;
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert!(is_idle_timeout(&err), "{err:?}");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(16) && elapsed < Duration::from_secs(17),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn buffers_grow_and_are_released() {
        let mut pump = Pump::new();
        let data = vec![7u8; 200_000];
        let mut reader: &[u8] = &data;
        let mut sink: Vec<u8> = Vec::new();
        let mut moved = false;
        // A slice reader never pends: the copy runs to EOF in one poll.
        let result =
            poll_fn(|cx| Poll::Ready(pump.poll_copy(cx, &mut reader, &mut sink, &mut moved))).await;
        assert!(matches!(result, Poll::Ready(Ok(()))));
        assert_eq!(sink.len(), data.len());
        assert_eq!(pump.bytes, 200_000);
        assert_eq!(pump.next_size, MAX_BUFFER);
        assert_eq!(pump.buf.capacity(), 0);
        assert!(moved);
    }

    #[test]
    fn other_errors_are_not_idle_timeouts() {
        assert!(!is_idle_timeout(&io::Error::from(io::ErrorKind::TimedOut)));
        assert!(is_idle_timeout(&Failure::Idle.into_io()));
    }
}
