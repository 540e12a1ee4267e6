//! The `oomsnap` command: parses the command line and hands over to the
//! library. `run` (the container's default) wires the whole pipeline;
//! `watch`, `check` and `capture` are for people at a terminal.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use oomsnap::config::{Config, LogFormat, ProcessEnv};

/// Captures Go pprof profiles before the kernel OOM-kills the app.
#[derive(Parser, Debug)]
#[command(name = "oomsnap", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch memory and capture profiles near the limit (the default).
    Run,
    /// Watch memory and log each decision, capturing nothing.
    Watch,
    /// Print the resolved configuration, the located memory and one sample.
    Check,
    /// Take one capture now, ship it, and print where it went.
    Capture,
    /// Serve the mutating admission webhook that injects the sidecar.
    Inject(oomsnap::inject::InjectArgs),
    /// List captures in a store, newest first.
    Ls(oomsnap::cli::LsArgs),
    /// Download one capture's files.
    Get(oomsnap::cli::GetArgs),
    /// Print what grew in a capture, and the pprof command to dig further.
    Report(oomsnap::cli::ReportArgs),
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().flatten_event(true).with_current_span(false).init();
    } else {
        b.with_target(false).init();
    }
}

fn load_config(format_override: Option<LogFormat>) -> Result<Config, ExitCode> {
    match Config::from_vars_known(&ProcessEnv, oomsnap::inject::KNOWN_VARS) {
        Ok((config, warnings)) => {
            init_logs(format_override.unwrap_or(config.log_format));
            for w in &warnings {
                tracing::warn!("{w}");
            }
            Ok(config)
        }
        Err(errors) => {
            eprintln!("oomsnap: {errors}");
            eprintln!("See docs/configuration.md for every variable and its form.");
            Err(ExitCode::from(2))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    // One thread is enough: the watcher has its own OS thread, and captures
    // and uploads are I/O-bound. It keeps the sidecar's footprint small.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn main() -> ExitCode {
    // glibc gives each thread that allocates its own arena; two are plenty
    // for a watcher thread and a one-thread runtime, and keep idle RSS low.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    let interactive = match &command {
        Command::Run | Command::Watch | Command::Inject(_) => None,
        _ => Some(LogFormat::Text),
    };
    match command {
        Command::Inject(args) => {
            init_logs(LogFormat::Auto);
            match runtime().block_on(oomsnap::inject::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("oomsnap inject: {e}");
                    match e {
                        oomsnap::inject::InjectError::Config(_) => ExitCode::from(2),
                        _ => ExitCode::FAILURE,
                    }
                }
            }
        }
        Command::Ls(a) => {
            init_logs(LogFormat::Text);
            oomsnap::cli::exit(runtime().block_on(oomsnap::cli::ls(a)))
        }
        Command::Get(a) => {
            init_logs(LogFormat::Text);
            oomsnap::cli::exit(runtime().block_on(oomsnap::cli::get(a)))
        }
        Command::Report(a) => {
            init_logs(LogFormat::Text);
            oomsnap::cli::exit(runtime().block_on(oomsnap::cli::report(a)))
        }
        Command::Check => {
            let config = match load_config(interactive) {
                Ok(c) => c,
                Err(code) => return code,
            };
            oomsnap::cli::exit(runtime().block_on(oomsnap::cli::check(config)))
        }
        Command::Capture => {
            let config = match load_config(interactive) {
                Ok(c) => c,
                Err(code) => return code,
            };
            oomsnap::cli::exit(runtime().block_on(oomsnap::cli::capture(config)))
        }
        Command::Run | Command::Watch => {
            let mode = if matches!(command, Command::Watch) {
                oomsnap::run::Mode::Watch
            } else {
                oomsnap::run::Mode::Run
            };
            // Lenient: a bad variable falls back to its default and is
            // reported, because a sidecar that exits crash-loops and makes
            // the pod NotReady. OOMSNAP_STRICT=true asks for the opposite.
            let loaded = Config::load(&ProcessEnv, oomsnap::inject::KNOWN_VARS);
            if loaded.config.strict && !loaded.errors.0.is_empty() {
                eprintln!("oomsnap: {}", loaded.errors);
                eprintln!("OOMSNAP_STRICT=true, so oomsnap stops here. See docs/configuration.md for every variable and its form.");
                return ExitCode::from(2);
            }
            init_logs(loaded.config.log_format);
            let rt = runtime();
            rt.block_on(oomsnap::run::run(loaded, mode));
            // Work still on blocking threads (an fsync, a summary) past the
            // shutdown grace is left behind rather than waited for.
            rt.shutdown_timeout(std::time::Duration::from_millis(500));
            ExitCode::SUCCESS
        }
    }
}
