//! Command-line front end: `appliance serve` runs the port layer's REST
//! server; every other subcommand is a client of it over the unix socket
//! `<state>/appliance.sock`. Each subcommand lives in the file of its job:
//! `run` (run, create), `containers` (start, stop, kill, rm, ps, inspect,
//! rename, wait), `attach` (attach, exec and the terminal streaming they
//! share with run), `logs`, `events`, `images` (pull, images, rmi, import,
//! tag), `volumes` (volume ...), `cp`, `serve`. Below them: `client` (the
//! transport, `crate::client`, shared with the Docker personality),
//! `handles` (handle → change → commit), `follow` (reading a starting
//! task's log), `signals` (signal names).
//!
//! Exit status, as docker's: a command's own failure is 125 (the runtime
//! failed) or 1 (one of several targets failed, or a commit reported an
//! ERROR element); `run`, `start -a`, `attach` and `exec` otherwise exit
//! with the task's code. A command whose reader closed its stdout early
//! ends quietly with 141 (see `output`).

#[cfg(test)]
mod against_fake;
mod attach;
use crate::client;
pub(crate) mod containers;
mod cp;
mod events;
mod follow;
mod handles;
mod images;
mod logs;
mod network;
mod output;
mod reconnect;
mod run;
mod serve;
pub(crate) mod signals;
mod volumes;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use client::Client;
use output::errln;

#[derive(Parser)]
#[command(name = "appliance", version, about = "Containers as lightweight VMs")]
struct Cli {
    /// State directory (images, keys, container files, the server's socket).
    #[arg(long, global = true, env = "APPLIANCE_STATE")]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the port layer's REST server on this host.
    Serve(serve::ServeArgs),
    /// Run a command in a new container VM, streaming its output; exits
    /// with the command's exit code.
    Run(run::RunArgs),
    /// Create a container (not started); prints its id.
    Create(run::CreateArgs),
    /// Start containers.
    Start(containers::StartArgs),
    /// Stop containers: stop signal, grace period, kill.
    Stop(containers::StopArgs),
    /// Send a signal to containers' primary processes.
    Kill(containers::KillArgs),
    /// Remove containers.
    Rm(containers::RmArgs),
    /// List containers.
    Ps(containers::PsArgs),
    /// Show containers as JSON.
    Inspect(containers::InspectArgs),
    /// Rename a container.
    Rename(containers::RenameArgs),
    /// Wait for containers to exit; prints their exit codes.
    Wait(containers::WaitArgs),
    /// Attach to a running container's live output (and stdin).
    Attach(attach::AttachArgs),
    /// Run a command in a running container.
    Exec(attach::ExecArgs),
    /// Print a container's output.
    Logs(logs::LogsArgs),
    /// Stream the port layer's events.
    Events(events::EventsArgs),
    /// Pull an image from a registry.
    Pull(images::PullArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Remove images (refused while a container uses one).
    Rmi(images::RmiArgs),
    /// Import a `docker save` archive or an OCI image layout tar.
    Import(images::ImportArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(volumes::VolumeCommand),
    /// Manage networks (scopes) and containers' membership of them.
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Copy files between the host and a container (running or stopped).
    Cp(cp::CpArgs),
}

/// Ends the program with this exit status; what needed saying has been
/// printed already.
#[derive(Debug, thiserror::Error)]
#[error("Exit status {0}")]
pub struct Exit(pub u8);

/// For commands whose exit status is a task's (`run`, `exec`): any failure
/// of the appliance itself is 125, as with docker, never a code the task
/// could have returned.
pub fn runtime_failure(e: anyhow::Error) -> anyhow::Error {
    if e.downcast_ref::<Exit>().is_some() {
        Exit(125).into()
    } else {
        e
    }
}

async fn dispatch(state: PathBuf, command: Command) -> anyhow::Result<u8> {
    let client = Client::for_state(&state);
    let c = &client;
    match command {
        Command::Serve(args) => serve::serve(&state, args).await,
        Command::Run(args) => run::run(c, args).await,
        Command::Create(args) => run::create(c, args).await,
        Command::Start(args) => containers::start(c, args).await,
        Command::Stop(args) => containers::stop(c, args).await,
        Command::Kill(args) => containers::kill(c, args).await,
        Command::Rm(args) => containers::rm(c, args).await,
        Command::Ps(args) => containers::ps(c, args).await,
        Command::Inspect(args) => containers::inspect_cmd(c, args).await,
        Command::Rename(args) => containers::rename(c, args).await,
        Command::Wait(args) => containers::wait(c, args).await,
        Command::Attach(args) => attach::attach(c, args).await,
        Command::Exec(args) => attach::exec(c, args).await,
        Command::Logs(args) => logs::logs(c, args).await,
        Command::Events(args) => events::events(c, args).await,
        Command::Pull(args) => images::pull(c, args).await,
        Command::Images(args) => images::images(c, args).await,
        Command::Rmi(args) => images::rmi(c, args).await,
        Command::Import(args) => images::import(c, args).await,
        Command::Tag(args) => images::tag(c, args).await,
        Command::Volume(cmd) => volumes::volume(c, cmd).await,
        Command::Network(cmd) => network::network(c, cmd).await,
        Command::Cp(args) => cp::cp(c, args).await,
    }
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let state = cli.state.clone().unwrap_or_else(default_state);
    init_logging(&state, matches!(cli.command, Command::Serve(_)));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_unpark(appliance::store::mark_async_worker)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("appliance: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(125);
        }
    };
    let result = rt.block_on(dispatch(state, cli.command));
    // Work still running on the blocking pool (a store write, a copy) gets
    // a bounded time; the runtime does not wait for it forever.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => std::process::ExitCode::from(*code),
            None if output::is_closed(&e) => std::process::ExitCode::from(output::CLOSED_STATUS),
            None => {
                errln!("appliance: {e:#}");
                // As docker does: 125 means the runtime itself failed.
                std::process::ExitCode::from(125)
            }
        },
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

/// Logs to stderr (`APPLIANCE_LOG`, default warnings); the server also
/// keeps an info-level log in its state directory for `/diagnostics/logs`.
fn init_logging(state: &std::path::Path, server: bool) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // A closed stderr drops the line (the layer's own complaint about it
    // would be an `eprintln!`, which panics there: see `output`).
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_env("APPLIANCE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    let file = server
        .then(|| {
            std::fs::create_dir_all(state).ok()?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(serve::log_path(state))
                .ok()
        })
        .flatten()
        .map(|f| {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
        });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_parses() {
        for args in [
            &["appliance", "run", "--rm", "-it", "busybox", "--", "sh"][..],
            &["appliance", "create", "--name", "x", "busybox", "true"],
            &["appliance", "start", "-a", "x"],
            &["appliance", "stop", "-t", "3", "x", "y"],
            &["appliance", "kill", "-s", "USR1", "x"],
            &["appliance", "rm", "-f", "x"],
            &["appliance", "ps", "-a", "--filter", "label.app=web", "-q"],
            &["appliance", "inspect", "x", "y"],
            &["appliance", "rename", "x", "y"],
            &["appliance", "wait", "x"],
            &["appliance", "attach", "x"],
            &[
                "appliance",
                "exec",
                "-it",
                "-u",
                "0",
                "-w",
                "/",
                "-e",
                "A=1",
                "x",
                "--",
                "sh",
            ],
            &[
                "appliance",
                "logs",
                "-f",
                "--tail",
                "10",
                "--since",
                "5m",
                "-t",
                "x",
            ],
            &[
                "appliance",
                "events",
                "--filter",
                "kind=create",
                "--since",
                "0",
            ],
            &["appliance", "--state", "/tmp/s", "serve"],
            &["appliance", "pull", "--insecure", "h:5000/a:1"],
            &["appliance", "images", "--filter", "name=x*", "-q"],
            &["appliance", "rmi", "a", "b"],
            &["appliance", "import", "-t", "x:1", "f.tar"],
            &["appliance", "tag", "a", "b"],
            &["appliance", "volume", "create", "-s", "64M", "data"],
            &["appliance", "volume", "ls", "--stores"],
            &["appliance", "volume", "rm", "data"],
            &[
                "appliance",
                "run",
                "-v",
                "data:/d:ro",
                "busybox",
                "ls",
                "/d",
            ],
        ] {
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }

    #[test]
    fn exec_needs_a_command() {
        assert!(Cli::try_parse_from(["appliance", "exec", "x"]).is_err());
    }

    #[test]
    fn runtime_failures_are_125() {
        let e = runtime_failure(Exit(1).into());
        assert_eq!(e.downcast_ref::<Exit>().map(|e| e.0), Some(125));
        let e = runtime_failure(anyhow::anyhow!("boom"));
        assert!(e.downcast_ref::<Exit>().is_none());
    }
}
