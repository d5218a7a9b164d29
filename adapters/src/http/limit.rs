//! A request body size limit that, unlike poem's `SizeLimit`, does not demand `Content-Length` on
//! requests without a body (a `GET` must not get 411).

use poem::http::StatusCode;
use poem::{Body, Endpoint, Middleware, Request};

use super::Problem;

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

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> poem::Result<Self::Output> {
        let declared = req.header("content-length").map(str::parse::<usize>);
        match declared {
            Some(Ok(length)) if length > self.max => return Err(too_large(self.max).into()),
            Some(Ok(_)) => {}
            Some(Err(_)) => return Err(Problem::invalid("Content-Length", "is not a number").into()),
            // Chunked bodies announce no length: read at most one byte past the limit to find out.
            None => {
                let body = req.take_body().into_bytes_limit(self.max).await.map_err(|_| too_large(self.max))?;
                req.set_body(Body::from(body));
            }
        }
        self.inner.call(req).await
    }
}
