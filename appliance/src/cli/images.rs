//! `appliance pull`, `images`, `rmi`, `import` and `tag`: the storage
//! component's images through the REST server.
//!
//! Owns the progress display of a pull (one bar per layer, from the
//! server's JSON lines) and the image table.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use appliance::api::storage::PullEnd;
use appliance::portlayer::storage::{PullEvent, PullSpec};
use appliance::storage::model::Image;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use super::client::{Client, encode, with_query};
use super::output::{errln, outln, printable};

#[derive(Args)]
pub struct PullArgs {
    /// The image: busybox, registry:5000/team/app:v1, ...@sha256:...
    pub reference: String,
    /// Image store to put it in (default: "default").
    #[arg(long, default_value = "")]
    pub store: String,
    /// Allow plain HTTP to a registry that is not on a loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// Registry user name (the password comes from
    /// APPLIANCE_REGISTRY_PASSWORD).
    #[arg(long)]
    pub username: Option<String>,
    /// No progress bars, just the result.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct ImagesArgs {
    /// Filterspec over id, name, store, created_at and label.<key>.
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Only the ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show the image stores and their usage instead.
    #[arg(long)]
    pub stores: bool,
}

#[derive(Args)]
pub struct RmiArgs {
    /// Images: references, ids or id prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A `docker save` archive or an OCI image layout as a tar file.
    pub file: PathBuf,
    /// Name the image (the archive must hold one).
    #[arg(short, long)]
    pub tag: Option<String>,
    /// Image store to put it in (default: "default").
    #[arg(long, default_value = "")]
    pub store: String,
    /// No progress bar, just the result.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct TagArgs {
    /// The image: reference, id or id prefix.
    pub image: String,
    /// Its new name.
    pub name: String,
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// "1.2 MB", as docker prints sizes.
pub fn human(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// The progress display of one pull.
struct Bars {
    multi: MultiProgress,
    layers: HashMap<String, ProgressBar>,
    quiet: bool,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        let target = if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            layers: HashMap::new(),
            quiet,
        }
    }

    fn bar(&mut self, digest: &str, total: u64) -> &ProgressBar {
        self.layers.entry(digest.to_string()).or_insert_with(|| {
            let style = ProgressStyle::with_template(
                "{prefix} {bar:30} {bytes:>10}/{total_bytes:<10} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let b = self.multi.add(ProgressBar::new(total));
            b.set_style(style);
            b.set_prefix(short_id(digest).to_string());
            b
        })
    }

    fn event(&mut self, ev: PullEvent) {
        match ev {
            PullEvent::Resolved {
                reference, layers, ..
            } => {
                if !self.quiet {
                    let _ = self.multi.println(format!(
                        "{reference}: {} layer{}",
                        layers.len(),
                        if layers.len() == 1 { "" } else { "s" }
                    ));
                }
                for l in layers {
                    self.bar(&l.digest, l.size);
                }
            }
            PullEvent::Layer {
                digest,
                done,
                total,
            } => {
                let b = self.bar(&digest, total);
                b.set_length(total);
                b.set_position(done);
            }
            PullEvent::LayerDone { digest, cached } => {
                let b = self.bar(&digest, 0);
                if let Some(len) = b.length() {
                    b.set_position(len);
                }
                b.finish_with_message(if cached { "already here" } else { "done" });
            }
            PullEvent::Building { .. } => {
                for b in self.layers.values() {
                    b.finish();
                }
                if !self.quiet {
                    let _ = self.multi.println("building the image's disk...");
                }
            }
        }
    }
}

/// One line of the pull stream: a progress event or the end.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    End(PullEnd),
    Event(PullEventIn),
}

/// `PullEvent` as read back (the server's type only serializes).
#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
enum PullEventIn {
    Resolved {
        reference: String,
        manifest_digest: String,
        layers: Vec<appliance::storage::model::Layer>,
    },
    Layer {
        digest: String,
        done: u64,
        total: u64,
    },
    LayerDone {
        digest: String,
        cached: bool,
    },
    Building {
        image: String,
    },
}

impl From<PullEventIn> for PullEvent {
    fn from(e: PullEventIn) -> Self {
        match e {
            PullEventIn::Resolved {
                reference,
                manifest_digest,
                layers,
            } => PullEvent::Resolved {
                reference,
                manifest_digest,
                layers,
            },
            PullEventIn::Layer {
                digest,
                done,
                total,
            } => PullEvent::Layer {
                digest,
                done,
                total,
            },
            PullEventIn::LayerDone { digest, cached } => PullEvent::LayerDone { digest, cached },
            PullEventIn::Building { image } => PullEvent::Building { image },
        }
    }
}

/// `appliance pull`: progress bars while it runs; prints the image id.
pub async fn pull(client: &Client, args: PullArgs) -> anyhow::Result<u8> {
    let spec = PullSpec {
        reference: args.reference.clone(),
        store: args.store,
        insecure: args.insecure,
        password: args
            .username
            .as_ref()
            .and_then(|_| std::env::var("APPLIANCE_REGISTRY_PASSWORD").ok()),
        username: args.username,
    };
    let mut body = client.post_stream("/storage/images/pull", &spec).await?;
    let mut bars = Bars::new(args.quiet);
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = body.chunk().await? {
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Line>(line).with_context(|| {
                format!(
                    "Unexpected line from the appliance: {}",
                    String::from_utf8_lossy(line)
                )
            })? {
                Line::Event(ev) => bars.event(ev.into()),
                Line::End(PullEnd::Done { image }) => {
                    let _ = bars.multi.clear();
                    let name = image.names.first().cloned().unwrap_or_default();
                    errln!("{name}: pulled, {}", human(image.content_size));
                    outln!("{}", image.id)?;
                    return Ok(0);
                }
                Line::End(PullEnd::Error { error }) => {
                    let _ = bars.multi.clear();
                    bail!("{}", error.message);
                }
            }
        }
    }
    bail!(
        "The appliance ended the pull of {} without a result",
        args.reference
    )
}

/// A table of the image or volume stores at `path`, `items` naming what
/// they hold.
pub async fn stores(client: &Client, path: &str, items: &str) -> anyhow::Result<u8> {
    let stores: Vec<appliance::storage::model::StoreUsage> = client.get(path).await?;
    outln!(
        "{:<16} {items:>7} {:>10} {:>10}  PATH",
        "STORE",
        "USED",
        "FREE"
    )?;
    for s in stores {
        outln!(
            "{:<16} {:>7} {:>10} {:>10}  {}",
            printable(&s.name),
            s.items,
            human(s.used_bytes),
            human(s.free_bytes),
            printable(&s.path)
        )?;
    }
    Ok(0)
}

/// `appliance images`: a table of images (or of the image stores).
pub async fn images(client: &Client, args: ImagesArgs) -> anyhow::Result<u8> {
    if args.stores {
        return stores(client, "/storage/image-stores", "IMAGES").await;
    }
    let path = with_query("/storage/images", &[("filter", args.filter)]);
    let images: Vec<Image> = client.get(&path).await?;
    if args.quiet {
        for i in images {
            outln!("{}", short_id(&i.id))?;
        }
        return Ok(0);
    }
    outln!(
        "{:<48} {:<14} {:>10}  {:<10} USED BY",
        "REPOSITORY:TAG",
        "IMAGE ID",
        "SIZE",
        "STORE"
    )?;
    for i in images {
        let names = if i.names.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.names.clone()
        };
        for n in names {
            outln!(
                "{:<48} {:<14} {:>10}  {:<10} {}",
                printable(&n),
                short_id(&i.id),
                human(i.content_size),
                printable(&i.store),
                printable(&i.used_by.join(", "))
            )?;
        }
    }
    Ok(0)
}

#[derive(Deserialize)]
struct Removed {
    removed: Vec<String>,
}

/// `appliance rmi`: 1 if any could not be removed.
pub async fn rmi(client: &Client, args: RmiArgs) -> anyhow::Result<u8> {
    let mut status = 0;
    for img in &args.images {
        let path = format!("/storage/images/{}", encode(img));
        match client.delete::<Removed>(&path).await {
            Ok(r) => {
                for x in r.removed {
                    if x.starts_with("sha256:") {
                        outln!("Deleted: {x}")?;
                    } else {
                        outln!("Untagged: {x}")?;
                    }
                }
            }
            Err(e) => {
                errln!("appliance: {e}");
                status = 1;
            }
        }
    }
    if status != 0 && args.images.len() == 1 {
        return Err(super::Exit(1).into());
    }
    Ok(status)
}

/// The archive as it goes to the server, counted on a progress bar; at
/// its end the bar says what the server is still doing.
struct Sending {
    file: tokio::fs::File,
    bar: ProgressBar,
}

impl tokio::io::AsyncRead for Sending {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.file).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled {
            match buf.filled().len() - before {
                0 => {
                    self.bar.set_message("sent; building the image's disk...");
                    // Redrawn while the server works, with no more bytes.
                    self.bar
                        .enable_steady_tick(std::time::Duration::from_millis(250));
                }
                n => self.bar.inc(n as u64),
            }
        }
        polled
    }
}

/// `appliance import`: streams the file to the server with a progress bar;
/// prints the ids.
pub async fn import(client: &Client, args: ImportArgs) -> anyhow::Result<u8> {
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("Opening {}", args.file.display()))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let target = if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(size), target);
    bar.set_style(
        ProgressStyle::with_template("importing {wide_bar} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut q = vec![("store", args.store)];
    if let Some(t) = args.tag {
        q.push(("tag", t));
    }
    let path = with_query("/storage/images/import", &q);
    let sending = Sending {
        file,
        bar: bar.clone(),
    };
    let images = client
        .upload::<Vec<Image>>(hyper::Method::POST, &path, "application/x-tar", sending)
        .await;
    bar.finish_and_clear();
    for i in images? {
        let names = if i.names.is_empty() {
            "<none>".to_string()
        } else {
            i.names.join(", ")
        };
        errln!("{}: imported, {}", printable(&names), human(i.content_size));
        outln!("{}", i.id)?;
    }
    Ok(0)
}

/// `appliance tag`.
pub async fn tag(client: &Client, args: TagArgs) -> anyhow::Result<u8> {
    let body = serde_json::json!({ "image": args.image, "name": args.name });
    let img: Image = client.post("/storage/images/tag", &body).await?;
    outln!("{}", printable(&img.names.join(", ")))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_docker_prints_them() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500), "1.5 kB");
        assert_eq!(human(4_200_000), "4.2 MB");
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
    }

    #[test]
    fn pull_lines_parse() {
        let ev: Line =
            serde_json::from_str(r#"{"status":"layer","digest":"sha256:ab","done":1,"total":2}"#)
                .unwrap();
        assert!(matches!(
            ev,
            Line::Event(PullEventIn::Layer { done: 1, .. })
        ));
        let end: Line = serde_json::from_str(
            r#"{"status":"error","error":{"code":"NOT_FOUND","message":"no","element":"x"}}"#,
        )
        .unwrap();
        assert!(matches!(end, Line::End(PullEnd::Error { .. })));
    }
}
