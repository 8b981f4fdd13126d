//! The disconnected side: verify a bundle while it streams, import its images
//! into containerd, lay k3s down on the host and start it.
#![forbid(unsafe_code)]
