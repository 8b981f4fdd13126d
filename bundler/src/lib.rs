//! The connected side: resolve what a bundle needs, fetch it verified, and
//! assemble the signed bundle.
#![forbid(unsafe_code)]
