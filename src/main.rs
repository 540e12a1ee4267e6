//! The `oomsnap` command: parses the command line and hands over to the
//! library. `run` (the image's default command) wires the whole pipeline;
//! the others are for people at a terminal. A bare `oomsnap` prints the
//! help and exits with 2, as for any other missing argument.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use oomsnap::config::{Config, LogFormat, ProcessEnv, Vars};

/// Captures Go pprof profiles before the kernel OOM-kills the app.
#[derive(Parser, Debug)]
#[command(
    name = "oomsnap",
    version,
    about,
    long_about = None,
    subcommand_required = true,
    arg_required_else_help = true,
    disable_help_subcommand = true,
    after_help = "The container image runs `oomsnap run`. `oomsnap help config` lists every variable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch memory and capture profiles near the limit (the image's default command).
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
    /// Print what grew in a capture, and the pprof commands to dig further.
    Report(oomsnap::cli::ReportArgs),
    /// Print help: `help config` for every variable, `help <command>` for one command.
    Help {
        /// `config`, or a command such as `ls`.
        topic: Option<String>,
        /// With `config`: only the variables whose name holds this word.
        word: Option<String>,
    },
}

/// The one hint every configuration error ends with: it works inside the
/// image, where the repository's docs are not.
const CONFIG_HINT: &str = "Run `oomsnap help config` for every variable and its form.";

fn help(topic: Option<&str>, word: Option<&str>) -> ExitCode {
    let mut cli = Cli::command();
    match topic {
        None => {
            let _ = cli.print_long_help();
            ExitCode::SUCCESS
        }
        Some("config") => {
            print!("{}", oomsnap::cli::help::config(word));
            ExitCode::SUCCESS
        }
        Some(name) => match cli.find_subcommand_mut(name) {
            Some(sub) => {
                let _ = sub
                    .clone()
                    .bin_name(format!("oomsnap {name}"))
                    .print_long_help();
                ExitCode::SUCCESS
            }
            None => {
                let names: Vec<String> = cli
                    .get_subcommands()
                    .map(|c| c.get_name().to_string())
                    .filter(|n| n != "help")
                    .collect();
                eprintln!(
                    "oomsnap: there is no help on {name:?}; ask for `config` or one of the commands: {}.",
                    names.join(", ")
                );
                ExitCode::from(2)
            }
        },
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Colour only for a person: a file or a log pipeline gets plain text.
    let colour = std::io::stderr().is_terminal() && ProcessEnv.get("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
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
            eprintln!("{CONFIG_HINT}");
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
    let command = Cli::parse().command;
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
        Command::Help { topic, word } => help(topic.as_deref(), word.as_deref()),
        Command::Ls(a) => {
            init_logs(LogFormat::Text);
            oomsnap::cli::exit(runtime().block_on(oomsnap::cli::ls(a, &ProcessEnv)))
        }
        Command::Get(a) => {
            init_logs(LogFormat::Text);
            oomsnap::cli::exit(runtime().block_on(oomsnap::cli::get(a, &ProcessEnv)))
        }
        Command::Report(a) => {
            init_logs(LogFormat::Text);
            oomsnap::cli::exit(runtime().block_on(oomsnap::cli::report(a, &ProcessEnv)))
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
                eprintln!("OOMSNAP_STRICT=true, so oomsnap stops here. {CONFIG_HINT}");
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
