//! The airgap bundle format, shared by the builder and the installer.
//!
//! Owns everything that can be said about a bundle without a network or a
//! container runtime: digests and the streams that check them, `SHA256SUMS`
//! and its minisign signature, `bundle.json`, `images.lock`, the OCI image
//! layout inside the bundle, and the tar stream itself (written in v1 order,
//! read under the reader rules). It trusts nothing it reads until the
//! signature and the checksums say so.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod digest;
pub mod error;
pub mod images_lock;
pub mod inspect;
pub mod keyfile;
pub mod meta;
pub mod oci;
pub mod path;
pub mod read;
pub mod reference;
pub mod sign;
pub mod source;
pub mod space;
pub mod split;
pub mod sums;
pub mod time;
pub mod write;
