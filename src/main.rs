//! The `raftlord` binary.

use clap::Parser;
use tracing_subscriber::EnvFilter;

// Many small, short-lived allocations per request (JSON, HTTP): mimalloc handles them with less
// CPU than the system allocator. The wrapper counts live bytes for `/status`.
#[global_allocator]
static GLOBAL: raftlord::alloc::CountingAllocator = raftlord::alloc::CountingAllocator;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RAFTLORD_LOG").unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = raftlord::cli::Cli::parse();
    if let raftlord::cli::Command::PeonLauncher = &cli.command {
        // Forks peons: must stay single-threaded, so it runs before any runtime exists.
        std::process::exit(raftlord::worker::launcher::serve());
    }
    if let raftlord::cli::Command::Peon { task_dir } = &cli.command {
        raftlord::worker::peon::use_small_pages();
        // A peon runs one task: a single-threaded runtime is enough, and it leaves without
        // running the static destructors of the linked C++ code, which a peon never used.
        let code = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(raftlord::worker::peon::run(task_dir)),
            Err(e) => {
                eprintln!("raftlord peon: cannot start a runtime: {e}");
                2
            }
        };
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: `_exit` ends the process at once; stdout was flushed above and nothing else
        // is left to write.
        unsafe { libc::_exit(code) }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raftlord: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match runtime.block_on(raftlord::cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("raftlord: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
