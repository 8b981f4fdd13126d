//! `bundle.json` parsing: never a panic; what parses serialises and parses
//! back to the same document.
#![no_main]

use airgap_bundle::meta::BundleMeta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = BundleMeta::parse(data) {
        let bytes = serde_json::to_vec(&meta).expect("bundle.json serialises");
        let again = BundleMeta::parse(&bytes).expect("serialised bundle.json parses");
        assert_eq!(again, meta);
        let _ = meta.dedup_saved();
    }
});

