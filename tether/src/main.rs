//! tether: PID 1 of a container VM.
//!
//! Boots the container (mounts, modules, spec, root filesystem, identity,
//! network, volumes), serves the host over SSH on the transport, runs the
//! primary session and powers the VM off when it is done (and a host has
//! taken its output and exit status, within the linger bound), or when the
//! host asks. In maintenance mode (no primary session) it only serves the host
//! until asked to power off or left without a host. This file owns the order
//! of those steps and when the VM ends, nothing else.

mod boot;
mod console;
mod fdio;
mod power;
mod server;
mod session;
mod sys;
mod transport;

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use proto::v1::ContainerSpec;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The upper bound, after the primary exits, on waiting for a host to take
/// the output and the exit status (spec `linger_seconds` 0).
const DEFAULT_LINGER: Duration = Duration::from_secs(24 * 60 * 60);
/// Maintenance mode: power off once no host has been connected this long
/// (spec `linger_seconds` 0).
const DEFAULT_MAINTENANCE_IDLE: Duration = Duration::from_secs(60);
/// While everything is usually taken at once, how often delivery is checked;
/// after `FAST_PHASE`, every `SLOW_POLL` (the wait may last hours).
const FAST_POLL: Duration = Duration::from_millis(10);
const FAST_PHASE: Duration = Duration::from_secs(2);
const SLOW_POLL: Duration = Duration::from_millis(250);
/// Time for the answer to a power-off request to leave the VM.
const REPLY_FLUSH: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error("Boot failed")]
    Boot(#[from] boot::BootError),
    #[error("Cannot serve the host")]
    Transport(#[from] transport::TransportError),
    #[error("Cannot serve the host")]
    Server(#[from] server::ServerError),
    #[error("Cannot start the primary session")]
    Primary(#[from] session::SessionError),
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("tether {VERSION} ({})", proto::PROTOCOL);
        return;
    }
    console::line(format_args!("tether {VERSION} starting"));
    if std::process::id() != 1 {
        error!("tether must run as PID 1 of a container VM (it is the VM's init)");
        std::process::exit(1);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            // Without a runtime, power off directly.
            let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
            return;
        }
    };
    rt.block_on(async {
        if let Err(e) = run().await {
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            error!("{msg}");
        }
        power::off().await
    })
}

async fn run() -> Result<(), Fatal> {
    let booted_at = now_nanos();
    boot::early_mounts()?;
    boot::load_modules()?;
    if boot::probe_requested() {
        console::line(format_args!("tether probe ok"));
        return Ok(());
    }
    let spec = boot::read_spec()?;
    boot::enter_rootfs(&spec)?;
    boot::write_identity(&spec)?;
    boot::configure_network(&spec).await?;
    boot::mount_volumes(&spec)?;

    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let sessions = session::Sessions::new(hostname.clone());
    tokio::spawn(sessions.clone().reap_forever());

    let keys = spec.keys.clone().unwrap_or_default();
    let maintenance = boot::maintenance(&spec);
    let power_off = Arc::new(tokio::sync::Notify::new());
    let server = server::Server::new(
        &keys,
        sessions.clone(),
        hostname,
        booted_at,
        maintenance,
        power_off.clone(),
    )?;
    let presence = server.host_presence();
    let port = transport::find_port(&port_name(&spec), Duration::from_secs(10))?;
    tokio::spawn(server.serve_forever(port));
    console::line(format_args!("tether ready"));
    let linger_or = |default| match spec.linger_seconds {
        0 => default,
        n => Duration::from_secs(u64::from(n)),
    };
    let asked_to_power_off = async {
        power_off.notified().await;
        info!("the host asked to power off");
        tokio::time::sleep(REPLY_FLUSH).await;
    };
    tokio::pin!(asked_to_power_off);

    if maintenance {
        info!("maintenance mode: no process started, serving the host");
        let idle = linger_or(DEFAULT_MAINTENANCE_IDLE);
        tokio::select! {
            () = &mut asked_to_power_off => {}
            () = server::until_host_absent_for(presence, idle) => {
                info!("no host connected for {idle:?}");
            }
        }
        return Ok(());
    }

    let mut primary = spec.primary.clone().unwrap_or_default();
    if primary.id.is_empty() {
        primary.id.clone_from(&spec.id);
    }
    let primary = sessions.start(primary)?;
    let status = tokio::select! {
        status = primary.wait() => status,
        () = &mut asked_to_power_off => return Ok(()),
    };
    info!("primary session exited with code {}", status.exit_code);

    // The container is done: end the other sessions, then keep everything
    // until a host has taken it (a host may be away for a while: an
    // appliance restarting), up to the linger bound.
    for s in sessions.list() {
        s.kill_group();
    }
    let linger = linger_or(DEFAULT_LINGER);
    let delivered = tokio::time::timeout(linger, until_delivered(&sessions, &primary, linger));
    tokio::select! {
        delivered = delivered => if delivered.is_err() {
            error!(
                "linger limit of {linger:?} reached: powering off with what no host took: {}",
                undelivered(&sessions, &primary).join("; ")
            );
        },
        () = &mut asked_to_power_off => {}
    }
    Ok(())
}

/// Returns once every byte of every session is acknowledged and a host has
/// acknowledged the primary's exit status as stored (a process that ends
/// before the host connects must not take its exit code with it).
async fn until_delivered(
    sessions: &session::Sessions,
    primary: &session::Session,
    linger: Duration,
) {
    let done = || sessions.list().iter().all(|s| s.drained()) && primary.exit_acked();
    let started = tokio::time::Instant::now();
    let mut said = false;
    while !done() {
        if started.elapsed() < FAST_PHASE {
            tokio::time::sleep(FAST_POLL).await;
            continue;
        }
        if !said {
            said = true;
            info!(
                "waiting up to {linger:?} for a host to take: {}",
                undelivered(sessions, primary).join("; ")
            );
        }
        tokio::time::sleep(SLOW_POLL).await;
    }
    if said {
        info!("a host took the output and the exit status");
    }
    // Let the last reply leave the channel.
    tokio::time::sleep(REPLY_FLUSH).await;
}

/// What no host has taken yet, one phrase each.
fn undelivered(sessions: &session::Sessions, primary: &session::Session) -> Vec<String> {
    let mut out: Vec<String> = sessions
        .list()
        .iter()
        .filter_map(|s| s.undelivered())
        .collect();
    if !primary.exit_acked() {
        out.push(format!(
            "exit status {} of session {} unacknowledged",
            primary.life().exit_code,
            primary.id()
        ));
    }
    out
}

fn port_name(spec: &ContainerSpec) -> String {
    spec.channel
        .as_ref()
        .map(|c| c.address.clone())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| proto::DEFAULT_PORT_NAME.to_string())
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
