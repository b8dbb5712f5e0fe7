//! `floodgate-demo-upstream`: a tiny app to put behind the sidecar when trying it out.

use std::sync::Arc;

use clap::Parser;

/// A demo application for trying Floodgate: `/` (and any other path) says hello, `/echo`
/// echoes the request, `/slow?ms=N` (or `/sleep/N`) answers after N ms, `/fail` answers 500.
/// Speaks HTTP/1.1 and h2c.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: std::net::SocketAddr,
    /// Name it answers with (`hello from NAME`).
    #[arg(long, default_value = "demo-upstream")]
    name: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "floodgate-demo-upstream: cannot listen on {}: {e}",
                cli.listen
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("floodgate-demo-upstream listening on {}", cli.listen);
    floodgate::demo::serve(listener, &cli.name, Arc::new(Default::default())).await;
    std::process::ExitCode::SUCCESS
}
