//! `images.lock` parsing: never a panic; what parses renders to text that
//! parses again.
#![no_main]

use airgap_bundle::images_lock::ImagesLock;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(lock) = ImagesLock::parse(text) {
        let rendered = lock.render();
        ImagesLock::parse(&rendered).expect("a rendered images.lock parses");
    }
});
