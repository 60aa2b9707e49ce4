pub mod events;
pub mod exec;
pub mod filter;
pub mod model;
pub mod network;
pub mod policy;
pub mod storage;
pub mod validate;
