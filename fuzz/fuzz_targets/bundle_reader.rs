//! The whole reader on arbitrary bytes (plain tar or zstd, told apart as
//! the installer does), without the signature check so that the fuzzer
//! reaches the rules after it. It must return, never panic, and never
//! accept a bundle that breaks a rule it can check from the outside.
#![no_main]

use airgap_bundle::read::{read_bundle, DrainSink, Trust};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = std::io::Cursor::new(data.to_vec());
    let Ok(stream) = airgap_bundle::source::decompress(std::io::BufReader::new(input)) else {
        return;
    };
    if let Ok(summary) = read_bundle(stream, &Trust::SkipSignature, &mut DrainSink) {
        // Whatever was accepted is listed, and lists only safe names.
        for (path, _) in summary.header.sums.iter() {
            assert!(airgap_bundle::path::check_entry_path(path).is_ok(), "{path}");
        }
        assert!(summary.entries <= airgap_bundle::read::MAX_ENTRIES);
    }
});
