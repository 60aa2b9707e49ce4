//! `appliance serve`: runs the port layer on this host.
//!
//! Wires the state directory (database, handle key, client key, image and
//! volume stores, container files, socket), the local backend and the REST API together,
//! and re-adopts the VMs of containers that were running when a previous
//! appliance process stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use appliance::api::TlsSettings;
use appliance::backend::local::runtime::LocalBackend;
use appliance::backend::local::{AccelChoice, BootArtifacts, accel};
use appliance::handle::HandleKey;
use appliance::portlayer::events::Events;
use appliance::portlayer::exec::PortLayer;
use appliance::portlayer::model::PowerState;
use appliance::portlayer::storage::{DEFAULT_STORE, Storage};
use appliance::storage::busybox;
use appliance::store::Store;
use clap::Args;

#[derive(Args)]
pub struct ServeArgs {
    /// Unix socket to listen on (default: <state>/appliance.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also listen on this TCP address: HTTPS with client certificates given
    /// the three --tls-* options, else plain HTTP, on loopback only.
    #[arg(long)]
    tcp: Option<std::net::SocketAddr>,
    /// PEM certificate chain (leaf first) of the --tcp listener.
    #[arg(
        long,
        env = "APPLIANCE_TLS_CERT",
        requires_all = ["tcp", "tls_key", "tls_client_ca"]
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "APPLIANCE_TLS_KEY",
        requires_all = ["tcp", "tls_cert", "tls_client_ca"]
    )]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): --tcp clients must present a certificate
    /// signed by one of them.
    #[arg(
        long,
        env = "APPLIANCE_TLS_CLIENT_CA",
        requires_all = ["tcp", "tls_cert", "tls_key"]
    )]
    tls_client_ca: Option<PathBuf>,
    /// Accelerator: auto (probe KVM, else TCG), kvm or tcg.
    #[arg(long, env = "APPLIANCE_ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// Directory with vmlinuz, initrd.img and bootstrap.iso.
    #[arg(long, env = "APPLIANCE_BOOT_DIR")]
    boot_dir: Option<PathBuf>,
    /// How long at most the VM of a container that has finished keeps its
    /// output and exit code for an appliance that is away (e.g. 90s, 2h),
    /// before it powers off anyway and says so on its console. Applies to
    /// the containers this server starts.
    #[arg(long, env = "APPLIANCE_LINGER", default_value = "24h", value_parser = parse_linger)]
    linger: std::time::Duration,
    /// Also serve the Docker Engine API on this unix socket (mode 0600), for
    /// the docker CLI and SDKs (`DOCKER_HOST=unix://PATH`). Off by default.
    #[arg(long, env = "APPLIANCE_DOCKER_SOCKET")]
    docker_socket: Option<PathBuf>,
    /// The network of a container the Docker API creates without
    /// `--network`: bridge (the default scope, as Docker's; a tap per
    /// container VM) or none.
    #[arg(
        long,
        env = "APPLIANCE_DOCKER_DEFAULT_NETWORK",
        default_value = "bridge",
        value_parser = ["bridge", "none"]
    )]
    docker_default_network: String,
}

fn parse_linger(s: &str) -> Result<std::time::Duration, String> {
    match super::logs::parse_duration(s) {
        Some(d) if d >= std::time::Duration::from_secs(1) => Ok(d),
        Some(_) => Err("the linger time must be at least 1s".into()),
        None => Err(format!("{s:?} is not a duration (e.g. 90s, 30m, 24h)")),
    }
}

/// The server's own log (also served at `/diagnostics/logs`).
pub fn log_path(state: &Path) -> PathBuf {
    state.join("appliance.log")
}

/// The socket the CLI and the server agree on.
pub fn socket_path(state: &Path) -> PathBuf {
    state.join("appliance.sock")
}

pub async fn serve(state: &Path, args: ServeArgs) -> anyhow::Result<u8> {
    // Checked first: a bad TLS setup should not wait for the state to load.
    let tls = tls_settings(&args)?;
    std::fs::create_dir_all(state)
        .with_context(|| format!("Creating state directory {}", state.display()))?;
    let store = Arc::new(Store::open_dir(state)?);
    let key = HandleKey::load_or_create(&state.join("handle.key"))?;
    let client_key = client_key(state)?;
    let artifacts = BootArtifacts::find(args.boot_dir.as_deref())?;
    let accel = accel::resolve(
        args.accel,
        Path::new("qemu-system-x86_64"),
        &artifacts.kernel,
        &artifacts.initrd,
        Some(state),
    )
    .await;
    tracing::info!(accel = accel.qemu_name(), "accelerator");
    let events = Arc::new(Events::new(store.clone()));
    let storage = Storage::open(store.clone(), events.clone(), state)?;
    ensure_busybox(&storage)?;
    {
        let storage = storage.clone();
        tokio::task::spawn_blocking(move || storage.sweep_all_blobs());
    }
    let backend = LocalBackend::new(
        state,
        artifacts,
        accel,
        client_key,
        storage.clone(),
        args.linger,
    );
    let pl = PortLayer::with_storage(store.clone(), events, Some(storage), key, backend.clone());

    // Operations a killed appliance left "running" end as failed.
    match pl.fail_orphaned_operations() {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "ended the operations of a stopped appliance"),
        Err(e) => tracing::warn!("ending the operations of a stopped appliance: {e}"),
    }

    // The default scope exists out of the box, as docker's `bridge`.
    pl.network
        .ensure_default()
        .context("Making the default network scope")?;
    let all = pl.list_all()?;
    // Directories of creations that failed half-way (or were cut short by
    // a kill) belong to no container: swept, off the runtime.
    {
        let known: std::collections::HashSet<String> = all.iter().map(|c| c.id.clone()).collect();
        let backend = backend.clone();
        tokio::task::spawn_blocking(move || {
            for dir in backend.sweep_orphans(&known) {
                tracing::info!("removed {}, which no container owns", dir.display());
            }
        });
    }

    // VMs outlive the appliance: take back those of running containers.
    let running: Vec<_> = all
        .into_iter()
        .filter(|c| matches!(c.state, PowerState::Running | PowerState::Paused))
        .collect();
    if !running.is_empty() {
        // In the background: the API answers meanwhile, and a VM that is
        // slow to answer does not hold up the others' clients (calls on a
        // container not yet re-adopted wait for it).
        tracing::info!(count = running.len(), "re-adopting running containers");
        backend.recover(running);
    }

    // Devices and rules are rebuilt from the store: a crash leaves nothing
    // inconsistent, and a restart converges.
    if let Err(e) = pl.apply_network().await {
        tracing::error!("realising the network from the store: {e}");
        eprintln!("appliance: realising the network from the store: {e}");
    }

    let router = appliance::api::router_with_log(pl, Some(log_path(state)));
    let socket = args.socket.unwrap_or_else(|| socket_path(state));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let unix = appliance::api::serve_unix_until(router.clone(), &socket, stop());
    // The Docker personality is a client of the port layer's socket.
    let docker = async {
        match &args.docker_socket {
            Some(path) => {
                eprintln!("appliance: serving the Docker API on {}", path.display());
                crate::docker::serve_until(
                    path,
                    socket.clone(),
                    args.docker_default_network.clone(),
                    stop(),
                )
                .await
            }
            None => Ok(()),
        }
    };
    let servers = async {
        match args.tcp {
            Some(addr) => {
                let tcp = appliance::api::serve_tcp_until(router, addr, tls, stop());
                tokio::try_join!(unix, tcp, docker).map(|_| ())
            }
            None => tokio::try_join!(unix, docker).map(|_| ()),
        }
    };
    tokio::pin!(servers);
    let signal = shutdown_signal()?;
    eprintln!("appliance: serving on {}", socket.display());
    tokio::select! {
        r = &mut servers => r?,
        name = signal => {
            tracing::info!("{name}: shutting down");
            eprintln!(
                "appliance: {name}: shutting down (container VMs keep running and are taken back at the next start)"
            );
            let _ = stop_tx.send(true);
            // Requests in flight get a bounded time to be answered; open
            // streams (logs -f, events, attach) are cut after it, and their
            // clients reconnect to the next server.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                Ok(r) => r?,
                Err(_) => {
                    tracing::info!("streams still open after {SHUTDOWN_GRACE:?}; closing them");
                    if let Err(e) = std::fs::remove_file(&socket) {
                        tracing::warn!("removing socket {}: {e}", socket.display());
                    }
                }
            }
        }
    }
    Ok(0)
}

/// How long a stopping server waits for the requests in flight.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Completes with the signal's name on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("Handling SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("Handling SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// The --tcp listener's TLS settings, loaded; `None` for plain HTTP, which
/// only a loopback address may have.
fn tls_settings(args: &ServeArgs) -> anyhow::Result<Option<TlsSettings>> {
    let (Some(cert), Some(key), Some(client_ca)) =
        (&args.tls_cert, &args.tls_key, &args.tls_client_ca)
    else {
        if let Some(addr) = args.tcp.filter(|a| !a.ip().is_loopback()) {
            anyhow::bail!(
                "--tcp on a non-loopback address needs --tls-cert, --tls-key and --tls-client-ca \
                 (or their APPLIANCE_TLS_* variables), or listen on a loopback address instead of {addr}"
            );
        }
        return Ok(None);
    };
    Ok(Some(TlsSettings::from_pem_files(cert, key, client_ca)?))
}

/// The offline busybox image, made from Debian's busybox-static and
/// imported (as any OCI image layout is) on first use.
pub fn ensure_busybox(storage: &Storage) -> anyhow::Result<()> {
    if storage.image(busybox::IMAGE_NAME).is_ok() {
        return Ok(());
    }
    eprintln!("appliance: importing the offline busybox image (once)...");
    let layout = busybox::layout_tar()?;
    storage
        .import(&layout[..], DEFAULT_STORE, Some(busybox::IMAGE_NAME))
        .context("Importing the busybox image")?;
    Ok(())
}

/// The appliance's client key for tethers, created on first use.
pub fn client_key(state: &Path) -> anyhow::Result<russh::keys::PrivateKey> {
    use std::os::unix::fs::PermissionsExt;
    let path = state.join("client_key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return russh::keys::PrivateKey::from_openssh(text.as_bytes())
            .with_context(|| format!("{} is not an OpenSSH private key", path.display()));
    }
    let key = appliance::keys::generate()?;
    std::fs::write(&path, appliance::keys::private_openssh(&key)?)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linger_takes_durations_of_a_second_or_more() {
        assert_eq!(
            parse_linger("24h"),
            Ok(std::time::Duration::from_secs(86_400))
        );
        assert_eq!(parse_linger("3s"), Ok(std::time::Duration::from_secs(3)));
        assert!(parse_linger("500ms").unwrap_err().contains("at least 1s"));
        assert!(parse_linger("soon").unwrap_err().contains("not a duration"));
    }
}
