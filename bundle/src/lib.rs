//! The airgap bundle format, shared by the builder and the installer.
//!
//! Owns everything that can be said about a bundle without a network or a
//! container runtime: digests and the streams that check them, `SHA256SUMS`
//! and its minisign signature, `bundle.json`, `images.lock`, the OCI image
//! layout inside the bundle, and the tar stream itself (written in v1 order,
//! read under the reader rules). It trusts nothing it reads until the
//! signature and the checksums say so.
#![forbid(unsafe_code)]

pub mod digest;
pub mod oci;
pub mod reference;
