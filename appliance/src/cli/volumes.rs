//! `appliance volume create|ls|inspect|rm`: the storage component's
//! volumes through the REST server.

use appliance::portlayer::storage::VolumeSpec;
use appliance::storage::model::Volume;
use clap::{Args, Subcommand};

use super::client::{Client, encode, with_query};
use super::images::human;
use super::output::{errln, outln, printable};

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume; prints its name.
    Create(CreateArgs),
    /// List volumes.
    Ls(LsArgs),
    /// Show volumes as JSON.
    Inspect(NamesArgs),
    /// Remove volumes and their data (refused while a container uses one).
    Rm(NamesArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Its name (default: a random one).
    pub name: Option<String>,
    /// Size: MiB, or with a unit (512M, 10G).
    #[arg(short, long, default_value = "1G")]
    pub size: String,
    /// Labels: key=value, or key for an empty value.
    #[arg(short, long)]
    pub label: Vec<String>,
    /// Volume store to put it in (default: "default").
    #[arg(long, default_value = "")]
    pub store: String,
}

#[derive(Args)]
pub struct LsArgs {
    /// Filterspec over name, store, fstype, size_mib and label.<key>.
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Only the names.
    #[arg(short, long)]
    pub quiet: bool,
    /// Show the volume stores and their usage instead.
    #[arg(long)]
    pub stores: bool,
}

#[derive(Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// "512", "512M", "10G", "1T" → MiB.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'M' => 1,
                'G' => 1024,
                'T' => 1024 * 1024,
                _ => anyhow::bail!("Invalid size {s:?}: use MiB, or a number with M, G or T"),
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("Invalid size {s:?}: use MiB, or a number with M, G or T"))?;
    Ok(n * mult)
}

pub async fn volume(client: &Client, cmd: VolumeCommand) -> anyhow::Result<u8> {
    match cmd {
        VolumeCommand::Create(a) => {
            let spec = VolumeSpec {
                name: a.name.unwrap_or_default(),
                store: a.store,
                size_mib: parse_size(&a.size)?,
                labels: super::run::labels(&a.label),
            };
            let v: Volume = client.post("/storage/volumes", &spec).await?;
            outln!("{}", v.name)?;
            Ok(0)
        }
        VolumeCommand::Ls(a) => {
            if a.stores {
                return super::images::stores(client, "/storage/volume-stores", "VOLUMES").await;
            }
            let path = with_query("/storage/volumes", &[("filter", a.filter)]);
            let vols: Vec<Volume> = client.get(&path).await?;
            if a.quiet {
                for v in vols {
                    outln!("{}", printable(&v.name))?;
                }
                return Ok(0);
            }
            outln!(
                "{:<32} {:>8} {:>10}  {:<10} USED BY",
                "VOLUME NAME",
                "SIZE",
                "ON DISK",
                "STORE"
            )?;
            for v in vols {
                outln!(
                    "{:<32} {:>8} {:>10}  {:<10} {}",
                    printable(&v.name),
                    format!("{}M", v.size_mib),
                    human(v.disk_size),
                    printable(&v.store),
                    printable(&v.used_by.join(", "))
                )?;
            }
            Ok(0)
        }
        VolumeCommand::Inspect(a) => {
            let mut out = Vec::new();
            let mut status = 0;
            for n in &a.names {
                match client
                    .get::<serde_json::Value>(&format!("/storage/volumes/{}", encode(n)))
                    .await
                {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        errln!("appliance: {e}");
                        status = 1;
                    }
                }
            }
            outln!("{}", serde_json::to_string_pretty(&out)?)?;
            Ok(status)
        }
        VolumeCommand::Rm(a) => {
            let mut status = 0;
            for n in &a.names {
                match client
                    .delete::<()>(&format!("/storage/volumes/{}", encode(n)))
                    .await
                {
                    Ok(()) => outln!("{n}")?,
                    Err(e) => {
                        errln!("appliance: {e}");
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64M").unwrap(), 64);
        assert_eq!(parse_size("2g").unwrap(), 2048);
        assert!(parse_size("2x").is_err());
        assert!(parse_size("").is_err());
    }
}
