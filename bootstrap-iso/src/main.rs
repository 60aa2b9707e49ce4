//! `bootstrap-iso`: the command line on top of the library; parses flags,
//! prints progress on stderr and nothing else.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

/// Builds the container VM boot artifacts: vmlinuz, initrd.img and
/// bootstrap.iso.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Output directory for vmlinuz, initrd.img and bootstrap.iso.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The static tether binary, packed as /init.
    #[arg(long, value_name = "PATH", default_value = bootstrap_iso::DEFAULT_TETHER)]
    tether: PathBuf,
    /// Kernel image [default: newest /boot/vmlinuz-*-cloud-amd64].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Kernel modules directory [default: /lib/modules/<kernel version>].
    #[arg(long, value_name = "PATH")]
    modules_dir: Option<PathBuf>,
    /// Build only vmlinuz and initrd.img.
    #[arg(long)]
    no_iso: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let opts = bootstrap_iso::Options {
        out: cli.out,
        tether: cli.tether,
        kernel: cli.kernel,
        modules_dir: cli.modules_dir,
        iso: !cli.no_iso,
        modules: Vec::new(),
    };
    bootstrap_iso::build(&opts, &mut |line| eprintln!("{line}"))?;
    Ok(())
}
