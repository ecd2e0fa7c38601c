//! The baseline: a bare tonic server with one unary method and no work behind
//! it. What it reaches is the ceiling the transport and the load generator
//! allow on this machine.

use std::net::SocketAddr;

use tonic::{Request, Response, Status, transport::Server};

/// Code generated from `proto/hello/v1/hello.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("hello.v1");
}

use proto::{
    SayHelloRequest, SayHelloResponse,
    hello_service_server::{HelloService, HelloServiceServer},
};

struct Hello;

#[tonic::async_trait]
impl HelloService for Hello {
    async fn say_hello(
        &self,
        request: Request<SayHelloRequest>,
    ) -> Result<Response<SayHelloResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(SayHelloResponse {
            message: format!("Hello, {name}!"),
        }))
    }
}

/// Serves the hello-world API on `listen` until SIGTERM or SIGINT.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    Server::builder()
        .add_service(HelloServiceServer::new(Hello))
        .serve_with_shutdown(listen, async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}
