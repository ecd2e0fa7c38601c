//! The dashboard: the "Connect > Connections" page (SPEC section 9), built from
//! `dashboard/` into `dashboard/dist/` and embedded in the binary. It is served
//! at `/` on the API's port, next to gRPC and gRPC-Web, and calls the public
//! API over gRPC-Web from the same origin, like any other client.
//!
//! Every response carries a Content-Security-Policy that allows scripts,
//! styles and connections to this origin only, forbids framing, and is
//! served with `nosniff` and no referrer.

use axum::{
    Router,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

/// The built page, embedded at compile time.
#[derive(rust_embed::Embed)]
#[folder = "dashboard/dist/"]
struct Assets;

/// What the page may load: its own scripts, styles and API, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The page's routes: `/` and its hashed assets under `/assets/`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index() -> Response {
    serve("index.html", "no-cache")
}

async fn asset(Path(file): Path<String>) -> Response {
    // Asset names carry a hash of their content: they never change.
    serve(
        &format!("assets/{file}"),
        "public, max-age=31536000, immutable",
    )
}

fn serve(path: &str, cache_control: &'static str) -> Response {
    let mut response = match Assets::get(path) {
        Some(file) => (
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CACHE_CONTROL, cache_control),
            ],
            file.data,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_page_is_embedded_and_loads_only_its_own_assets() {
        let index = Assets::get("index.html").expect("dashboard/dist/index.html");
        let html = std::str::from_utf8(&index.data).unwrap();
        let mut assets = 0;
        for reference in html
            .split(['"', '\''])
            .filter(|s| s.starts_with("/assets/"))
        {
            assert!(
                Assets::get(reference.trim_start_matches('/')).is_some(),
                "{reference} is not embedded"
            );
            assets += 1;
        }
        assert!(assets >= 2, "a script and a stylesheet: {html}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "no inline script: {html}");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/index-1.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/x"), "application/octet-stream");
    }
}
