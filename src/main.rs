use std::process::ExitCode;

use clap::Parser;

use conversation_sessions::cli::Cli;
use conversation_sessions::{shutdown_signal, telemetry, Application};

/// The service allocates and frees many small buffers per request; mimalloc does that with
/// less CPU than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` and `mi_option_purge_delay`: their places in
/// the `mi_option_e` enum of `mimalloc.h`, which the bindings do not name.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // By default mimalloc commits its arenas eagerly and returns freed memory to the OS
    // 10 ms late; a burst of large batches then left the RSS above 70 MiB for good. Memory
    // committed on demand and returned at once keeps it near 20 MiB, at no measurable cost
    // in throughput (see BENCHMARKS.md). Set before the runtime allocates anything.
    // SAFETY: mimalloc's options may be set at any time, from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    // A missing .env is normal; the environment alone may configure everything.
    let _ = dotenvy::dotenv();
    let config = match Cli::parse().into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let app = match Application::build(&config).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %error_chain(&err), "startup failed");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
