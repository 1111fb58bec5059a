use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use conversation_sessions::cli::Cli;
use conversation_sessions::{shutdown_signal, telemetry, Application};

/// The service allocates and frees many small buffers per request; mimalloc does that with
/// less CPU than the system allocator (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit`: its place in the `mi_option_e` enum of
/// `mimalloc.h`, which the bindings do not name.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets the allocator's options before anything allocates. mimalloc reserves its first arena
/// on the first allocation, and the Rust runtime allocates before `main`, so an option set in
/// `main` comes too late for that arena. A constructor in `.init_array` runs before the
/// runtime starts.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static SET_ALLOCATOR_OPTIONS: extern "C" fn() = set_allocator_options;

/// By default mimalloc commits its arenas eagerly on Linux and does not return that memory
/// to the OS: the service's peak RSS grew with every burst of large batches, to 51-58 MiB in
/// the benchmark's MongoDB run. Committed on demand, the peak stays under 40 MiB (see
/// BENCHMARKS.md).
extern "C" fn set_allocator_options() {
    // SAFETY: mimalloc's options may be set at any time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

/// How long the exit waits for tasks still running once the service has stopped.
const EXIT_LIMIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    #[cfg(not(target_os = "linux"))]
    set_allocator_options();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("could not start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run());
    // Dropping the runtime would wait, with no limit, for work in its blocking threads,
    // such as a host name lookup for a database that does not answer.
    runtime.shutdown_timeout(EXIT_LIMIT);
    code
}

async fn run() -> ExitCode {
    if let Err(err) = load_dotenv() {
        eprintln!("configuration error: {err}");
        return ExitCode::from(2);
    }
    let config = match Cli::parse().into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    // Listening from the start: a signal while startup waits for the database stops it
    // cleanly too, instead of killing the process.
    let mut signal = Box::pin(shutdown_signal());
    let built = tokio::select! {
        built = Application::build(&config) => built,
        () = &mut signal => {
            tracing::info!("stopped before startup finished");
            return ExitCode::SUCCESS;
        }
    };
    let app = match built {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %error_chain(&err), "startup failed");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(signal).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Loads `.env` from the current directory or the nearest parent that has one. A missing
/// one is normal: the environment alone may configure everything. A line that cannot be
/// read stops startup, since every setting after it would be dropped unseen; it is named by
/// its number and key, not shown, since its value may be a key or a password.
fn load_dotenv() -> Result<(), String> {
    let Ok(dir) = std::env::current_dir() else {
        return Ok(());
    };
    let Some(path) = dir
        .ancestors()
        .map(|d| d.join(".env"))
        .find(|p| p.is_file())
    else {
        return Ok(());
    };
    let shown = path.display();
    match dotenvy::from_path(&path) {
        Ok(()) => Ok(()),
        Err(dotenvy::Error::LineParse(unread, _)) => {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let found = text
                .lines()
                .enumerate()
                .find(|(_, line)| line.contains(unread.as_str()));
            Err(match found {
                Some((index, line)) => {
                    let key = line
                        .split_once('=')
                        .map_or(String::new(), |(key, _)| format!(" ({})", key.trim()));
                    format!(
                        "{shown}: line {}{key} cannot be read (a value with spaces or quotes \
                         in it needs quoting)",
                        index + 1
                    )
                }
                None => format!("{shown}: a line cannot be read"),
            })
        }
        Err(err) => Err(format!("{shown}: {err}")),
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
