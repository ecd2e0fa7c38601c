//! Limits the transport enforces the same way on HTTP/2 and HTTP/1.1
//! (gRPC-Web), and the status a request over them gets.
//!
//! - A request whose header list is larger than [`MAX_HEADER_LIST_SIZE`]
//!   (counted as HTTP/2 counts it: name, value and 32 bytes per field) is
//!   refused with `431 Request Header Fields Too Large`. HTTP/2 connections
//!   advertise and enforce the limit in h2; HTTP/1.1 requests are checked
//!   here, since hyper's own HTTP/1 limits are far larger.
//! - A request message over the size limit is RESOURCE_EXHAUSTED, the code
//!   gRPC's status-code guide gives it (tonic's codec says OUT_OF_RANGE).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response, StatusCode, Version};

/// Largest header list (metadata) accepted per request, in bytes.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Bytes HTTP/2 adds to each header field when it sizes a header list
/// (RFC 9113, section 6.5.2).
const FIELD_OVERHEAD: usize = 32;

/// The start of the message tonic's codec gives a request message over the
/// size limit.
const MESSAGE_TOO_LARGE: &str = "Error, decoded message length too large";

/// The size of a request's header list as HTTP/2 counts it, with the request
/// line counted as HTTP/2's pseudo-header fields.
fn header_list_size<B>(request: &Request<B>) -> usize {
    let pseudo = [
        request.method().as_str().len(),
        request
            .uri()
            .path_and_query()
            .map_or(1, |p| p.as_str().len()),
    ];
    let pseudo: usize = pseudo.iter().map(|len| len + FIELD_OVERHEAD).sum();
    request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD)
        .fold(pseudo, usize::saturating_add)
}

/// Rewrites a trailers-only OUT_OF_RANGE "message too large" status, in
/// `headers`, to RESOURCE_EXHAUSTED.
pub(super) fn message_too_large_is_resource_exhausted(headers: &mut HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() == tonic::Code::OutOfRange && status.message().starts_with(MESSAGE_TOO_LARGE) {
        let status = tonic::Status::resource_exhausted(status.message());
        // The message came from a valid header, so it encodes again.
        let _ = status.add_header(headers);
    }
}

/// Applies the transport's limits (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitsLayer;

impl<S> tower::Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limits { inner }
    }
}

/// See [`LimitsLayer`].
#[derive(Debug, Clone)]
pub struct Limits<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Limits<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if request.version() < Version::HTTP_2
            && header_list_size(&request) > MAX_HEADER_LIST_SIZE as usize
        {
            let mut response = Response::new(ResBody::default());
            *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            return Box::pin(std::future::ready(Ok(response)));
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            message_too_large_is_resource_exhausted(response.headers_mut());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lists_are_sized_as_http2_sizes_them() {
        let request = Request::post("/a.B/C")
            .header("x-one", "12345")
            .body(())
            .unwrap();
        // :method POST, :path /a.B/C, x-one: 12345.
        assert_eq!(
            header_list_size(&request),
            (4 + 32) + (6 + 32) + (5 + 5 + 32)
        );
    }

    #[test]
    fn only_the_message_size_status_is_rewritten() {
        let mut too_large = HeaderMap::new();
        tonic::Status::out_of_range(format!("{MESSAGE_TOO_LARGE}: found 9 bytes"))
            .add_header(&mut too_large)
            .unwrap();
        message_too_large_is_resource_exhausted(&mut too_large);
        let status = tonic::Status::from_header_map(&too_large).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().starts_with(MESSAGE_TOO_LARGE));

        let mut other = HeaderMap::new();
        tonic::Status::out_of_range("page past the end")
            .add_header(&mut other)
            .unwrap();
        message_too_large_is_resource_exhausted(&mut other);
        let status = tonic::Status::from_header_map(&other).unwrap();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
    }
}
