//! The `ferry` binary: parse → run → exit code. All the work is in the
//! `commands` modules, which are thin layers over `ferry_client` and
//! `ferry_server`.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod config;
mod exit;
mod output;
mod sessions;

use cli::{Cli, Command};

/// Every transfer allocates and frees a chunk-sized buffer per message; glibc
/// hands such buffers back to the kernel and faults them in again (~120,000
/// page faults per GiB uploaded). mimalloc keeps them: see docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits 2 with a usage message on bad arguments
    // File I/O runs on tokio's blocking pool. Its default ceiling (512
    // threads) let a burst of uploads cost ~150 MiB of stacks; past 128,
    // more threads only queue for the same disk.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().max_blocking_threads(128).build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = exit::code_for(&error);
            if code != ExitCode::SUCCESS {
                eprintln!("ferry: {error:#}");
            }
            code
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = &cli.connection;
    match cli.command {
        Command::Serve(args) => commands::serve::run(*args).await,
        Command::Token(command) => commands::token::run(command),
        Command::Put(args) => commands::put::run(server, args).await,
        Command::Get(args) => commands::get::run(server, args).await,
        Command::Ls(args) => commands::ls::run(server, args).await,
        Command::Stat(args) => commands::stat::run(server, args).await,
        Command::Rm(args) => commands::rm::run(server, args).await,
    }
}
