//! Container lifecycle subcommands: `start`, `stop`, `kill`, `rm`, `ps`,
//! `inspect`, `rename`, `wait` (`create` shares `run`'s flags and lives in
//! `run`).
//!
//! Owns their flags and output (the `ps` table). Commands taking several
//! containers act on each, report failures per container on stderr and
//! exit 1 if any failed, as docker does.

use std::future::Future;
use std::time::Duration;

use appliance::portlayer::model::{Container, PowerState, TargetState};
use clap::Args;
use serde_json::json;

use super::Exit;
use super::attach::{self, Io};
use super::client::{Client, encode, with_query};
use super::handles::Handle;
use super::output::{self, errln, outln};
use super::run::start_container;
use super::signals;

/// How long `stop` waits, beyond the grace period, for the VM to be down.
const STOP_MARGIN: Duration = Duration::from_secs(30);
/// How often `stop` looks.
const STOP_POLL: Duration = Duration::from_millis(100);

#[derive(Args)]
pub struct StartArgs {
    /// Attach to the container's output and exit with its exit code.
    #[arg(short, long)]
    attach: bool,
    /// Forward stdin (with --attach, to a container created with -i).
    #[arg(short, long)]
    interactive: bool,
    /// Container ids, id prefixes or names.
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait for the stop signal to work before killing
    /// (default: the container's stop timeout).
    #[arg(short, long)]
    time: Option<u64>,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct KillArgs {
    /// Signal to send: a name (KILL, TERM, USR1, SIGHUP) or number.
    #[arg(short, long, default_value = "KILL")]
    signal: String,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct RmArgs {
    /// Kill a running container first instead of refusing.
    #[arg(short, long)]
    force: bool,
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct PsArgs {
    /// Show all containers (default: running and paused ones).
    #[arg(short, long)]
    all: bool,
    /// Filter, e.g. `state=exited` or `label.app=web` (repeatable: all
    /// must match).
    #[arg(short, long)]
    filter: Vec<String>,
    /// Only print container ids.
    #[arg(short, long)]
    quiet: bool,
    /// Do not truncate ids and commands.
    #[arg(long)]
    no_trunc: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct RenameArgs {
    container: String,
    name: String,
}

#[derive(Args)]
pub struct WaitArgs {
    #[arg(required = true)]
    containers: Vec<String>,
}

/// Runs `f` on each container in turn; failures are printed and make the
/// result `Exit(1)` once all have been tried. A closed stdout does not stop
/// the others: each is still acted on, and the command ends quietly.
async fn each<'a, F, Fut>(containers: &'a [String], mut f: F) -> anyhow::Result<u8>
where
    F: FnMut(&'a str) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut failed = false;
    let mut closed = None;
    for c in containers {
        match f(c).await {
            Ok(()) => {}
            Err(e) if output::is_closed(&e) => closed = Some(e),
            Err(e) => {
                failed = true;
                // Commit errors were printed element by element already.
                if e.downcast_ref::<Exit>().is_none() {
                    errln!("appliance: {e:#}");
                }
            }
        }
    }
    match (failed, closed) {
        (true, _) => Err(Exit(1).into()),
        (false, Some(e)) => Err(e),
        (false, None) => Ok(0),
    }
}

fn container_path(id: &str) -> String {
    format!("/exec/containers/{}", encode(id))
}

async fn inspect(client: &Client, id: &str) -> anyhow::Result<Container> {
    Ok(client.get(&container_path(id)).await?)
}

pub async fn start(client: &Client, args: StartArgs) -> anyhow::Result<u8> {
    if !args.attach {
        return each(&args.containers, |c| async move {
            start_container(client, c).await?;
            outln!("{c}")?;
            Ok(())
        })
        .await;
    }
    let [container] = args.containers.as_slice() else {
        anyhow::bail!("--attach takes exactly one container");
    };
    let c = inspect(client, container).await?;
    let primary = c.tasks.get(&c.id).map(|t| &t.task);
    let io = Io {
        stdin: args.interactive && primary.is_some_and(|t| t.open_stdin),
        tty: primary.is_some_and(|t| t.tty),
    };
    let code = attach::run_task(client, &c.id, None, io, start_container(client, &c.id)).await?;
    Ok(attach::exit_status(code))
}

/// Stops one container and waits until it is down. With `-t`, the grace
/// period is this stop's (the port layer's state change carries it);
/// without, the container's own stop timeout applies.
async fn stop_one(client: &Client, id: &str, time: Option<u64>) -> anyhow::Result<()> {
    let c = inspect(client, id).await?;
    let mut h = Handle::of(client, &c.id).await?;
    match time {
        Some(secs) => {
            h.stop_within(u32::try_from(secs).unwrap_or(u32::MAX))
                .await?
        }
        None => h.state(TargetState::Stopped).await?,
    }
    h.commit().await?;
    let grace = time.unwrap_or(u64::from(c.stop_timeout_seconds));
    until_stopped(client, &c.id, Duration::from_secs(grace) + STOP_MARGIN).await
}

/// Polls until the container is neither running nor paused (its VM is
/// down: the state changes when the execution environment reports it).
async fn until_stopped(client: &Client, id: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let c = inspect(client, id).await?;
        if !matches!(c.state, PowerState::Running | PowerState::Paused) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "Container {} is still {} {} s after it was told to stop",
                c.name,
                c.state.as_str(),
                limit.as_secs()
            );
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}

pub async fn stop(client: &Client, args: StopArgs) -> anyhow::Result<u8> {
    each(&args.containers, |c| async move {
        stop_one(client, c, args.time).await?;
        outln!("{c}")?;
        Ok(())
    })
    .await
}

async fn send_signal(client: &Client, id: &str, signal: i32) -> anyhow::Result<()> {
    let path = format!("{}/signal", container_path(id));
    client
        .post::<()>(&path, &json!({ "signal": signal }))
        .await?;
    Ok(())
}

pub async fn kill(client: &Client, args: KillArgs) -> anyhow::Result<u8> {
    let signal = signals::parse(&args.signal)?;
    each(&args.containers, |c| async move {
        send_signal(client, c, signal).await?;
        outln!("{c}")?;
        Ok(())
    })
    .await
}

pub async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<u8> {
    let force = if args.force { "true" } else { "" };
    each(&args.containers, |c| async move {
        let path = with_query(&container_path(c), &[("force", force.to_string())]);
        client.delete::<()>(&path).await?;
        outln!("{c}")?;
        Ok(())
    })
    .await
}

pub async fn rename(client: &Client, args: RenameArgs) -> anyhow::Result<u8> {
    let mut h = Handle::of(client, &args.container).await?;
    h.rename(&args.name).await?;
    h.commit().await?;
    Ok(0)
}

pub async fn wait(client: &Client, args: WaitArgs) -> anyhow::Result<u8> {
    each(&args.containers, |c| async move {
        let code = attach::wait(client, c, None).await?;
        outln!("{code}")?;
        Ok(())
    })
    .await
}

/// `inspect`: the containers as a pretty JSON array, as the server gives
/// them (nothing dropped).
pub async fn inspect_cmd(client: &Client, args: InspectArgs) -> anyhow::Result<u8> {
    let mut found = Vec::new();
    let mut failed = false;
    for c in &args.containers {
        match client.get::<serde_json::Value>(&container_path(c)).await {
            Ok(v) => found.push(v),
            Err(e) => {
                failed = true;
                errln!("appliance: {e}");
            }
        }
    }
    outln!("{}", serde_json::to_string_pretty(&found)?)?;
    if failed { Err(Exit(1).into()) } else { Ok(0) }
}

pub async fn ps(client: &Client, args: PsArgs) -> anyhow::Result<u8> {
    let filter = args.filter.join(",");
    let mut list: Vec<Container> = client
        .get(&with_query("/exec/containers", &[("filter", filter)]))
        .await?;
    if !args.all {
        list.retain(|c| matches!(c.state, PowerState::Running | PowerState::Paused));
    }
    list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    if args.quiet {
        for c in &list {
            outln!("{}", output::printable(short_id(&c.id, args.no_trunc)))?;
        }
    } else {
        output::out(ps_table(&list, appliance::store::now_ms(), args.no_trunc).as_bytes())?;
    }
    Ok(0)
}

fn short_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        id
    } else {
        id.get(..12).unwrap_or(id)
    }
}

/// The `ps` table, columns padded to their widest cell plus three spaces.
pub fn ps_table(list: &[Container], now_ms: i64, no_trunc: bool) -> String {
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "STATUS".into(),
        "NETWORKS".into(),
        "NAMES".into(),
    ]];
    for c in list {
        // Stored values are shown escaped: a name with a newline or an
        // escape sequence neither forges a row nor drives the terminal.
        rows.push(
            [
                short_id(&c.id, no_trunc).to_string(),
                c.image.clone(),
                command(c, no_trunc),
                status(c, now_ms),
                super::network::addresses(&c.endpoints),
                c.name.clone(),
            ]
            .map(|cell| output::printable(&cell).into_owned()),
        );
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < r.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The primary task's command, quoted, cut at 20 characters as docker does.
fn command(c: &Container, no_trunc: bool) -> String {
    let args = c
        .tasks
        .get(&c.id)
        .or_else(|| c.tasks.values().find(|t| t.primary))
        .map(|t| t.task.args.join(" "))
        .unwrap_or_default();
    let shown = if !no_trunc && args.chars().count() > 20 {
        let cut: String = args.chars().take(19).collect();
        format!("{cut}…")
    } else {
        args
    };
    format!("\"{shown}\"")
}

/// `Up 5 minutes`, `Up 2 hours (Paused)`, `Exited (0) 3 seconds ago`,
/// `Created`.
pub fn status(c: &Container, now_ms: i64) -> String {
    let since = |t: i64| {
        human_duration(Duration::from_millis(
            u64::try_from(now_ms - t).unwrap_or(0),
        ))
    };
    match c.state {
        PowerState::Created => "Created".into(),
        PowerState::Running => format!("Up {}", since(c.started_at)),
        PowerState::Paused => format!("Up {} (Paused)", since(c.started_at)),
        PowerState::Exited => {
            let code = c
                .exit_code
                .map(|x| x.to_string())
                .unwrap_or_else(|| "?".into());
            if c.finished_at > 0 {
                format!("Exited ({code}) {} ago", since(c.finished_at))
            } else {
                format!("Exited ({code})")
            }
        }
    }
}

/// A rough duration in words, as docker's `HumanDuration`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let mins = secs / 60;
    // Rounded, as docker does.
    let hours = (secs + 1800) / 3600;
    match () {
        () if secs < 1 => "Less than a second".into(),
        () if secs == 1 => "1 second".into(),
        () if secs < 60 => format!("{secs} seconds"),
        () if mins == 1 => "About a minute".into(),
        () if mins < 60 => format!("{mins} minutes"),
        () if hours == 1 => "About an hour".into(),
        () if hours < 48 => format!("{hours} hours"),
        () if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        () if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        () if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        () => format!("{} years", hours / 24 / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance::portlayer::model::{Task, TaskState};

    fn container(id: &str, name: &str, state: PowerState, args: &[&str]) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            image: "busybox".into(),
            state,
            tasks: [(
                id.to_string(),
                TaskState {
                    task: Task {
                        id: id.into(),
                        args: args.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    },
                    primary: true,
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn human_durations() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(42)), "42 seconds");
        assert_eq!(human_duration(s(90)), "About a minute");
        assert_eq!(human_duration(s(5 * 60)), "5 minutes");
        assert_eq!(human_duration(s(3600)), "About an hour");
        assert_eq!(human_duration(s(5 * 3600)), "5 hours");
        assert_eq!(human_duration(s(3 * 86400)), "3 days");
        assert_eq!(human_duration(s(21 * 86400)), "3 weeks");
        assert_eq!(human_duration(s(90 * 86400)), "3 months");
        assert_eq!(human_duration(s(3 * 365 * 86400)), "3 years");
    }

    #[test]
    fn statuses() {
        let now = 1_000_000_000;
        let mut c = container("a", "n", PowerState::Created, &["true"]);
        assert_eq!(status(&c, now), "Created");
        c.state = PowerState::Running;
        c.started_at = now - 5 * 60_000;
        assert_eq!(status(&c, now), "Up 5 minutes");
        c.state = PowerState::Paused;
        assert_eq!(status(&c, now), "Up 5 minutes (Paused)");
        c.state = PowerState::Exited;
        c.exit_code = Some(137);
        c.finished_at = now - 3_000;
        assert_eq!(status(&c, now), "Exited (137) 3 seconds ago");
    }

    #[test]
    fn ps_table_pads_columns_and_truncates() {
        let now = 1_000_000_000;
        let mut a = container(
            "0123456789abcdef0123",
            "web",
            PowerState::Running,
            &["sh", "-c", "while true; do date; sleep 1; done"],
        );
        a.started_at = now - 2_000;
        let endpoint = |address: &str| appliance::portlayer::model::Endpoint {
            scope: "net".into(),
            bound: true,
            address: address.into(),
            ..Default::default()
        };
        a.endpoints.insert("net".into(), endpoint("10.88.1.2/24"));
        let mut b = container(
            "fedcba9876543210ffff",
            "job-1",
            PowerState::Created,
            &["true"],
        );
        let mut e = endpoint("10.88.1.3/24");
        e.published
            .push(appliance::portlayer::model::PublishedPort {
                host_port: 8080,
                port: 80,
                proto: "tcp".into(),
                ..Default::default()
            });
        b.endpoints.insert("net".into(), e);
        let table = ps_table(&[a, b], now, false);
        let expected = "\
CONTAINER ID   IMAGE     COMMAND                  STATUS         NETWORKS                             NAMES
0123456789ab   busybox   \"sh -c while true; d…\"   Up 2 seconds   net=10.88.1.2                        web
fedcba987654   busybox   \"true\"                   Created        net=10.88.1.3 0.0.0.0:8080->80/tcp   job-1
";
        assert_eq!(table, expected);
        let full = ps_table(
            &[container(
                "0123456789abcdef0123",
                "x",
                PowerState::Created,
                &["a"],
            )],
            now,
            true,
        );
        assert!(full.contains("0123456789abcdef0123   busybox"), "{full}");
    }

    #[test]
    fn ps_shows_stored_control_characters_escaped() {
        // Names and commands stored before the port layer refused them.
        let c = container(
            "0123456789abcdef0123",
            "evil\u{1b}[2J\nfake-row",
            PowerState::Created,
            &["printf", "\u{7}\r"],
        );
        let table = ps_table(&[c], 0, false);
        assert!(!table.contains(['\u{1b}', '\u{7}', '\r']), "{table:?}");
        // The header and one row: the newline forged none.
        assert_eq!(table.lines().count(), 2, "{table}");
        assert!(
            table.contains("evil\\u{1b}[2J\\nfake-row") && table.contains("\"printf \\u{7}\\r\""),
            "{table}"
        );
    }

    #[test]
    fn empty_ps_is_the_header() {
        assert_eq!(
            ps_table(&[], 0, false),
            "CONTAINER ID   IMAGE   COMMAND   STATUS   NETWORKS   NAMES\n"
        );
    }
}
