//! `appliance run` and `appliance create`: the container flags, their
//! mapping to a `CreateSpec`, and the create → commit → start sequence
//! through the REST server (`appliance serve`).
//!
//! Owns the flags shared by `run` and `create`. Streaming a foreground
//! task is `attach::run_task`; the handle calls are `handles`.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::{Context, bail};
use appliance::portlayer::exec::CreateSpec;
use appliance::portlayer::model::{TargetState, Task, TtySize, VolumeMount};
use appliance::portlayer::policy::Policy;
use clap::Args;
use serde::Deserialize;

use super::attach::{self, Io};
use super::client::{Client, ClientError, encode};
use super::handles::Handle;
use super::output::{errln, outln};
use super::signals;

/// How long `--rm` waits for the container to be seen as exited before
/// removing it regardless.
const RM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a container is made of: the flags `create` and `run` share.
#[derive(Args, Debug, Default)]
pub struct CreateFlags {
    /// Name of the container (default: the first 12 digits of its id).
    #[arg(long)]
    pub name: Option<String>,
    /// Keep stdin open and forward it to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal for the container's process.
    #[arg(short, long)]
    pub tty: bool,
    /// Environment variables: KEY=VALUE, or KEY to pass this one's value.
    #[arg(short, long)]
    pub env: Vec<String>,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short, long, default_value = "")]
    pub user: String,
    /// Working directory inside the container.
    #[arg(short, long, default_value = "")]
    pub workdir: String,
    /// Container hostname (default: the first 12 digits of its id).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Memory of the container VM in MiB (default 256).
    #[arg(short, long)]
    pub memory: Option<u32>,
    /// Virtual CPUs of the container VM (default 1).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Labels: key=value, or key for an empty value.
    #[arg(short, long)]
    pub label: Vec<String>,
    /// Signal that stops the container: a name (TERM) or number.
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Seconds between the stop signal and the kill (default 10).
    #[arg(long)]
    pub stop_timeout: Option<u32>,
    /// Policies, CONSTRAINT:FILTER (e.g. anti-affinity:label.tier=db).
    #[arg(long)]
    pub policy: Vec<String>,
    /// Volumes: VOLUME:/path[:ro] (create them with `volume create`).
    #[arg(short, long)]
    pub volume: Vec<String>,
    /// Replace the image's entrypoint ("" for none).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Networks (scopes) to join; `--alias`, `--ip`, `-p`, `--expose` and
    /// `--outgoing` apply to the first. Without it a container joins no
    /// scope, unless one of those flags is given: then it joins the
    /// default scope (`bridge`).
    #[arg(long)]
    pub network: Vec<String>,
    #[command(flatten)]
    pub join: super::network::JoinFlags,
    /// The image: `busybox` (offline, always there), or one pulled or
    /// imported (`appliance images` lists them).
    pub image: String,
    /// The command and its arguments (after `--`, or after the image).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

impl CreateFlags {
    /// The scopes the container joins: those given with `--network`, or the
    /// default scope when only endpoint flags (`-p`, `--alias`, ...) are
    /// given, so that they are never silently ignored.
    pub fn scopes(&self) -> Vec<String> {
        if self.network.is_empty() && !self.join.is_empty() {
            vec![appliance::portlayer::network::DEFAULT_SCOPE.to_string()]
        } else {
            self.network.clone()
        }
    }

    /// The spec the server creates the container from. `-e KEY` takes
    /// KEY's value from `lookup` (this process's environment); with `-t`,
    /// the task's terminal starts at `terminal`'s size (this client's
    /// terminal, if it has one).
    pub fn to_spec(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
        terminal: Option<TtySize>,
    ) -> anyhow::Result<CreateSpec> {
        let mounts = self
            .volume
            .iter()
            .map(|v| parse_volume(v))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let policies = self
            .policy
            .iter()
            .map(|p| Policy::from_str(p).with_context(|| format!("Invalid policy {p:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(CreateSpec {
            name: self.name.clone().unwrap_or_default(),
            image: self.image.clone(),
            hostname: self.hostname.clone().unwrap_or_default(),
            memory_mib: self.memory.unwrap_or(0),
            cpus: self.cpus.unwrap_or(0),
            stop_signal: match &self.stop_signal {
                Some(s) => signals::parse(s)?,
                None => 0,
            },
            stop_timeout_seconds: self.stop_timeout.unwrap_or(0),
            labels: labels(&self.label),
            policies,
            task: Task {
                id: String::new(),
                args: self.command.clone(),
                env: env_vars(&self.env, lookup),
                working_dir: self.workdir.clone(),
                user: self.user.clone(),
                tty: self.tty,
                tty_size: terminal.filter(|_| self.tty),
                open_stdin: self.interactive,
            },
            entrypoint: self.entrypoint.as_ref().map(|e| {
                if e.is_empty() {
                    vec![]
                } else {
                    vec![e.clone()]
                }
            }),
            mounts,
        })
    }
}

/// `VOLUME:/path` or `VOLUME:/path:ro` (or `:rw`).
pub fn parse_volume(v: &str) -> anyhow::Result<VolumeMount> {
    let parts: Vec<&str> = v.split(':').collect();
    let (volume, path, read_only) = match parts.as_slice() {
        [vol, path] => (*vol, *path, false),
        [vol, path, "ro"] => (*vol, *path, true),
        [vol, path, "rw"] => (*vol, *path, false),
        _ => bail!("Invalid volume {v:?}: expected VOLUME:/path or VOLUME:/path:ro"),
    };
    if volume.starts_with(['/', '.', '~']) {
        bail!(
            "Invalid volume {v:?}: a host directory cannot be mounted into a container VM; \
             make a volume (`appliance volume create`) and copy into it (`appliance cp`)"
        );
    }
    if volume.is_empty() || !path.starts_with('/') {
        bail!("Invalid volume {v:?}: expected VOLUME:/path (an absolute path) or VOLUME:/path:ro");
    }
    Ok(VolumeMount {
        volume: volume.to_string(),
        path: path.to_string(),
        read_only,
    })
}

/// `KEY=VALUE` as given; a bare `KEY` takes its value from `lookup`, and
/// is left out if it has none (as docker does).
pub fn env_vars(given: &[String], lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    given
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                lookup(e).map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// `key=value` or `key` (empty value).
pub fn labels(given: &[String]) -> BTreeMap<String, String> {
    given
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect()
}

#[derive(Args)]
pub struct RunArgs {
    /// Remove the container once it has exited.
    #[arg(long)]
    rm: bool,
    /// Start the container and return, printing its id.
    #[arg(short, long)]
    detach: bool,
    #[command(flatten)]
    flags: CreateFlags,
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    flags: CreateFlags,
}

#[derive(Deserialize)]
struct Created {
    id: String,
    handle: String,
}

/// Creates the container (create, commit); its id.
/// Its networks are joined and bound on the creation handle, so the
/// container is made with them in one commit.
async fn create_container(
    client: &Client,
    spec: &CreateSpec,
    flags: &CreateFlags,
) -> anyhow::Result<String> {
    let created: Created = client
        .post("/exec/containers", spec)
        .await
        .map_err(|e| missing_volume_hint(e, &spec.mounts))?;
    let mut h = Handle::from_token(client, created.handle);
    for (i, scope) in flags.scopes().iter().enumerate() {
        let join = if i == 0 {
            flags.join.clone()
        } else {
            super::network::JoinFlags::default()
        };
        h.network_join(join.request(scope)?).await?;
        h.network_bind(scope).await?;
    }
    h.commit().await?;
    Ok(created.id)
}

/// A volume is a disk of a size chosen for it, so a missing one is not
/// made on the fly (a typo would make a 1 GiB disk): the error says how to
/// make it.
fn missing_volume_hint(e: ClientError, mounts: &[VolumeMount]) -> anyhow::Error {
    match &e {
        ClientError::Api(a)
            if a.code == "NOT_FOUND" && mounts.iter().any(|m| m.volume == a.element) =>
        {
            anyhow::anyhow!("{e}; make it with `appliance volume create {}`", a.element)
        }
        _ => e.into(),
    }
}

/// Starts a container (handle, state running, commit).
pub async fn start_container(client: &Client, id: &str) -> anyhow::Result<()> {
    let mut h = Handle::of(client, id).await?;
    h.state(TargetState::Running).await?;
    h.commit().await.map(drop)
}

/// `appliance create`: prints the new container's id.
pub async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<u8> {
    let spec = args
        .flags
        .to_spec(|k| std::env::var(k).ok(), attach::terminal_tty_size())?;
    let id = create_container(client, &spec, &args.flags).await?;
    outln!("{id}")?;
    Ok(0)
}

/// `appliance run`: create, start, stream the output to the terminal and
/// exit with the container's exit code.
pub async fn run(client: &Client, args: RunArgs) -> anyhow::Result<u8> {
    if args.rm && args.detach {
        bail!("--rm with --detach is not supported: the removal is done by this client");
    }
    let spec = args
        .flags
        .to_spec(|k| std::env::var(k).ok(), attach::terminal_tty_size())?;
    let id = create_container(client, &spec, &args.flags)
        .await
        .map_err(super::runtime_failure)?;
    let result = if args.detach {
        match start_container(client, &id).await {
            Ok(()) => outln!("{id}").map(|()| 0).map_err(Into::into),
            Err(e) => Err(e),
        }
    } else {
        let io = Io {
            stdin: args.flags.interactive,
            tty: args.flags.tty,
        };
        attach::run_task(client, &id, None, io, start_container(client, &id))
            .await
            .map(attach::exit_status)
    };
    if args.rm {
        remove_after_exit(client, &id).await;
    }
    result.map_err(super::runtime_failure)
}

/// `--rm`: waits (a while) until the container is seen as exited, so that
/// its VM has flushed and powered off, then removes it.
async fn remove_after_exit(client: &Client, id: &str) {
    let _ = tokio::time::timeout(RM_WAIT, attach::wait(client, id, None)).await;
    let path = format!("/exec/containers/{}?force=true", encode(id));
    if let Err(e) = client.delete::<()>(&path).await {
        errln!("appliance: removing {id}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .expect("parses")
            .run
    }

    #[test]
    fn flags_map_to_the_create_spec() {
        let a = parse(&[
            "--rm",
            "-i",
            "-t",
            "--name",
            "web",
            "-e",
            "A=1",
            "-e",
            "HOME",
            "-e",
            "UNSET",
            "-u",
            "1000:1000",
            "-w",
            "/tmp",
            "--hostname",
            "h1",
            "--memory",
            "512",
            "--cpus",
            "2",
            "-l",
            "app=web",
            "-l",
            "flag",
            "--stop-signal",
            "INT",
            "--stop-timeout",
            "3",
            "--policy",
            "anti-affinity:label.tier=db",
            "busybox",
            "--",
            "sh",
            "-c",
            "echo hi",
        ]);
        assert!(a.rm && !a.detach);
        let lookup = |k: &str| (k == "HOME").then(|| "/root".to_string());
        let terminal = Some(TtySize {
            rows: 30,
            cols: 100,
        });
        let s = a.flags.to_spec(lookup, terminal).expect("spec");
        assert_eq!(s.name, "web");
        assert_eq!(s.image, "busybox");
        assert_eq!(s.hostname, "h1");
        assert_eq!((s.memory_mib, s.cpus), (512, 2));
        assert_eq!((s.stop_signal, s.stop_timeout_seconds), (2, 3));
        assert_eq!(
            s.labels,
            BTreeMap::from([("app".into(), "web".into()), ("flag".into(), String::new())])
        );
        assert_eq!(s.policies.len(), 1);
        assert_eq!(s.policies[0].to_string(), "anti-affinity:label.tier=db");
        assert_eq!(
            s.task,
            Task {
                id: String::new(),
                args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["A=1".into(), "HOME=/root".into()],
                working_dir: "/tmp".into(),
                user: "1000:1000".into(),
                tty: true,
                tty_size: terminal,
                open_stdin: true,
            }
        );
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["task"]["args"][2], "echo hi");
        assert_eq!(json["policies"][0]["constraint"], "anti-affinity");
    }

    #[test]
    fn defaults_are_left_to_the_server() {
        let s = parse(&["busybox", "true"])
            .flags
            .to_spec(|_| None, None)
            .expect("spec");
        assert_eq!(s.name, "");
        assert_eq!((s.memory_mib, s.cpus, s.stop_signal), (0, 0, 0));
        assert!(!s.task.tty && !s.task.open_stdin);
        assert_eq!(s.task.args, ["true"]);
        // A terminal's size is only the task's with `-t`.
        let terminal = Some(TtySize {
            rows: 30,
            cols: 100,
        });
        let s = parse(&["busybox", "true"])
            .flags
            .to_spec(|_| None, terminal)
            .expect("spec");
        assert_eq!(s.task.tty_size, None);
        let s = parse(&["-t", "busybox", "true"])
            .flags
            .to_spec(|_| None, None)
            .expect("spec");
        assert!(s.task.tty);
        assert_eq!(s.task.tty_size, None, "no local terminal: the default");
    }

    #[test]
    fn the_command_may_follow_the_image_without_dashes() {
        let a = parse(&["-d", "busybox", "ls", "-l", "/"]);
        assert!(a.detach);
        assert_eq!(a.flags.command, ["ls", "-l", "/"]);
    }

    #[test]
    fn volumes_and_entrypoint_map_to_the_spec() {
        let s = parse(&[
            "-v",
            "data:/var/lib/data",
            "-v",
            "conf:/etc/app:ro",
            "--entrypoint",
            "",
            "busybox",
        ])
        .flags
        .to_spec(|_| None, None)
        .expect("spec");
        assert_eq!(
            s.mounts,
            [
                VolumeMount {
                    volume: "data".into(),
                    path: "/var/lib/data".into(),
                    read_only: false
                },
                VolumeMount {
                    volume: "conf".into(),
                    path: "/etc/app".into(),
                    read_only: true
                }
            ]
        );
        assert_eq!(s.entrypoint, Some(vec![]));
        // No command: the image's own runs.
        assert!(s.task.args.is_empty());
    }

    #[test]
    fn bad_input_is_refused_early() {
        for bad in ["data", "data:rel/path", ":/x", "data:/x:rx", "a:/b:ro:c"] {
            let e = parse(&["-v", bad, "busybox"])
                .flags
                .to_spec(|_| None, None)
                .expect_err("bad volume");
            assert!(e.to_string().contains(bad), "{e}");
        }
        for host in ["/srv/data:/data", "./data:/data", "~/data:/data:ro"] {
            let e = parse(&["-v", host, "busybox"])
                .flags
                .to_spec(|_| None, None)
                .expect_err("host directory");
            assert!(e.to_string().contains("host directory"), "{e}");
        }
        let e = parse(&["--stop-signal", "NOPE", "busybox", "true"])
            .flags
            .to_spec(|_| None, None)
            .expect_err("bad signal");
        assert!(e.to_string().contains("NOPE"), "{e}");
        let e = parse(&["--policy", "sometimes:x", "busybox", "true"])
            .flags
            .to_spec(|_| None, None)
            .expect_err("bad policy");
        assert!(e.to_string().contains("sometimes"), "{e}");
    }

    #[test]
    fn endpoint_flags_without_a_network_join_the_default_scope() {
        assert!(parse(&["busybox", "true"]).flags.scopes().is_empty());
        for flag in [
            &["-p", "8080:80"][..],
            &["--expose", "80"],
            &["--alias", "web"],
            &["--ip", "10.88.0.9"],
            &["--outgoing", "denied:ip:10.0.0.0/8"],
        ] {
            let args: Vec<&str> = flag.iter().copied().chain(["busybox", "true"]).collect();
            assert_eq!(parse(&args).flags.scopes(), ["bridge"], "{flag:?}");
        }
        let a = parse(&[
            "--network",
            "app",
            "--network",
            "db",
            "-p",
            "1:2",
            "busybox",
        ]);
        assert_eq!(a.flags.scopes(), ["app", "db"]);
    }
}
