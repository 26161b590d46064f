//! PERMISSIVE mode: is the first flight a TLS ClientHello?
//!
//! Reference checklist B.5: read the first bytes, send a TLS ClientHello
//! to the mTLS path and anything else to plaintext, with a timeout, a
//! bounded buffer, and correct answers for a ClientHello fragmented across
//! reads and for non-TLS bytes that begin with `0x16`.
//!
//! Six bytes decide: a TLS record header (content type `0x16` handshake,
//! legacy version `0x03 0x00..=0x04`, two length bytes) followed by the
//! handshake type `0x01` ClientHello (RFC 8446 §5.1, §4). That is what
//! Envoy's `tls_inspector` keys on before parsing further; we need no
//! more than the decision, so the buffer is 6 bytes rather than Linkerd's
//! 512 B peek (`linkerd/tls/src/server.rs`), and it never grows. The bytes
//! read are replayed to whichever side takes the connection (`Prefixed`).
//!
//! [`classify`] is the whole decision as a pure function of the bytes
//! read so far; it is public so that the fuzz target `client_hello`
//! (`fuzz/`) and its corpus replay test can drive it with any input,
//! fragmented at every possible boundary.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The bytes needed to decide: a decision never needs more.
pub const DECISION_BYTES: usize = 6;

/// What the first bytes of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// A TLS ClientHello.
    Tls,
    /// Anything else.
    Plaintext,
}

/// Classifies the first bytes of a connection: `None` while `prefix` is
/// shorter than [`DECISION_BYTES`] and could still begin a ClientHello,
/// otherwise the decision (bytes past [`DECISION_BYTES`] are not looked
/// at). Once a prefix is decided, every longer prefix gets the same
/// answer, so the bytes may arrive in any fragments. Never panics.
///
/// ```
/// use mesh_tower::serve::detect::{Detected, classify};
///
/// assert_eq!(classify(&[0x16, 0x03, 0x01]), None);
/// assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Some(Detected::Tls));
/// assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Plaintext));
/// ```
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    let checks: [fn(u8) -> bool; DECISION_BYTES] = [
        |b| b == 0x16, // content type: handshake
        |b| b == 0x03, // legacy record version, major
        |b| b <= 0x04, // minor: SSL 3.0 to TLS 1.3
        |_| true,      // length, high byte
        |_| true,      // length, low byte
        |b| b == 0x01, // handshake type: ClientHello
    ];
    for (b, check) in prefix.iter().zip(checks) {
        if !check(*b) {
            return Some(Detected::Plaintext);
        }
    }
    (prefix.len() >= DECISION_BYTES).then_some(Detected::Tls)
}

/// Reads until the first bytes decide. Returns the decision and the bytes
/// read (to replay), or `None` if the peer closed before deciding.
pub(crate) async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
) -> io::Result<Option<(Detected, Prefix)>> {
    let mut prefix = Prefix {
        buf: [0; DECISION_BYTES],
        len: 0,
    };
    loop {
        if let Some(found) = classify(&prefix.buf[..prefix.len]) {
            return Ok(Some((found, prefix)));
        }
        let n = io.read(&mut prefix.buf[prefix.len..]).await?;
        if n == 0 {
            return Ok(None);
        }
        prefix.len += n;
    }
}

/// The bytes detection consumed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prefix {
    buf: [u8; DECISION_BYTES],
    len: usize,
}

/// An I/O that first replays the bytes detection read.
#[derive(Debug)]
pub(crate) struct Prefixed<I> {
    prefix: Prefix,
    pos: usize,
    inner: I,
}

impl<I> Prefixed<I> {
    pub(crate) fn new(prefix: Prefix, inner: I) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = &this.prefix.buf[this.pos..this.prefix.len];
        if !rest.is_empty() {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_client_hellos_and_everything_else() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00];
        assert_eq!(classify(&hello), Some(Detected::Tls));
        for n in 0..DECISION_BYTES {
            assert_eq!(classify(&hello[..n]), None, "undecided after {n} bytes");
        }
        for (input, why) in [
            (&b"GET / HTTP/1.1\r\n"[..], "HTTP/1.1"),
            (b"PRI * HTTP/2.0\r\n", "the HTTP/2 preface"),
            (b"\x16hello", "0x16 then text"),
            (&[0x16, 0x03, 0x05, 0, 0, 1], "an unknown TLS minor version"),
            (
                &[0x16, 0x03, 0x01, 0, 4, 0x02],
                "a ServerHello, not a ClientHello",
            ),
            (&[0x15, 0x03, 0x03, 0, 2, 1], "a TLS alert record"),
            (&[0x16, 0x02], "an SSLv2-style version"),
        ] {
            assert_eq!(classify(input), Some(Detected::Plaintext), "{why}");
        }
    }

    #[tokio::test]
    async fn detects_a_client_hello_arriving_one_byte_at_a_time_and_replays_it() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let hello = [0x16u8, 0x03, 0x01, 0x00, 0x05, 0x01, 0xAA, 0xBB];
        let writer = tokio::spawn(async move {
            for b in hello {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (found, prefix) = detect(&mut server).await.unwrap().unwrap();
        assert_eq!(found, Detected::Tls);
        let _client = writer.await.unwrap();
        let mut replayed = Prefixed::new(prefix, server);
        let mut all = [0u8; 8];
        replayed.read_exact(&mut all).await.unwrap();
        assert_eq!(all, hello, "every byte reaches the TLS acceptor, in order");
    }

    #[tokio::test]
    async fn a_peer_that_closes_before_deciding_yields_none() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0x16, 0x03]).await.unwrap();
        drop(client);
        assert!(detect(&mut server).await.unwrap().is_none());
    }
}
