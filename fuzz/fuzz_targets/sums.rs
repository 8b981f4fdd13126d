//! `SHA256SUMS` parsing: never a panic, and what parses renders back to
//! the same text and parses to the same list.
#![no_main]

use airgap_bundle::sums::Sums;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sums) = Sums::parse(data) {
        let text = sums.render();
        let again = Sums::parse(text.as_bytes()).expect("rendered SHA256SUMS parses");
        assert_eq!(again, sums);
    }
});
