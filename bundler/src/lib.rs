//! The connected side: resolve what a bundle needs, fetch it verified, and
//! assemble the signed bundle.
//!
//! The async rule: library entry points are synchronous; those that need
//! async clients take a `&tokio::runtime::Handle` and drive their futures
//! with `handle.block_on` on the calling thread; no library builds a runtime
//! and nothing calls `tokio::task::block_in_place`.
#![forbid(unsafe_code)]
mod assemble;
pub mod auth;
pub mod build;
pub mod cache;
pub mod fresh;
pub mod imageset;
pub mod lint;
pub mod net;
pub mod pins;
pub mod progress;
pub mod registry;
pub mod release;
pub mod space;
pub mod store;
pub mod summary;
pub mod usb;
