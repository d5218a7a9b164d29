//! A request body size limit that, unlike poem's `SizeLimit`, does not demand `Content-Length` on
//! requests without a body (a `GET` must not get 411), and that reads an oversized body to its end before
//! answering, so the client reads the 413 rather than a broken pipe.

use std::time::Duration;

use poem::http::StatusCode;
use poem::{Body, Endpoint, Middleware, Request};
use tokio::io::AsyncReadExt;

use super::Problem;

/// The most of an oversized body read and thrown away before answering 413. A server that answers and
/// closes while the upload is still arriving resets the connection, and a client that writes its whole
/// body before reading (Python's urllib, curl without `Expect`) then sees a broken pipe instead of the
/// problem; nginx's lingering close does the same. Bodies announced larger than this get the 413 at once.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// How long an oversized body may take to arrive while it is thrown away.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses bodies above `max` bytes with a 413 problem, before any handler parses them.
pub struct BodyLimit {
    /// The largest body accepted, in bytes.
    pub max: usize,
}

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        BodyLimitEndpoint { inner, max: self.max }
    }
}

/// See [`BodyLimit`].
pub struct BodyLimitEndpoint<E> {
    inner: E,
    max: usize,
}

fn too_large(max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "Payload too large",
        format!("the request body must be at most {max} bytes"),
    )
}

/// Reads and discards what is left of `body`, up to [`DRAIN_LIMIT`] bytes and [`DRAIN_TIMEOUT`].
async fn drain(body: impl tokio::io::AsyncRead + Unpin) {
    let mut rest = body.take(DRAIN_LIMIT);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tokio::io::copy(&mut rest, &mut tokio::io::sink())).await;
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let declared = req.header("content-length").map(str::parse::<u64>);
        let max = u64::try_from(self.max).unwrap_or(u64::MAX);
        match declared {
            Some(Ok(length)) if length > max => {
                if length <= DRAIN_LIMIT {
                    drain(req.take_body().into_async_read()).await;
                }
                return Err(too_large(self.max).into());
            }
            Some(Ok(_)) => {}
            Some(Err(_)) => return Err(Problem::invalid("Content-Length", "is not a number").into()),
            // Chunked bodies announce no length: read at most one byte past the limit to find out.
            None => {
                let mut body = req.take_body().into_async_read();
                let mut kept = Vec::new();
                let read = (&mut body).take(max + 1).read_to_end(&mut kept).await;
                if read.is_err() || kept.len() > self.max {
                    drain(body).await;
                    return Err(too_large(self.max).into());
                }
                req.set_body(Body::from(kept));
            }
        }
        self.inner.call(req).await
    }
}
