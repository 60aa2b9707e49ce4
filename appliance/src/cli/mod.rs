//! Command-line front end. Each subcommand lives in its own file.

mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "appliance", version, about = "Containers as lightweight VMs")]
struct Cli {
    /// State directory (images, keys, container files).
    #[arg(long, global = true, env = "APPLIANCE_STATE")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container VM, streaming its output; exits
    /// with the command's exit code.
    Run(run::RunArgs),
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("APPLIANCE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let state = cli.state.unwrap_or_else(default_state);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("appliance: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(125);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(&state, args).await,
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("appliance: {e:#}");
            // As docker does: 125 means the runtime itself failed.
            std::process::ExitCode::from(125)
        }
    }
}

/// `/var/lib/appliance` for root, `~/.local/share/appliance` otherwise.
fn default_state() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/appliance");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/appliance"))
        .unwrap_or_else(|| PathBuf::from(".appliance"))
}
