//! The `raftlord` binary.

use clap::Parser;
use mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

// Many small, short-lived allocations per request (JSON, HTTP): mimalloc handles them with less
// CPU than the system allocator.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RAFTLORD_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = raftlord::cli::Cli::parse();
    let code = match raftlord::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("raftlord: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
