//! The dashboard's page, served at `/` next to the API: over HTTP/1.1 and
//! HTTP/2, with its security headers, and not at all when turned off. (The
//! page itself is tested in a browser: `dashboard/test/`.)

use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::support::{TestDatabase, process::Server, spawn_app};

/// The answer to `GET http://{addr}{path}`: status, headers, body.
async fn get(
    addr: std::net::SocketAddr,
    path: &str,
    http2: bool,
) -> (http::StatusCode, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<Empty<bytes::Bytes>>();
    let response = client
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .expect("GET");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// The page's own assets, as index.html references them.
fn assets(html: &str) -> Vec<String> {
    html.split(['"', '\''])
        .filter(|s| s.starts_with("/assets/"))
        .map(str::to_owned)
        .collect()
}

#[track_caller]
fn assert_secure(headers: &http::HeaderMap) {
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_over_http1_and_http2_with_security_headers() {
    let app = spawn_app().await;
    for http2 in [false, true] {
        let (status, headers, html) = get(app.addr, "/", http2).await;
        assert_eq!(status, 200, "http2: {http2}");
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_secure(&headers);
        assert!(html.contains(r#"<div id="app">"#), "{html}");
        let assets = assets(&html);
        assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
        assert!(assets.iter().any(|a| a.ends_with(".css")), "{assets:?}");
        for asset in assets {
            let (status, headers, _) = get(app.addr, &asset, http2).await;
            assert_eq!(status, 200, "{asset}");
            assert_secure(&headers);
            let content_type = headers["content-type"].to_str().unwrap();
            assert!(
                content_type.starts_with("text/javascript") || content_type.starts_with("text/css"),
                "{asset}: {content_type}"
            );
            assert!(
                headers["cache-control"]
                    .to_str()
                    .unwrap()
                    .contains("immutable")
            );
        }
        let (status, headers, _) = get(app.addr, "/assets/missing.js", http2).await;
        assert_eq!(status, 404);
        assert_secure(&headers);
    }
    // The API is still served on the same port.
    app.new_org("Beside the page").await;
}

/// Whether the server at `addr` serves the page.
async fn serves_the_page(addr: std::net::SocketAddr) -> bool {
    let (status, headers, _) = get(addr, "/", false).await;
    status == 200
        && headers
            .get("content-type")
            .is_some_and(|value| value.to_str().unwrap().starts_with("text/html"))
}

#[tokio::test]
async fn no_dashboard_and_its_environment_variable_turn_the_page_off() {
    let (_database, url) = TestDatabase::create(true).await;
    let on = Server::start_with(&url, &[], &[]).await;
    assert!(serves_the_page(on.addr).await);
    on.signal("-TERM");
    assert!(on.wait().await.success());

    let off = Server::start_with(&url, &["--no-dashboard"], &[]).await;
    assert!(!serves_the_page(off.addr).await);
    off.signal("-TERM");
    assert!(off.wait().await.success());

    let off = Server::start_with(&url, &[], &[("CONNECTIONS_DASHBOARD", "false")]).await;
    assert!(!serves_the_page(off.addr).await);
    // The API is still served.
    let org = crate::support::process::new_org(&url, "Without the page");
    crate::support::process::Server::client(&off, &org)
        .list_connections(connections::proto::ListConnectionsRequest::default())
        .await
        .expect("the API answers");
    off.signal("-TERM");
    assert!(off.wait().await.success());
}
