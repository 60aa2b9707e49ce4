//! The subcommands end to end against the real REST server (`api`) over
//! the in-memory execution environment (`backend::fake`), on a unix socket
//! in a temporary directory: parsing, the handle sequences, exit statuses
//! and error messages, without VMs. Tests only.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use appliance::backend::fake::FakeBackend;
use appliance::handle::HandleKey;
use appliance::portlayer::events::Events;
use appliance::portlayer::exec::PortLayer;
use appliance::portlayer::model::PowerState;
use appliance::portlayer::storage::Storage;
use appliance::store::Store;
use clap::Parser;

use super::client::SOCKET;
use super::{Cli, Exit, dispatch};

struct Server {
    dir: tempfile::TempDir,
    pl: Arc<PortLayer>,
    fake: Arc<FakeBackend>,
}

async fn server() -> Server {
    serve(false).await
}

/// With the storage component too, its stores in the temporary directory
/// (and no images in them).
async fn server_with_storage() -> Server {
    serve(true).await
}

async fn serve(with_storage: bool) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open_in_memory().expect("store"));
    let fake = Arc::new(FakeBackend::default());
    let key = HandleKey::from_bytes([7; 32]);
    let pl = if with_storage {
        let events = Arc::new(Events::new(store.clone()));
        let storage = Storage::open(store.clone(), events.clone(), dir.path()).expect("storage");
        PortLayer::with_storage(store, events, Some(storage), key, fake.clone())
    } else {
        PortLayer::new(store, key, fake.clone())
    };
    let listener = appliance::api::bind_unix(&dir.path().join(SOCKET)).expect("bind");
    let router = appliance::api::router(pl.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server { dir, pl, fake }
}

/// Runs `appliance --state <dir> ARGS…` in-process: its exit status, or
/// the error main would print.
async fn cli(state: &Path, args: &[&str]) -> Result<u8, String> {
    let state = state.to_string_lossy().to_string();
    let argv = ["appliance", "--state", state.as_str()]
        .into_iter()
        .chain(args.iter().copied());
    let parsed = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let state = parsed.state.clone().expect("state");
    match dispatch(state, parsed.command).await {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => Ok(*code),
            None => Err(format!("{e:#}")),
        },
    }
}

impl Server {
    async fn run(&self, args: &[&str]) -> Result<u8, String> {
        cli(self.dir.path(), args).await
    }

    fn state_of(&self, name: &str) -> PowerState {
        self.pl.inspect(name).expect("container").state
    }

    fn calls(&self) -> Vec<String> {
        self.fake
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until the container is in `state`.
    async fn until(&self, name: &str, state: PowerState) {
        for _ in 0..200 {
            if self.pl.inspect(name).map(|c| c.state).ok() == Some(state) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name} never became {state:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_through_handles() {
    let s = server().await;
    assert_eq!(
        s.run(&[
            "create", "--name", "web", "-l", "app=web", "busybox", "--", "sleep", "1d"
        ])
        .await,
        Ok(0)
    );
    assert_eq!(s.state_of("web"), PowerState::Created);
    assert_eq!(s.run(&["ps"]).await, Ok(0));
    assert_eq!(
        s.run(&["ps", "-a", "--filter", "label.app=web"]).await,
        Ok(0)
    );

    assert_eq!(s.run(&["start", "web"]).await, Ok(0));
    assert_eq!(s.state_of("web"), PowerState::Running);
    // Starting again is a NOOP, not an error.
    assert_eq!(s.run(&["start", "web"]).await, Ok(0));

    let id = s.pl.inspect("web").expect("web").id;
    assert_eq!(s.run(&["kill", "-s", "USR1", "web"]).await, Ok(0));
    assert!(s.calls().contains(&format!("signal {id} {id} 10")));

    assert_eq!(s.run(&["rename", "web", "front"]).await, Ok(0));
    assert_eq!(s.pl.inspect("front").expect("renamed").id, id);
    assert_eq!(s.run(&["inspect", "front"]).await, Ok(0));

    // Running: rm without -f is refused by the server.
    let e = s.run(&["rm", "front"]).await;
    assert_eq!(e, Ok(1));

    assert_eq!(
        s.run(&["exec", "-d", "front", "--", "echo", "hi"]).await,
        Ok(0)
    );
    assert!(
        s.calls()
            .iter()
            .any(|c| c.starts_with(&format!("exec {id} ")))
    );

    // `stop` returns once the container is down.
    assert_eq!(s.run(&["stop", "front"]).await, Ok(0));
    assert_eq!(s.state_of("front"), PowerState::Exited);
    assert_eq!(s.pl.inspect("front").expect("front").exit_code, Some(143));
    assert_eq!(s.run(&["wait", "front"]).await, Ok(0));

    assert_eq!(s.run(&["rm", "front"]).await, Ok(0));
    let e = s.run(&["inspect", "front"]).await;
    assert_eq!(e, Ok(1));
    let e = s.run(&["rename", "front", "x"]).await.expect_err("gone");
    assert!(
        e.starts_with("Error response from appliance: ") && e.ends_with("code NOT_FOUND)"),
        "{e}"
    );
    assert_eq!(e.matches("Error response").count(), 1, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn several_targets_fail_one_by_one() {
    let s = server().await;
    assert_eq!(
        s.run(&["create", "--name", "a", "busybox", "true"]).await,
        Ok(0)
    );
    // One good, one missing: the good one is started, the status is 1.
    assert_eq!(s.run(&["start", "a", "missing"]).await, Ok(1));
    assert_eq!(s.state_of("a"), PowerState::Running);
    assert_eq!(s.run(&["kill", "a", "missing"]).await, Ok(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn run_exits_with_the_task_code_and_removes() {
    let s = server().await;
    let exiter = {
        let pl = s.pl.clone();
        let fake = s.fake.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(c) = pl.inspect("job")
                    && c.state == PowerState::Running
                {
                    // Let the client attach first.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    fake.exit_task(&c.id, &c.id, 3);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let code = s
        .run(&[
            "run", "--rm", "--name", "job", "busybox", "--", "sh", "-c", "exit 3",
        ])
        .await;
    assert_eq!(code, Ok(3));
    exiter.await.expect("exiter");
    assert!(s.pl.inspect("job").is_err(), "--rm removed it");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_detached_and_exec_errors() {
    let s = server().await;
    assert_eq!(
        s.run(&["run", "-d", "--name", "bg", "busybox", "sleep", "1d"])
            .await,
        Ok(0)
    );
    assert_eq!(s.state_of("bg"), PowerState::Running);
    assert!(
        s.run(&["run", "--rm", "-d", "busybox", "true"])
            .await
            .is_err()
    );
    let c = s.pl.inspect("bg").expect("bg");
    s.fake.exit_task(&c.id, &c.id, 0);
    s.until("bg", PowerState::Exited).await;
    // Binding a task to a stopped container is refused at commit.
    let e = s
        .run(&["exec", "bg", "--", "true"])
        .await
        .expect_err("not running");
    assert!(e.contains("not running"), "{e}");
    // This execution environment keeps no logs.
    let e = s.run(&["logs", "bg"]).await.expect_err("no log");
    assert!(e.contains("code NOT_FOUND"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_refused_at_once_gets_the_refusal_not_a_broken_pipe() {
    let s = server_with_storage().await;
    // Far more than the socket buffers hold: the server refuses the upload
    // before the client has sent most of it.
    let src = s.dir.path().join("big");
    std::fs::write(&src, vec![7u8; 64 << 20]).expect("write");
    let src = src.to_string_lossy();
    for _ in 0..3 {
        let e = s
            .run(&["cp", &src, "nosuch:/tmp"])
            .await
            .expect_err("no such container");
        assert!(e.contains("code NOT_FOUND"), "{e}");
        assert!(e.contains("nosuch"), "{e}");
        // Not a tar: refused at its first block, as the client's fault.
        let e = s.run(&["import", &src]).await.expect_err("not a tar");
        assert!(
            e.contains("element archive, code INVALID_ARGUMENT")
                && e.contains("The archive is not an image archive"),
            "{e}"
        );
    }
    assert_eq!(s.run(&["images", "-q"]).await, Ok(0));
}
