//! The mutating admission webhook (being merged).

/// Arguments of `oomsnap inject`.
#[derive(clap::Args, Debug, Clone)]
pub struct InjectArgs {}

/// Serves the webhook.
pub async fn run(_args: InjectArgs) -> Result<(), String> {
    Err("the injector is not in this build yet".into())
}
