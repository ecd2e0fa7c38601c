//! Ends open streams when the server stops.
//!
//! A graceful stop waits for every call in flight. A unary call ends on its
//! own; a stream (health Watch, a reflection session the client never closes,
//! any server stream) would hold the server up forever. [`EndStreamsLayer`]
//! wraps every response body: once the stop begins, a body that has nothing
//! ready to send ends at once, with the status UNAVAILABLE, so the client
//! knows to reconnect elsewhere; a request stream the client keeps open ends
//! as if the client had closed it. What a body has ready is sent first, so a
//! unary response (ready in full when its handler returns) and a last stream
//! message (e.g. health's NOT_SERVING) are never cut.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Wraps response bodies in [`EndOnStop`].
#[derive(Debug, Clone)]
pub struct EndStreamsLayer {
    stopping: CancellationToken,
}

impl EndStreamsLayer {
    /// Ends streams once `stopping` is cancelled.
    pub fn new(stopping: CancellationToken) -> Self {
        Self { stopping }
    }
}

impl<S> tower::Layer<S> for EndStreamsLayer {
    type Service = EndStreams<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EndStreams {
            inner,
            stopping: self.stopping.clone(),
        }
    }
}

/// See [`EndStreamsLayer`].
#[derive(Debug, Clone)]
pub struct EndStreams<S> {
    inner: S,
    stopping: CancellationToken,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for EndStreams<S>
where
    S: tower::Service<http::Request<EndOnStop<ReqBody>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    type Response = http::Response<EndOnStop<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let stopping = self.stopping.clone();
        // The request side of a stream ends too (as if the client had
        // half-closed it), so that handlers reading it finish.
        let request = request.map(|inner| EndOnStop {
            inner,
            stop: Box::pin(stopping.clone().cancelled_owned()),
            trailers: false,
            ended: false,
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // A gRPC response ends with trailers (for gRPC-Web, the
            // translation outside this layer writes them into the body).
            let trailers = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.starts_with("application/grpc"));
            Ok(response.map(|inner| EndOnStop {
                inner,
                stop: Box::pin(stopping.cancelled_owned()),
                trailers,
                ended: false,
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends, with UNAVAILABLE, once the server stops and
    /// it has nothing ready to send.
    pub struct EndOnStop<B> {
        #[pin]
        inner: B,
        stop: Pin<Box<WaitForCancellationFutureOwned>>,
        trailers: bool,
        ended: bool,
    }
}

impl<B: Default> Default for EndOnStop<B> {
    /// An empty body that no stop ends (for responses made by layers).
    fn default() -> Self {
        Self {
            inner: B::default(),
            stop: Box::pin(CancellationToken::new().cancelled_owned()),
            trailers: false,
            ended: false,
        }
    }
}

/// The trailers of a stream the stop ended: UNAVAILABLE, with the reason
/// `ERROR_REASON_SERVER_STOPPING`.
fn unavailable() -> HeaderMap {
    let status = tonic::Status::from(crate::service::ServiceError::ServerStopping);
    let mut trailers = HeaderMap::new();
    // Only fails for a message that is not a valid header value.
    let _ = status.add_header(&mut trailers);
    trailers
}

impl<B: Body<Data = Bytes>> Body for EndOnStop<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => return Poll::Ready(frame),
            Poll::Pending => {}
        }
        match this.stop.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *this.ended = true;
                if *this.trailers {
                    Poll::Ready(Some(Ok(Frame::trailers(unavailable()))))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
