//! Pulling an image from a registry into the blob store, with `oci-client`
//! for the HTTP, auth (anonymous, basic, bearer tokens) and TLS.
//!
//! The client is trusted with transport only: manifests and blobs are
//! hashed here and checked against their digests, and manifest lists are
//! resolved to the wanted platform here.

use std::sync::Once;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::blobs::{check_digest, digest_of};
use super::format::{self, Descriptor, JSON_LIMIT, LayerRef, Manifest, media_type};
use super::reference::{parse, plain_http};
use super::{BlobStore, FetchedImage, OciError};

/// How many layers are downloaded at once.
const CONCURRENT_LAYERS: usize = 3;
/// Progress is reported at most once per this many bytes of a layer.
const PROGRESS_STEP: u64 = 512 * 1024;

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (`host:port`, `host` or a CIDR range) that may be spoken
    /// to over plain HTTP. Loopback registries always may.
    pub insecure_registries: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub platform_os: String,
    pub platform_arch: String,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            username: None,
            password: None,
            platform_os: "linux".into(),
            platform_arch: "amd64".into(),
        }
    }
}

/// What a pull reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The manifest and config are in; these layers come next.
    Resolved {
        reference: String,
        manifest_digest: String,
        layers: Vec<LayerRef>,
    },
    /// `done` of `total` bytes of a layer are in.
    Layer {
        digest: String,
        done: u64,
        total: u64,
    },
    /// A layer is in the blob store; `cached` if it already was.
    LayerDone { digest: String, cached: bool },
}

/// Makes ring rustls' process-wide crypto provider (reqwest is built
/// without one of its own).
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed: fine.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    });
}

/// Pulls `reference` for the platform in `opts` into `blobs`.
pub async fn pull(
    reference: &str,
    opts: &PullOptions,
    blobs: &BlobStore,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<FetchedImage, OciError> {
    let image = parse(reference)?;
    let https = !plain_http(image.registry(), &opts.insecure_registries);
    pull_over(image, https, opts, blobs, progress).await
}

/// Names the reference in errors and turns the client's errors into ours.
struct Ctx {
    reference: String,
    registry: String,
    https: bool,
    credentials: bool,
}

impl Ctx {
    fn auth(&self, e: OciDistributionError) -> OciError {
        if self.credentials {
            OciError::AuthFailed {
                registry: self.registry.clone(),
                reference: self.reference.clone(),
                source: e,
            }
        } else {
            OciError::AuthRequired {
                registry: self.registry.clone(),
                reference: self.reference.clone(),
            }
        }
    }

    /// `blob` is the digest being fetched, None for a manifest.
    fn map(&self, e: OciDistributionError, blob: Option<&str>) -> OciError {
        let not_found = || match blob {
            Some(d) => OciError::BlobUnknown {
                reference: self.reference.clone(),
                digest: d.to_string(),
            },
            None => OciError::ManifestUnknown {
                reference: self.reference.clone(),
            },
        };
        match e {
            OciDistributionError::RequestError(ref re) => {
                let failure = transport_failure(re);
                self.transport(failure, e)
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => self.auth(e),
            OciDistributionError::ServerError { code: 401, .. } => self.auth(e),
            OciDistributionError::ServerError { code: 404, .. } => not_found(),
            OciDistributionError::RegistryError { ref envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found()
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    self.auth(e)
                } else {
                    self.other(e)
                }
            }
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => OciError::Verification { expected, actual },
            e => self.other(e),
        }
    }

    fn other(&self, e: OciDistributionError) -> OciError {
        OciError::Registry {
            reference: self.reference.clone(),
            source: e,
        }
    }

    /// A request that got no HTTP answer.
    fn transport(&self, failure: Transport, e: OciDistributionError) -> OciError {
        let registry = self.registry.clone();
        match failure {
            Transport::NotTls if self.https => OciError::HttpsRefused {
                registry,
                source: e,
            },
            Transport::Certificate if self.https => OciError::Certificate {
                registry,
                source: e,
            },
            _ => OciError::Unreachable {
                registry,
                source: e,
            },
        }
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, PartialEq, Eq)]
enum Transport {
    /// The TLS handshake got an answer that is not TLS: most likely a
    /// plain-HTTP registry.
    NotTls,
    /// The server's certificate was not accepted.
    Certificate,
    /// No connection, or anything else.
    Other,
}

fn transport_failure(e: &(dyn std::error::Error + 'static)) -> Transport {
    use tokio_rustls::rustls::Error as Tls;
    /// Walks sources, and the errors io::Errors wrap (which their
    /// `source()` skips).
    fn walk(e: &(dyn std::error::Error + 'static)) -> Transport {
        match e.downcast_ref::<Tls>() {
            Some(Tls::InvalidCertificate(_) | Tls::NoCertificatesPresented) => {
                return Transport::Certificate;
            }
            Some(_) => return Transport::NotTls,
            None => {}
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            ) {
                return Transport::Other;
            }
            if let Some(inner) = io.get_ref() {
                let t = walk(inner);
                if t != Transport::Other {
                    return t;
                }
            }
        }
        e.source().map_or(Transport::Other, walk)
    }
    walk(e)
}

/// Pulls `image` over HTTPS or plain HTTP; split from [`pull`] so that
/// tests can force HTTPS against a loopback server.
pub(super) async fn pull_over(
    image: Reference,
    https: bool,
    opts: &PullOptions,
    blobs: &BlobStore,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<FetchedImage, OciError> {
    install_crypto_provider();
    let ctx = Ctx {
        reference: image.whole(),
        registry: image.registry().to_string(),
        https,
        credentials: opts.username.is_some(),
    };
    let client = Client::try_from(ClientConfig {
        protocol: if https {
            ClientProtocol::Https
        } else {
            ClientProtocol::Http
        },
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..Default::default()
    })
    .map_err(OciError::Client)?;
    let auth = match (&opts.username, &opts.password) {
        (Some(u), p) => RegistryAuth::Basic(u.clone(), p.clone().unwrap_or_default()),
        (None, _) => RegistryAuth::Anonymous,
    };
    // Finds out how the registry wants to be spoken to (and gets a bearer
    // token if it hands them out).
    client
        .auth(&image, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| ctx.map(e, None))?;

    // The manifest, resolved through an index if need be.
    let (mut bytes, mut digest) = fetch_manifest(&client, &image, &auth, &ctx).await?;
    let what = ctx.reference.as_str();
    let (config_desc, layer_descs) = match format::parse_manifest(&bytes, what)? {
        Manifest::Image { config, layers } => (config, layers),
        Manifest::Index(entries) => {
            let entry =
                format::choose_platform(&entries, &opts.platform_os, &opts.platform_arch, what)?;
            check_digest(&entry.digest)?;
            let by_digest = image.clone_with_digest(entry.digest.clone());
            (bytes, digest) = fetch_manifest(&client, &by_digest, &auth, &ctx).await?;
            if digest != entry.digest {
                return Err(OciError::Verification {
                    expected: entry.digest.clone(),
                    actual: digest,
                });
            }
            match format::parse_manifest(&bytes, what)? {
                Manifest::Image { config, layers } => (config, layers),
                Manifest::Index(_) => {
                    return Err(OciError::UnsupportedManifest {
                        what: format!("{what}@{}", entry.digest),
                        media_type: "an index inside an index".into(),
                    });
                }
            }
        }
    };
    check_digest(&config_desc.digest)?;
    format::check_layers(&layer_descs, what)?;
    if !blobs.reuse(&digest) {
        blobs.write_bytes(Some(&digest), &bytes)?;
    }

    // The config: checked for platform and layer count before any layer.
    if !blobs.reuse(&config_desc.digest) {
        fetch_blob(&client, &image, &config_desc, blobs, &ctx, &|_| {}).await?;
    }
    let config_raw = blobs.read(&config_desc.digest, JSON_LIMIT)?;
    let (config, diff_ids) = format::parse_config(&config_raw, what)?;
    format::check_config(
        &config,
        &diff_ids,
        layer_descs.len(),
        &opts.platform_os,
        &opts.platform_arch,
        what,
    )?;

    let declared: Vec<LayerRef> = layer_descs
        .iter()
        .map(|d| LayerRef {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            size: d.size,
        })
        .collect();
    progress(Progress::Resolved {
        reference: ctx.reference.clone(),
        manifest_digest: digest.clone(),
        layers: declared,
    });

    // Owned descriptors: a closure over borrowed ones makes this future
    // not `Send` for every lifetime, and then it cannot be spawned.
    let layers: Vec<LayerRef> = futures::stream::iter(layer_descs.iter().cloned())
        .map(|d| {
            let (client, image, ctx) = (&client, &image, &ctx);
            async move {
                let d = &d;
                let cached = blobs.reuse(&d.digest);
                let size = if cached {
                    blobs.size(&d.digest).map_err(|source| OciError::BlobRead {
                        digest: d.digest.clone(),
                        source,
                    })?
                } else {
                    fetch_blob(client, image, d, blobs, ctx, &|done| {
                        progress(Progress::Layer {
                            digest: d.digest.clone(),
                            done,
                            total: d.size,
                        })
                    })
                    .await?
                };
                progress(Progress::LayerDone {
                    digest: d.digest.clone(),
                    cached,
                });
                Ok::<_, OciError>(LayerRef {
                    digest: d.digest.clone(),
                    media_type: d.media_type.clone(),
                    size,
                })
            }
        })
        .buffered(CONCURRENT_LAYERS)
        .try_collect()
        .await?;

    Ok(FetchedImage {
        reference: Some(ctx.reference.clone()),
        manifest_digest: digest,
        config_digest: config_desc.digest.clone(),
        config,
        config_raw,
        layers,
        diff_ids,
    })
}

/// Fetches a manifest and checks it against the digest it was asked by
/// (if any); returns its bytes and digest (computed here).
async fn fetch_manifest(
    client: &Client,
    image: &Reference,
    auth: &RegistryAuth,
    ctx: &Ctx,
) -> Result<(Vec<u8>, String), OciError> {
    let (bytes, _) = client
        .pull_manifest_raw(image, auth, media_type::ACCEPTED_MANIFESTS)
        .await
        .map_err(|e| ctx.map(e, None))?;
    if bytes.len() as u64 > JSON_LIMIT {
        return Err(OciError::TooBig {
            what: format!("The manifest of {}", ctx.reference),
            size: bytes.len() as u64,
            limit: JSON_LIMIT,
        });
    }
    let actual = digest_of(&bytes);
    if let Some(expected) = image.digest()
        && expected != actual
    {
        return Err(OciError::Verification {
            expected: expected.to_string(),
            actual,
        });
    }
    Ok((bytes.to_vec(), actual))
}

/// Streams a blob into the store, hashing it as it comes; returns its size.
/// `on_progress` is called with the bytes received so far.
async fn fetch_blob(
    client: &Client,
    image: &Reference,
    desc: &Descriptor,
    blobs: &BlobStore,
    ctx: &Ctx,
    on_progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, OciError> {
    let digest = desc.digest.as_str();
    let mut stream = client
        .pull_blob_stream(image, &digest)
        .await
        .map_err(|e| ctx.map(e, Some(digest)))?;
    // Sizes in a verified manifest bound what is accepted; a manifest
    // without sizes (size 0) bounds nothing.
    let max = (desc.size > 0).then_some(desc.size);
    let mut w = blobs.async_writer(digest, max).await?;
    let mut reported = 0;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                w.write(&chunk).await?;
                if w.size() - reported >= PROGRESS_STEP {
                    reported = w.size();
                    on_progress(reported);
                }
            }
            // The client checks the digest too, at the end of the stream:
            // all the data has been through `w`, whose own check (in
            // `finish`) names what arrived.
            Err(e) if is_digest_mismatch(&e) => break,
            Err(source) => {
                return Err(OciError::Download {
                    digest: digest.to_string(),
                    source,
                });
            }
        }
    }
    let size = w.finish().await?;
    if size != reported {
        on_progress(size);
    }
    Ok(size)
}

fn is_digest_mismatch(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| {
        matches!(
            inner.downcast_ref::<oci_client::errors::DigestError>(),
            Some(oci_client::errors::DigestError::VerificationError { .. })
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain-HTTP server on loopback answering every connection with 400,
    /// as a registry does to a TLS handshake; returns its address.
    async fn plain_http_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        addr
    }

    async fn pull_from(addr: &str, https: bool) -> OciError {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let image = parse(&format!("{addr}/test/img:v1")).unwrap();
        pull_over(image, https, &PullOptions::default(), &blobs, &|_| {})
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn https_to_a_plain_http_registry_says_what_to_do() {
        let addr = plain_http_server().await;
        let e = pull_from(&addr.to_string(), true).await;
        assert!(matches!(e, OciError::HttpsRefused { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("insecure registries"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        for https in [true, false] {
            let e = pull_from(&format!("127.0.0.1:{port}"), https).await;
            assert!(matches!(e, OciError::Unreachable { .. }), "{e:?}");
        }
    }

    /// A TLS server on loopback with a self-signed certificate.
    async fn self_signed_tls_server() -> std::net::SocketAddr {
        use tokio_rustls::rustls::ServerConfig;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
        let config = ServerConfig::builder_with_provider(std::sync::Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let _ = acceptor.accept(conn).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_named() {
        let addr = self_signed_tls_server().await;
        let e = pull_from(&addr.to_string(), true).await;
        assert!(matches!(e, OciError::Certificate { .. }), "{e:?}");
    }
}
