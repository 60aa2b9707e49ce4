//! `appliance run`: create a container VM, attach to it, exit with its code.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use appliance::backend::local::{AccelChoice, BootArtifacts, BootMode, VmOptions, accel, vm};
use appliance::keys;
use appliance::storage::busybox;
use appliance::tether::AttachEvent;
use clap::Args;
use proto::v1::{SessionSpec, WindowSize};
use russh::keys::PrivateKey;
use tokio::io::AsyncReadExt;

#[derive(Args)]
pub struct RunArgs {
    /// Keep stdin open and forward it to the container.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal for the container's process.
    #[arg(short, long)]
    tty: bool,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short, long, default_value = "")]
    user: String,
    /// Working directory inside the container.
    #[arg(short, long, default_value = "")]
    workdir: String,
    /// Environment variables, KEY=VALUE.
    #[arg(short, long)]
    env: Vec<String>,
    /// Container hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Memory of the container VM in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Accelerator: auto (probe KVM, else TCG), kvm or tcg.
    #[arg(long, env = "APPLIANCE_ACCEL", default_value = "auto")]
    accel: AccelChoice,
    /// Directory with vmlinuz, initrd.img and bootstrap.iso.
    #[arg(long, env = "APPLIANCE_BOOT_DIR")]
    boot_dir: Option<PathBuf>,
    /// Boot bootstrap.iso as a CD-ROM (q35) instead of direct kernel boot.
    #[arg(long)]
    iso: bool,
    /// The image: `busybox` (built in).
    image: String,
    /// The command and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

pub async fn run(state: &Path, args: RunArgs) -> anyhow::Result<u8> {
    if args.image != busybox::IMAGE_NAME {
        bail!(
            "Image {:?} is not available: the only image is the built-in {:?}",
            args.image,
            busybox::IMAGE_NAME
        );
    }
    if args.command.is_empty() {
        bail!(
            "No command given: appliance run {} -- CMD [ARGS...]",
            args.image
        );
    }
    let artifacts = BootArtifacts::find(args.boot_dir.as_deref())?;
    std::fs::create_dir_all(state)
        .with_context(|| format!("Creating state directory {}", state.display()))?;
    let image = ensure_busybox(state)?;
    let key = client_key(state)?;
    let accel = accel::resolve(
        args.accel,
        Path::new("qemu-system-x86_64"),
        &artifacts.kernel,
        &artifacts.initrd,
        Some(state),
    )
    .await;

    let id = new_id()?;
    let workdir = state.join("containers").join(&id[..12]);
    std::fs::create_dir_all(&workdir).with_context(|| format!("Creating {}", workdir.display()))?;
    let window = if args.tty { terminal_size() } else { None };
    let primary = SessionSpec {
        id: id.clone(),
        args: args.command.clone(),
        env: args.env.clone(),
        working_dir: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        open_stdin: args.interactive,
        window,
        ..Default::default()
    };
    let mut opts = VmOptions::new(&id, artifacts, image, workdir.clone(), primary);
    opts.accel = accel;
    opts.memory_mib = args.memory;
    if let Some(h) = &args.hostname {
        opts.hostname.clone_from(h);
    }
    if args.iso {
        opts.boot = BootMode::Cdrom;
    }
    let result = run_vm(&opts, &key, &args).await;
    let _ = std::fs::remove_dir_all(&workdir);
    result
}

async fn run_vm(opts: &VmOptions, key: &PrivateKey, args: &RunArgs) -> anyhow::Result<u8> {
    let mut launched = vm::launch(opts, key.public_key())?;
    let client = launched.connect(key, Duration::from_secs(120)).await?;
    let mut attach = client.attach(&opts.id, (0, 0), args.interactive).await?;

    let _raw = if args.tty { RawTerminal::enter() } else { None };
    let (stdin_tx, mut stdin_rx) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(16);
    if args.interactive {
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = stdin_tx.send(None).await;
                        break;
                    }
                    Ok(n) => {
                        if stdin_tx.send(Some(buf[..n].to_vec())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    let mut code = None;
    let mut stdin_open = args.interactive;
    loop {
        tokio::select! {
            ev = attach.next() => match ev? {
                Some(AttachEvent::Stdout(b)) => { let mut o = std::io::stdout().lock(); o.write_all(&b)?; o.flush()?; }
                Some(AttachEvent::Stderr(b)) => { let mut e = std::io::stderr().lock(); e.write_all(&b)?; e.flush()?; }
                Some(AttachEvent::Exit(c)) => code = Some(c),
                None => break,
            },
            data = stdin_rx.recv(), if stdin_open => match data.flatten() {
                Some(d) => attach.write_stdin(&d).await?,
                None => { stdin_open = false; attach.close_stdin().await?; }
            },
        }
    }
    drop(_raw);
    let code = match code {
        Some(c) => c,
        None => client.wait(&opts.id).await?.exit_code,
    };
    // The tether powers the VM off once its output is acknowledged.
    if tokio::time::timeout(Duration::from_secs(30), launched.vm.wait())
        .await
        .is_err()
    {
        launched.vm.kill().await?;
    }
    Ok(u8::try_from(code).unwrap_or(255))
}

/// The built-in busybox image, built on first use.
fn ensure_busybox(state: &Path) -> anyhow::Result<PathBuf> {
    let dir = state.join("images");
    let path = dir.join("busybox.ext4");
    if !path.exists() {
        std::fs::create_dir_all(&dir)?;
        eprintln!("appliance: building the busybox image (once)...");
        busybox::build(&path, 64, &[])?;
    }
    Ok(path)
}

/// The appliance's client key, created on first use.
fn client_key(state: &Path) -> anyhow::Result<PrivateKey> {
    let path = state.join("client_key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return PrivateKey::from_openssh(text.as_bytes())
            .with_context(|| format!("{} is not an OpenSSH private key", path.display()));
    }
    let key = keys::generate()?;
    std::fs::write(&path, keys::private_openssh(&key)?)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(key)
}

fn new_id() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).context("Reading system randomness")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn terminal_size() -> Option<WindowSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the valid pointer.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then(|| WindowSize {
        rows: ws.ws_row.into(),
        cols: ws.ws_col.into(),
    })
}

/// The local terminal in raw mode, restored on drop.
struct RawTerminal(nix::sys::termios::Termios);

impl RawTerminal {
    fn enter() -> Option<Self> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(Self(saved))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}
