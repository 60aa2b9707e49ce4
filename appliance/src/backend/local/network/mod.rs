//! Host side of the local backend's networking: what runs on the host for
//! the network component's scopes. For now their name server (`dns`).

pub mod dns;
