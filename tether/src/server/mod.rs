//! The SSH server the host talks to, over the transport.
//!
//! Owns authentication (only the one authorized client key from the spec
//! gets in), channel set-up, dispatch of channels to the RPC service
//! (`rpc`), attach streams (`attach`) or archive transfers (`archive`), and
//! whether a host is connected (`host_presence`). Must not start processes
//! itself (that is `session`'s job) nor power off (that is `main`'s, told
//! through `Shared::power_off`).

mod archive;
mod attach;
mod rpc;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use proto::v1::AttachRequest;
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::sync::{Notify, watch};

use crate::session::Sessions;
use crate::transport::Port;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("spec.keys.host_key is not a valid OpenSSH private key")]
    HostKey(#[source] russh::keys::ssh_key::Error),
    #[error("spec.keys.authorized_key is not a valid OpenSSH public key")]
    AuthorizedKey(#[source] russh::keys::ssh_key::Error),
}

/// What every connection shares.
pub struct Shared {
    pub sessions: Arc<Sessions>,
    pub authorized: PublicKey,
    pub hostname: String,
    pub booted_at: i64,
    /// The VM runs in maintenance mode (no primary session).
    pub maintenance: bool,
    /// Notified once the host asked to power off and has the answer.
    pub power_off: Arc<Notify>,
}

pub struct Server {
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
    /// Whether a host connection is up (handshake done, not yet gone).
    presence: watch::Sender<bool>,
}

impl Server {
    pub fn new(
        keys: &proto::v1::Keys,
        sessions: Arc<Sessions>,
        hostname: String,
        booted_at: i64,
        maintenance: bool,
        power_off: Arc<Notify>,
    ) -> Result<Self, ServerError> {
        let host_key =
            PrivateKey::from_openssh(keys.host_key.as_bytes()).map_err(ServerError::HostKey)?;
        let authorized = PublicKey::from_openssh(keys.authorized_key.trim())
            .map_err(ServerError::AuthorizedKey)?;
        let config = russh::server::Config {
            server_id: russh::SshId::Standard(
                format!("SSH-2.0-tether_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            auth_rejection_time: Duration::from_millis(50),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host_key],
            inactivity_timeout: None,
            window_size: 8 << 20,
            maximum_packet_size: 32768,
            channel_buffer_size: 256,
            ..Default::default()
        };
        Ok(Self {
            config: Arc::new(config),
            shared: Arc::new(Shared {
                sessions,
                authorized,
                hostname,
                booted_at,
                maintenance,
                power_off,
            }),
            presence: watch::Sender::new(false),
        })
    }

    /// Follows whether a host is connected.
    pub fn host_presence(&self) -> watch::Receiver<bool> {
        self.presence.subscribe()
    }

    /// Serves one host connection after another on the port at `path`.
    /// A connection ends when the host goes away; the next one starts with
    /// a fresh handshake, whatever bytes the old one left in flight.
    pub async fn serve_forever(self, path: PathBuf) {
        loop {
            let mut port = match Port::open(&path) {
                Ok(p) => p,
                Err(e) => {
                    crate::error!("{e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let (watch, cutter) = (port.watch(), port.cutter());
            watch.until_connected().await;
            let handshake = tokio::select! {
                r = port.handshake() => r,
                _ = watch.until_gone() => continue,
            };
            if let Err(e) = handshake {
                crate::info!("host handshake failed: {e}");
                continue;
            }
            self.presence.send_replace(true);
            let conn = Conn {
                shared: self.shared.clone(),
                channels: HashMap::new(),
            };
            let session = async {
                match russh::server::run_stream(self.config.clone(), port, conn).await {
                    Ok(running) => running.await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            };
            tokio::select! {
                r = session => if let Err(e) = r {
                    crate::info!("host connection ended: {e}");
                },
                _ = watch.until_gone() => crate::info!("host disconnected"),
            }
            self.presence.send_replace(false);
            // Whatever still holds the port must let go of it.
            cutter.cut();
        }
    }
}

/// One host connection.
struct Conn {
    shared: Arc<Shared>,
    /// Channels opened but not yet given a purpose (RPC or attach).
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl Conn {
    fn authorized(&self, key: &PublicKey) -> Auth {
        if key.key_data() == self.shared.authorized.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.authorized(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let auth = self.authorized(key.public_key);
        if !matches!(auth, Auth::Accept) {
            crate::info!("refused a client key that is not the authorized one");
        }
        Ok(auth)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match (name, self.channels.remove(&id)) {
            (proto::RPC_SUBSYSTEM, Some(channel)) => {
                session.channel_success(id)?;
                tokio::spawn(rpc::serve(channel, self.shared.clone()));
            }
            (proto::ARCHIVE_SUBSYSTEM, Some(channel)) => {
                session.channel_success(id)?;
                tokio::spawn(archive::serve(channel));
            }
            _ => session.channel_failure(id)?,
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let target = AttachRequest::decode(data).ok().and_then(|req| {
            attach::check(&self.shared.sessions, &req)
                .ok()
                .map(|s| (req, s))
        });
        match (target, self.channels.remove(&id)) {
            (Some((req, s)), Some(channel)) => {
                session.channel_success(id)?;
                tokio::spawn(attach::serve(channel, req, s));
            }
            _ => session.channel_failure(id)?,
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        id: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The terminal belongs to the session spec; accept so that standard
        // clients proceed.
        session.channel_success(id)?;
        Ok(())
    }
}

/// Returns once no host has been connected for `grace` in a row: from the
/// start, or after a disconnection. A host that connects within the grace
/// period starts the count afresh when it goes.
pub async fn until_host_absent_for(mut presence: watch::Receiver<bool>, grace: Duration) {
    loop {
        if presence.wait_for(|up| !*up).await.is_err() {
            // The server is gone: nobody will ever connect again.
            return;
        }
        let back = tokio::time::timeout(grace, presence.wait_for(|up| *up)).await;
        match back {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn absence_counts_from_start_and_from_each_disconnection() {
        let grace = Duration::from_millis(100);
        let (tx, rx) = watch::channel(false);
        // Nobody ever comes.
        let t0 = std::time::Instant::now();
        until_host_absent_for(rx.clone(), grace).await;
        assert!(t0.elapsed() >= grace);

        // A host comes in time, stays a while, leaves, and returns in time:
        // the wait goes on.
        let waiter = tokio::spawn(until_host_absent_for(rx, grace));
        tokio::time::sleep(grace / 2).await;
        tx.send_replace(true);
        tokio::time::sleep(grace * 2).await;
        assert!(!waiter.is_finished(), "a connected host counts as present");
        tx.send_replace(false);
        tokio::time::sleep(grace / 2).await;
        tx.send_replace(true);
        tokio::time::sleep(grace * 2).await;
        assert!(!waiter.is_finished(), "the host came back in time");
        let t1 = std::time::Instant::now();
        tx.send_replace(false);
        waiter.await.unwrap();
        assert!(t1.elapsed() >= grace);
    }
}
