//! Network namespaces for tests: every bridge, tap, address and rule a test
//! makes lives in a namespace it created, and nothing touches the
//! machine's own network. A namespace is deleted when its guard drops.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace of this test process, deleted on drop.
pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}; install iproute2"))
}

fn ok(o: Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Netns {
    /// A new namespace with its loopback up.
    pub fn new(tag: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "at-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ok(ip(&["netns", "add", &name]), "ip netns add");
        let ns = Netns { name };
        ns.run_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME args...`, for spawning.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }

    /// Runs a command inside, returning its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("running {args:?} in {}: {e}", self.name))
    }

    /// Runs a command inside; it must succeed.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Joins this namespace and `other` by a veth pair, `here`/`there`
    /// being "NAME ADDR/PREFIX" on each side, both up.
    pub fn link(&self, other: &Netns, here: (&str, &str), there: (&str, &str)) {
        self.run_ok(&[
            "ip", "link", "add", here.0, "type", "veth", "peer", "name", there.0,
        ]);
        self.run_ok(&["ip", "link", "set", there.0, "netns", &other.name]);
        self.run_ok(&["ip", "addr", "add", here.1, "dev", here.0]);
        self.run_ok(&["ip", "link", "set", here.0, "up"]);
        other.run_ok(&["ip", "addr", "add", there.1, "dev", there.0]);
        other.run_ok(&["ip", "link", "set", there.0, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
