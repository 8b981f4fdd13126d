//! The disconnected side: verify a bundle while it streams, import its images
//! into containerd, lay k3s down on the host and start it.
#![forbid(unsafe_code)]
pub mod layout;
pub mod preflight;
pub mod record;
pub mod root;
pub mod run;
pub mod service;
pub mod source;

pub mod cluster;
pub mod import;
pub mod install;
pub mod install_lock;
pub mod join;
pub mod stage;
pub mod status;
pub mod uninstall;
pub mod wait;
