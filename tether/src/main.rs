//! tether: PID 1 of a container VM.
//!
//! Boots the container (mounts, modules, spec, root filesystem, identity,
//! network, volumes), serves the host over SSH on the transport, runs the
//! primary session and powers the VM off when it is done, or when the host
//! asks. In maintenance mode (no primary session) it only serves the host
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
const DEFAULT_LINGER: Duration = Duration::from_secs(60);
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
    let linger = match spec.linger_seconds {
        0 => DEFAULT_LINGER,
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
        tokio::select! {
            () = &mut asked_to_power_off => {}
            () = server::until_host_absent_for(presence, linger) => {
                info!("no host connected for {linger:?}");
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

    // The container is done: end the other sessions, then give the host the
    // linger time to take the remaining output.
    for s in sessions.list() {
        s.kill_group();
    }
    // Done when every byte is acknowledged and the host has been sent the
    // primary's exit status (a process that ends before the host connects
    // must not take its exit code with it).
    let drained = tokio::time::timeout(linger, async {
        while !(sessions.list().iter().all(|s| s.drained()) && primary.exit_delivered()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the last reply leave the channel.
        tokio::time::sleep(REPLY_FLUSH).await;
    });
    tokio::select! {
        drained = drained => if drained.is_err() {
            info!("host did not take all output within {linger:?}");
        },
        () = &mut asked_to_power_off => {}
    }
    Ok(())
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
