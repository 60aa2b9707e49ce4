//! TLS for the TCP listener: loads the server's certificate chain and key
//! and the CA that client certificates must chain to (PEM files), and serves
//! the router over TLS 1.2/1.3 with client-certificate verification (rustls
//! with the `ring` provider, `WebPkiClientVerifier`). A connection without a
//! client certificate signed by that CA fails the handshake.
//!
//! Owns the PEM loading, the rustls configuration and the TLS accept loop.
//! It must not look at requests: once the handshake is done, each connection
//! goes to the router as it is (HTTP/1.1, with upgrades for attach).
//! Revocation lists are not checked.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("Reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid PEM", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{} holds no certificate (expected a PEM CERTIFICATE block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no private key (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("Certificate {index} in {} is not a usable CA certificate", path.display())]
    ClientCa {
        path: PathBuf,
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("Client CA {} cannot verify client certificates", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("{} and {} are not a usable certificate and key", cert.display(), key.display())]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// A loaded TLS configuration for the TCP listener: the server's
/// certificate and key, and the CA that client certificates are verified
/// against. Cheap to clone.
#[derive(Clone)]
pub struct TlsSettings {
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings").finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Loads `cert` (the server's certificate chain, leaf first), `key` (its
    /// private key: PKCS#8, PKCS#1 or SEC1) and `client_ca` (one or more CA
    /// certificates), all PEM.
    pub fn from_pem_files(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsError> {
        let chain = read_certs(cert)?;
        let private_key = read_key(key)?;
        let provider = Arc::new(ring::default_provider());
        let verifier = client_verifier(client_ca, read_certs(client_ca)?, provider.clone())?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .and_then(|b| {
                b.with_client_cert_verifier(verifier)
                    .with_single_cert(chain, private_key)
            })
            .map_err(|source| TlsError::CertKey {
                cert: cert.into(),
                key: key.into(),
                source,
            })?;
        // The router speaks HTTP/1.1 only (attach upgrades it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsSettings {
            config: Arc::new(config),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey { path: path.into() },
        source => TlsError::Pem {
            path: path.into(),
            source,
        },
    })
}

fn client_verifier(
    path: &Path,
    cas: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, ca) in cas.into_iter().enumerate() {
        roots.add(ca).map_err(|source| TlsError::ClientCa {
            path: path.into(),
            index,
            source,
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|source| TlsError::Verifier {
            path: path.into(),
            source,
        })
}

/// Serves `router` over TLS on `listener` until the listener fails for
/// good. A failed handshake ends that connection only (logged at debug).
pub async fn serve(router: Router, listener: TcpListener, tls: TlsSettings) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls.config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait, as axum does.
                tracing::error!("accepting a TLS connection: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tokio::spawn(connection(router.clone(), acceptor.clone(), tcp, peer));
    }
}

async fn connection(
    router: Router,
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(
            TokioIo::new(super::malformed::Io::new(stream)),
            TowerToHyperService::new(router),
        )
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, "TLS connection ended: {e}");
    }
}

/// Errors of one connection that `accept` reports, not of the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use futures::{SinkExt, StreamExt};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::rustls::ClientConfig;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    use super::super::testutil::Harness;
    use super::*;

    fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A leaf certificate signed by `ca`: PEM certificate and PEM key.
    fn leaf(
        ca: &CertifiedIssuer<'static, KeyPair>,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A CA, a server certificate for localhost, a client certificate from
    /// that CA and one from another CA, as PEM files in a temporary
    /// directory.
    struct Pki {
        dir: tempfile::TempDir,
        ca_pem: String,
        good_client: (String, String),
        wrong_client: (String, String),
    }

    impl Pki {
        fn new() -> Self {
            let ca = new_ca("appliance test CA");
            let other = new_ca("another CA");
            let (server_cert, server_key) = leaf(
                &ca,
                &["localhost", "127.0.0.1"],
                ExtendedKeyUsagePurpose::ServerAuth,
            );
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("server.pem"), server_cert).unwrap();
            std::fs::write(dir.path().join("server.key"), server_key).unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            Pki {
                dir,
                ca_pem: ca.pem(),
                good_client: leaf(&ca, &["client"], ExtendedKeyUsagePurpose::ClientAuth),
                wrong_client: leaf(&other, &["client"], ExtendedKeyUsagePurpose::ClientAuth),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn settings(&self) -> Result<TlsSettings, TlsError> {
            TlsSettings::from_pem_files(
                &self.path("server.pem"),
                &self.path("server.key"),
                &self.path("ca.pem"),
            )
        }

        /// A client trusting the CA, presenting `cert` if given.
        fn client(
            &self,
            cert: Option<&(String, String)>,
            versions: &[&'static rustls::SupportedProtocolVersion],
        ) -> TlsConnector {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
                .unwrap();
            let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
            let config = match cert {
                Some((cert, key)) => builder
                    .with_client_auth_cert(
                        vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                    )
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            TlsConnector::from(Arc::new(config))
        }
    }

    /// Serves a harness's router with `tls` on a loopback port.
    async fn serve_harness(h: &Harness, tls: TlsSettings) -> SocketAddr {
        let listener = crate::api::bind_tcp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::api::serve_tcp_listener(
            h.router.clone(),
            listener,
            Some(tls),
        ));
        addr
    }

    async fn connect(
        addr: SocketAddr,
        client: &TlsConnector,
    ) -> io::Result<TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        client
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// `GET /diagnostics/stats` over TLS: the response's status line.
    async fn stats_status(addr: SocketAddr, client: &TlsConnector) -> io::Result<String> {
        let exchange = async {
            let mut tls = connect(addr, client).await?;
            tls.write_all(
                b"GET /diagnostics/stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await?;
            let mut out = Vec::new();
            tls.read_to_end(&mut out).await?;
            let text = String::from_utf8_lossy(&out).into_owned();
            match text.split_once("\r\n") {
                Some((status, _)) => Ok(status.to_string()),
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("no status line in {text:?}"),
                )),
            }
        };
        tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .expect("the exchange ends within 10 s")
    }

    #[tokio::test]
    async fn client_certificates_from_the_ca_are_required() {
        let pki = Pki::new();
        let h = Harness::new();
        let addr = serve_harness(&h, pki.settings().unwrap()).await;

        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            let good = pki.client(Some(&pki.good_client), versions);
            assert_eq!(
                stats_status(addr, &good).await.unwrap(),
                "HTTP/1.1 200 OK",
                "{versions:?}"
            );
            let none = pki.client(None, versions);
            let e = stats_status(addr, &none).await.unwrap_err();
            assert!(
                e.to_string().contains("CertificateRequired")
                    || e.to_string().contains("HandshakeFailure"),
                "{versions:?}: {e}"
            );
            let wrong = pki.client(Some(&pki.wrong_client), versions);
            let e = stats_status(addr, &wrong).await.unwrap_err();
            assert!(e.to_string().contains("UnknownCA"), "{versions:?}: {e}");
        }
        // The failed handshakes did not stop the listener.
        let good = pki.client(Some(&pki.good_client), &[&rustls::version::TLS13]);
        assert_eq!(stats_status(addr, &good).await.unwrap(), "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn attach_upgrades_to_a_websocket_over_tls() {
        let pki = Pki::new();
        let h = Harness::new();
        let id = h.create("web").await;
        h.set_state(&id, "running").await;
        let addr = serve_harness(&h, pki.settings().unwrap()).await;
        let tls = connect(
            addr,
            &pki.client(Some(&pki.good_client), &[&rustls::version::TLS13]),
        )
        .await
        .unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(
            format!("wss://localhost/interaction/containers/{id}/attach?stdin=true"),
            tls,
        )
        .await
        .unwrap();
        ws.send(WsMessage::binary(&b"hello\n"[..])).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .unwrap();
        assert_eq!(echoed, WsMessage::binary(&b"\x01hello\n"[..]));
    }

    #[tokio::test]
    async fn pem_errors_name_the_file() {
        let pki = Pki::new();
        let garbage = pki.path("garbage.pem");
        std::fs::write(&garbage, "this is not a certificate\n").unwrap();
        let broken = pki.path("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = pki.path("missing.pem");
        let (cert, key, ca) = (
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        );
        let cases: [(&Path, &Path, &Path, &Path, &str); 6] = [
            (&garbage, &key, &ca, &garbage, "holds no certificate"),
            (&cert, &garbage, &ca, &garbage, "holds no private key"),
            (&cert, &key, &garbage, &garbage, "holds no certificate"),
            (&broken, &key, &ca, &broken, "is not valid PEM"),
            (&cert, &key, &missing, &missing, "Reading"),
            // The CA's certificate is no key for the server's.
            (&ca, &key, &ca, &key, "are not a usable certificate and key"),
        ];
        for (cert, key, ca, named, what) in cases {
            let e = TlsSettings::from_pem_files(cert, key, ca).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(&named.display().to_string()), "{text}");
            assert!(text.contains(what), "{text}");
        }
        let e = TlsSettings::from_pem_files(&broken, &key, &ca).unwrap_err();
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.contains("base64"), "{source}");
    }

    #[tokio::test]
    async fn plain_http_only_on_loopback() {
        let h = Harness::new();
        let e = crate::api::serve_tcp(h.router.clone(), "0.0.0.0:0".parse().unwrap(), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("not loopback"), "{e}");
    }
}
