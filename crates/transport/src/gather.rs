//! Vectored writes turned into one plain write when they are small.
//!
//! hyper and h2 hand a connection its head and body as separate buffers and call
//! `poll_write_vectored`, which on a socket is `writev(2)`. On Linux a socket `writev` walks the
//! VFS layer (fd position lock, iovec import, `rw_verify_area`) where `send(2)`, which tokio's
//! `poll_write` uses, goes straight to the socket: measured here at about 1.2 µs per call, two
//! calls per proxied HTTP/1.1 request. Copying a few KiB costs far less than that, so small
//! gathers are copied into a per-thread scratch buffer and sent with one `poll_write`; large ones
//! keep `writev`, where copying would cost more than it saves.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest gather (sum of the buffers) copied into one plain write. Larger ones go out with
/// `writev` unchanged. A typical proxied response head plus a small body fits.
pub const GATHER_MAX: usize = 16 * 1024;

thread_local! {
    /// One scratch buffer per thread, allocated on first use and kept (at most [`GATHER_MAX`]).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Wraps an I/O object so that small vectored writes become one plain write (see the module
/// docs). Reads and everything else pass through. It reports itself as vectored, so callers keep
/// handing it buffers without flattening (and growing) their own.
#[derive(Debug)]
pub struct Gather<T> {
    inner: T,
}

impl<T> Gather<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Gather<T> {
        Gather { inner }
    }

    /// The wrapped I/O object.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Unwraps the I/O object.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Gather<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gather<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        let (first, second) = (non_empty.next(), non_empty.next());
        let inner = Pin::new(&mut self.inner);
        match (first, second) {
            (None, _) => Poll::Ready(Ok(0)),
            (Some(only), None) => inner.poll_write(cx, only),
            (Some(_), Some(_)) => {
                let total: usize = bufs.iter().map(|b| b.len()).sum();
                if total > GATHER_MAX {
                    return inner.poll_write_vectored(cx, bufs);
                }
                SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
                    Ok(mut scratch) => {
                        scratch.clear();
                        for b in bufs {
                            scratch.extend_from_slice(b);
                        }
                        // A partial write is fine: it reports the bytes taken, as writev would,
                        // and the caller offers the rest again.
                        inner.poll_write(cx, &scratch)
                    }
                    // Only a nested Gather on this thread holds it; fall back to writev.
                    Err(_) => inner.poll_write_vectored(cx, bufs),
                })
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Records how each write arrived.
    #[derive(Default)]
    struct Recorder {
        plain: Vec<Vec<u8>>,
        vectored: usize,
        accept: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.accept.map_or(buf.len(), |a| a.min(buf.len()));
            self.plain.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored += 1;
            Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_gathers_become_one_plain_write() {
        let mut g = Gather::new(Recorder::default());
        let bufs = [
            IoSlice::new(b"HTTP/1.1 200 OK\r\n\r\n"),
            IoSlice::new(b""),
            IoSlice::new(b"body"),
        ];
        let n = g.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 23);
        assert_eq!(
            g.get_ref().plain,
            vec![b"HTTP/1.1 200 OK\r\n\r\nbody".to_vec()]
        );
        assert_eq!(g.get_ref().vectored, 0);
    }

    #[tokio::test]
    async fn a_single_buffer_is_written_as_is_and_large_gathers_stay_vectored() {
        let mut g = Gather::new(Recorder::default());
        let n = g
            .write_vectored(&[IoSlice::new(b""), IoSlice::new(b"one")])
            .await
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(g.get_ref().plain, vec![b"one".to_vec()]);
        let big = vec![7u8; GATHER_MAX];
        let n = g
            .write_vectored(&[IoSlice::new(b"head"), IoSlice::new(&big)])
            .await
            .unwrap();
        assert_eq!(n, 4 + GATHER_MAX);
        assert_eq!(g.get_ref().vectored, 1);
        assert_eq!(g.write_vectored(&[]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn partial_writes_report_what_was_taken() {
        let mut g = Gather::new(Recorder {
            accept: Some(5),
            ..Recorder::default()
        });
        let n = g
            .write_vectored(&[IoSlice::new(b"abc"), IoSlice::new(b"defgh")])
            .await
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(g.get_ref().plain, vec![b"abcde".to_vec()]);
    }

    #[tokio::test]
    async fn bytes_cross_a_real_socket_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = Gather::new(tokio::net::TcpStream::connect(addr).await.unwrap());
            // Small gathers fit an empty socket buffer whole.
            for _ in 0..3 {
                let bufs = [IoSlice::new(b"GET / HTTP/1.1\r\n"), IoSlice::new(b"\r\n")];
                assert_eq!(s.write_vectored(&bufs).await.unwrap(), 18);
            }
            s.shutdown().await.unwrap();
        });
        let (mut server, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        client.await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n".repeat(3));
    }
}
