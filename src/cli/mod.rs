//! The commands for people: `check`, `capture`, `ls`, `get`, `report` and
//! `help config`.
//!
//! Arguments enter as clap structs and the environment through
//! [`Vars`](crate::vars::Vars); tables or JSON leave on stdout, progress
//! and logs on stderr. Errors are sentences ([`CliError`]) and map to exit
//! codes: 1 for a failure, 2 for bad configuration or arguments.
//!
//! - [`address`] — store URL ↔ object key ↔ capture id: what an argument names
//! - [`catalog`] — finds captures by their keys, then reads manifests concurrently
//! - [`display`] — human formatting: function names, lead times, shell quoting
//! - [`ls`], [`get`], [`report`] — the commands that only read a store
//! - [`check`] — `check` and `capture`, which take the sidecar's configuration
//! - [`help`] — `oomsnap help config`: the variable reference, in a terminal

pub(crate) mod address;
pub(crate) mod catalog;
pub mod check;
pub(crate) mod display;
pub mod get;
pub mod help;
pub mod ls;
pub mod report;

use std::process::ExitCode;

pub use check::{capture, check};
pub use get::{get, GetArgs};
pub use ls::{ls, LsArgs};
pub use report::{report, ReportArgs};

/// A command that failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Usage(String),
}

/// Maps a command's result to an exit code, printing the error.
pub fn exit(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Failed(e)) => {
            eprintln!("oomsnap: {e}");
            ExitCode::FAILURE
        }
        Err(CliError::Usage(e)) => {
            eprintln!("oomsnap: {e}");
            ExitCode::from(2)
        }
    }
}

pub(crate) fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// What `-o/--output` asks for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// A table or report for people.
    #[default]
    Text,
    /// JSON for scripts.
    Json,
}

/// The output flags shared by `ls` and `report`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FormatArgs {
    /// Print text for people or JSON for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The same as --output json.
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
}

impl FormatArgs {
    pub fn json(&self) -> bool {
        self.json || self.output == Output::Json
    }
}

/// The store flag shared by `ls`, `get` and `report`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreArg {
    /// The store to read, such as s3://bucket/prefix or file:///var/lib/oomsnap/store.
    /// Defaults to OOMSNAP_STORE, then to the sidecar's default store.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}
