//! Test rig for airgap, used by the tests, `scripts/demo` and the benchmarks.
//!
//! Everything here runs on 127.0.0.1 and cleans up after itself on drop: a
//! real registry ([`registry`]) and a token server for it ([`token`]), a k3s
//! release download site ([`release`]),
//! images built in code ([`image`]), pushed byte-exact ([`push`]) as the demo
//! and benchmark sets ([`seed`]); private containerds ([`containerd`]), test
//! hosts in network namespaces ([`hosts`]), the k3s stand-in TEST DOUBLE
//! ([`standin`]) and the fault proxy ([`proxy`]); [`pki`] is the certificate
//! authorities of the registry, the token server and the stand-in. It is
//! test code: it trusts its own servers.
#![forbid(unsafe_code)]

pub mod conn_server;
pub mod http;
pub mod image;
pub mod pki;
pub mod proxy;
pub mod push;
pub mod registry;
pub mod release;
pub mod seed;
pub mod serve;
pub mod token;
mod watchdog;

pub use image::{busybox_layer, Image, ImageIndex, ImageSpec, Kind, Layer, LayerBuilder};
pub use push::RegistryClient;
pub use registry::{Registry, RegistryOptions};
pub use release::ReleaseServer;
pub use seed::{seed_bench, seed_demo, Seeded, SeededImage};
pub mod containerd;
pub mod hosts;
pub mod standin;
