//! The end-to-end tests, one binary: each module is one area (install,
//! cluster, hostile bundles, faults, ...) run against the real programs;
//! `support` holds their shared helpers and fixtures, built once per run
//! and shared between the tests that need the same bundle.

mod support;

mod bearer_auth;
mod build_failures;
mod cache_auth;
mod cli;
mod cluster;
mod containerd_restart;
mod faults;
mod flaky_registry;
mod full_disk;
mod hostile;
mod images;
mod install;
mod join;
mod lock_lint;
mod plan;
mod readback;
mod secrets;
mod split_usb;
mod standard_tools;
mod trust;
mod verify;
