//! The server-side deadline of a call: the smaller of the client's deadline
//! (its `grpc-timeout` header) and the server's own limit. A call still
//! running then ends with CANCELLED ("Timeout expired"; the client itself
//! reports DEADLINE_EXCEEDED).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{HeaderMap, Request};
use tonic::TimeoutExpired;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header a gRPC client sends its deadline in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The client's deadline, if its `grpc-timeout` header is well-formed: at
/// most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`; gRPC over HTTP/2).
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(GRPC_TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount = digits
        .iter()
        .fold(0u64, |sum, digit| sum * 10 + u64::from(digit - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(amount * 60 * 60),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Ends calls at their deadline: the smaller of the client's and `limit`.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
}

impl<S> Deadline<S> {
    /// `inner`, whose calls run for at most `limit`.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self { inner, limit }
    }
}

impl<S, B> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout =
            client_timeout(request.headers()).map_or(self.limit, |client| client.min(self.limit));
        DeadlineFuture {
            inner: tokio::time::timeout(timeout, self.inner.call(request)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's response, or [`TimeoutExpired`] once its deadline passed
    /// (tonic's `RecoverError` turns it into the status CANCELLED).
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().inner.poll(cx)) {
            Ok(result) => result.map_err(Into::into),
            Err(_elapsed) => Err(TimeoutExpired(()).into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, value.parse().unwrap());
        client_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let hour = Duration::from_secs(3600);
        let read = [
            ("2H", 2 * hour),
            ("3M", hour / 20),
            ("4S", Duration::from_secs(4)),
            ("300m", Duration::from_millis(300)),
            ("5u", Duration::from_micros(5)),
            ("99999999n", Duration::from_nanos(99_999_999)),
            ("99999999H", 99_999_999 * hour),
        ];
        for (value, duration) in read {
            assert_eq!(timeout_of(value), Some(duration), "{value:?}");
        }
        for bad in ["", "S", "10", "10s", "123456789S", "-1S", "1.5S", "1 S"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
        assert_eq!(client_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_ends_at_the_smaller_of_the_two_deadlines() {
        use tower::ServiceExt;
        let slow = tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>("done")
        });
        let service = Deadline::new(slow, Duration::from_secs(30));
        for (header, expected) in [(None, 30), (Some("10S"), 10), (Some("1H"), 30)] {
            let mut request = Request::new(());
            if let Some(header) = header {
                request
                    .headers_mut()
                    .insert(GRPC_TIMEOUT, header.parse().unwrap());
            }
            let started = tokio::time::Instant::now();
            let err = service.clone().oneshot(request).await.unwrap_err();
            assert!(err.is::<TimeoutExpired>(), "{err}");
            assert_eq!(
                started.elapsed(),
                Duration::from_secs(expected),
                "{header:?}"
            );
        }
    }
}
