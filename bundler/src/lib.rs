//! The connected side: resolve what a bundle needs, fetch it verified, and
//! assemble the signed bundle.
#![forbid(unsafe_code)]
pub mod auth;
pub mod build;
pub mod cache;
pub mod fresh;
pub mod imageset;
pub mod lint;
pub mod locking;
pub mod progress;
pub mod registry;
pub mod release;
pub mod space;
pub mod store;
pub mod usb;
