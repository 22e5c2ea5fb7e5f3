//! The HTTP server under the router: hyper's HTTP/1 connections, with the limits that
//! keep idle and slow clients from holding the server (a connection cap, a deadline for
//! each request's headers, an idle timeout), and hyper's own answers to requests it cannot
//! parse rewritten into the API's JSON errors.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::ApiError;

/// The largest request head (request line and headers) accepted; a larger one is 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// How long a request's headers may take to arrive, from when the server waits for
    /// them: when the connection opens, or once the previous response is sent.
    pub header_timeout: Duration,
    /// How long a connection may wait for its next byte while a request body is read or
    /// a response written.
    pub idle_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets
/// the requests in flight finish and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots_total = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(1 << 20));
    let slots = Arc::new(Semaphore::new(slots_total));
    let (closing, _) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((stream, peer, slot)) = accepted else {
            continue;
        };
        let connection =
            serve_connection(stream, peer, router.clone(), limits, closing.subscribe());
        tokio::spawn(async move {
            connection.await;
            drop(slot);
        });
    }
    drop(listener);
    closing.send_replace(());
    // Every connection holds a slot until it ends: all slots back means all closed.
    let _ = slots.acquire_many(slots_total as u32).await;
}

/// The next connection, once a slot is free. Beyond the cap, connections wait in the
/// kernel's backlog, holding no file descriptor of this process.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => Some((stream, peer, slot)),
        Err(error) => {
            // Out of file descriptors, or a connection gone before it was accepted: wait a
            // moment instead of spinning on the error.
            tracing::warn!(%error, "cannot accept a connection");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut closing: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        // What the `ConnectInfo` extractor reads, as axum's own server provides it.
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        // Without this, hyper keeps reading while a handler runs (to notice a client that
        // went away); then the idle timeout would count time the client is waiting for us.
        .half_close(true);
    let socket = TokioIo::new(Socket::new(stream, limits.idle_timeout));
    let mut connection = std::pin::pin!(builder.serve_connection(socket, service));
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = closing.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "connection closed on an error");
    }
}

/// The TCP stream as hyper sees it: an error once no byte has come or gone for the idle
/// timeout while hyper waits to read or write, and hyper's answers to requests it cannot
/// parse replaced by JSON ones.
struct Socket {
    stream: TcpStream,
    idle_timeout: Duration,
    /// When the last byte came or went.
    last_progress: Instant,
    deadline: Pin<Box<Sleep>>,
    rewritten: Option<Rewritten>,
}

/// The JSON answer written in place of hyper's.
struct Rewritten {
    bytes: Vec<u8>,
    written: usize,
    /// How many bytes of hyper's answer it stands for.
    replaces: usize,
}

impl Socket {
    fn new(stream: TcpStream, idle_timeout: Duration) -> Socket {
        let now = Instant::now();
        Socket {
            stream,
            idle_timeout,
            last_progress: now,
            deadline: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            rewritten: None,
        }
    }

    /// Pending while the wait is within the idle timeout; an error after it.
    fn poll_idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let due = self.last_progress + self.idle_timeout;
        if self.deadline.deadline() != due {
            self.deadline.as_mut().reset(due);
        }
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the connection was idle too long",
        )))
    }

    /// Whether `buf` begins hyper's answer to an unparsable request (or one is already
    /// being replaced).
    fn rewrites(&mut self, buf: &[u8]) -> bool {
        if self.rewritten.is_none() {
            self.rewritten = hypers_own_answer(buf).map(|(status, replaces)| Rewritten {
                bytes: json_answer(status),
                written: 0,
                replaces,
            });
        }
        self.rewritten.is_some()
    }

    fn poll_write_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(rewritten) = &mut self.rewritten else {
            return Poll::Ready(Ok(0));
        };
        while rewritten.written < rewritten.bytes.len() {
            let rest = &rewritten.bytes[rewritten.written..];
            match Pin::new(&mut self.stream).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(written)) => {
                    rewritten.written += written;
                    self.last_progress = Instant::now();
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return self.poll_idle(cx),
            }
        }
        let replaces = rewritten.replaces;
        self.rewritten = None;
        Poll::Ready(Ok(replaces))
    }

    fn progressed<T>(
        &mut self,
        poll: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => self.poll_idle(cx),
            Poll::Ready(result) => {
                self.last_progress = Instant::now();
                Poll::Ready(result)
            }
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.progressed(poll, cx)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrites(buf) {
            return this.poll_write_rewritten(cx);
        }
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.progressed(poll, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|buf| !buf.is_empty());
        if this.rewrites(first.map_or(&[][..], |buf| &buf[..])) {
            return this.poll_write_rewritten(cx);
        }
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.progressed(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// hyper answers a request it cannot parse by itself, before the router sees it: 400
/// (malformed), 414 (URI too long) or 431 (headers too large), each a bare head without
/// body or `Content-Type`, which no answer of the router has (its errors are JSON).
/// Answers the status and the length of that head when `buf` begins with one.
fn hypers_own_answer(buf: &[u8]) -> Option<(StatusCode, usize)> {
    let status = match buf.get(..13)? {
        b"HTTP/1.1 400 " => StatusCode::BAD_REQUEST,
        b"HTTP/1.1 414 " => StatusCode::URI_TOO_LONG,
        b"HTTP/1.1 431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = buf[..end].to_ascii_lowercase();
    let has = |line: &[u8]| head.windows(line.len()).any(|w| w == line);
    (!has(b"\r\ncontent-type:") && has(b"\r\ncontent-length: 0\r\n")).then_some((status, end))
}

/// The whole HTTP answer for `status`, with the headers every answer carries.
fn json_answer(status: StatusCode) -> Vec<u8> {
    let error = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::new(
            status,
            "headers_too_large",
            format!(
                "the request's headers are larger than the {} KiB the server accepts",
                MAX_HEADER_BYTES / 1024
            ),
        ),
        StatusCode::URI_TOO_LONG => ApiError::new(
            status,
            "uri_too_long",
            "the request's URI is longer than the server accepts",
        ),
        _ => ApiError::new(
            status,
            "malformed_request",
            "the request is not valid HTTP/1.1",
        ),
    };
    let body = error.json();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {}\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n{body}",
        body.len(),
        crate::store::new_id("req"),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_answers_are_rewritten() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\
                      date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        assert_eq!(
            hypers_own_answer(hyper),
            Some((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, hyper.len()))
        );
        let router = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                       content-length: 0\r\n\r\n";
        assert_eq!(hypers_own_answer(router), None);
        assert_eq!(hypers_own_answer(b"HTTP/1.1 200 OK\r\n\r\n"), None);
        assert_eq!(hypers_own_answer(b"HTTP/1.1 400 Bad"), None);

        let answer = String::from_utf8(json_answer(StatusCode::BAD_REQUEST)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "malformed_request");
    }
}
