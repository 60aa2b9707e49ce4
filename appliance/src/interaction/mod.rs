//! Interaction: attach streams, stdin/stdout/stderr, resize, and the
//! container logs persisted on the host.

pub mod logs;
pub mod persist;
