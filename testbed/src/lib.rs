//! Test rig for airgap, used by the tests, `scripts/demo` and the benchmarks.
#![forbid(unsafe_code)]
