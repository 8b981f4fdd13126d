//! Progress of the fetch stage: what the registry puller and the release
//! downloader report while they work, and the ways to show it.
//!
//! The pullers only emit events; a [`Progress`] decides what a person sees.
//! A blob that two images share is reported by the second one with `shared`
//! set, and its bytes are counted once in any total. Nothing here affects what
//! is fetched or verified.

use airgap_bundle::digest::Digest;
use airgap_bundle::reference::ImageRef;
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::Duration;

/// Receives the events of the fetch stage. Every method has a no-op default.
///
/// For each blob of an image: `blob_started`, then `blob_advanced` for the
/// bytes as they arrive (none when `shared`, whose bytes another image
/// counts), then `blob_done`. A blob already in the store from an earlier run
/// is reported as started, advanced by its whole size at once, and done.
pub trait Progress: Send + Sync {
    fn image_started(&self, _image: &ImageRef) {}
    /// `blobs` and `bytes` count everything the image needs, shared or not.
    fn image_done(&self, _image: &ImageRef, _blobs: usize, _bytes: u64) {}
    /// The pull failed; its error is returned to the caller, not shown here.
    fn image_failed(&self, _image: &ImageRef) {}
    /// `shared`: another image of this run fetched (or is fetching) it.
    fn blob_started(&self, _image: &ImageRef, _digest: &Digest, _size: u64, _shared: bool) {}
    fn blob_advanced(&self, _image: &ImageRef, _bytes: u64) {}
    fn blob_done(&self, _image: &ImageRef, _digest: &Digest, _size: u64, _shared: bool) {}
    /// `size` is the Content-Length when the server sent one.
    fn asset_started(&self, _name: &str, _size: Option<u64>) {}
    fn asset_advanced(&self, _name: &str, _bytes: u64) {}
    fn asset_done(&self, _name: &str, _size: u64) {}
    /// The bundle is being written: `total` bytes of entries to stream.
    fn writing_started(&self, _total: u64) {}
    fn writing_advanced(&self, _bytes: u64) {}
    fn writing_done(&self) {}
}

/// Shows nothing: `--quiet` and `--json`.
pub struct NoProgress;

impl Progress for NoProgress {}

/// One plain line on stderr per finished image or asset, for logs and pipes.
pub struct LineProgress;

impl Progress for LineProgress {
    fn image_done(&self, image: &ImageRef, blobs: usize, bytes: u64) {
        eprintln!("pulled {image} ({})", summary(blobs, bytes));
    }

    fn asset_done(&self, name: &str, size: u64) {
        eprintln!("downloaded {name} ({})", HumanBytes(size));
    }
}

fn summary(blobs: usize, bytes: u64) -> String {
    let s = if blobs == 1 { "" } else { "s" };
    format!("{blobs} blob{s}, {}", HumanBytes(bytes))
}

/// Live bars on a terminal: one for the bytes of the whole run (shared blobs
/// counted once), one per image or asset being fetched.
pub struct TerminalProgress {
    multi: MultiProgress,
    total: ProgressBar,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl TerminalProgress {
    pub fn new() -> Self {
        let multi = MultiProgress::new();
        let total = multi.add(ProgressBar::new(0));
        total.set_style(style(
            "{prefix:>10.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ));
        total.set_prefix("total");
        total.enable_steady_tick(Duration::from_millis(200));
        Self {
            multi,
            total,
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, key: &str) -> Option<ProgressBar> {
        self.bars.lock().ok()?.get(key).cloned()
    }

    fn add_bar(&self, key: String, len: Option<u64>) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(len.unwrap_or(0)));
        bar.set_style(style(match len {
            Some(_) => "  [{bar:30}] {bytes}/{total_bytes} {msg}",
            None => "  {spinner} {bytes} {msg}",
        }));
        bar.set_message(key.clone());
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(key, bar.clone());
        }
        bar
    }

    fn finish_bar(&self, key: &str, line: String) {
        let bar = self.bars.lock().ok().and_then(|mut b| b.remove(key));
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        let _ = self.multi.println(line);
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.total.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Progress for TerminalProgress {
    fn image_started(&self, image: &ImageRef) {
        self.add_bar(image.to_string(), Some(0));
    }

    fn image_done(&self, image: &ImageRef, blobs: usize, bytes: u64) {
        self.finish_bar(
            &image.to_string(),
            format!("pulled {image} ({})", summary(blobs, bytes)),
        );
    }

    fn image_failed(&self, image: &ImageRef) {
        let bar = self
            .bars
            .lock()
            .ok()
            .and_then(|mut b| b.remove(&image.to_string()));
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    fn blob_started(&self, image: &ImageRef, _digest: &Digest, size: u64, shared: bool) {
        if let Some(bar) = self.bar(&image.to_string()) {
            bar.inc_length(size);
        }
        if !shared {
            self.total.inc_length(size);
        }
    }

    fn blob_advanced(&self, image: &ImageRef, bytes: u64) {
        if let Some(bar) = self.bar(&image.to_string()) {
            bar.inc(bytes);
        }
        self.total.inc(bytes);
    }

    fn blob_done(&self, image: &ImageRef, _digest: &Digest, size: u64, shared: bool) {
        if shared {
            if let Some(bar) = self.bar(&image.to_string()) {
                bar.inc(size);
            }
        }
    }

    fn asset_started(&self, name: &str, size: Option<u64>) {
        self.add_bar(name.to_string(), size);
        self.total.inc_length(size.unwrap_or(0));
    }

    fn asset_advanced(&self, name: &str, bytes: u64) {
        if let Some(bar) = self.bar(name) {
            bar.inc(bytes);
        }
        self.total.inc(bytes);
    }

    fn asset_done(&self, name: &str, size: u64) {
        self.finish_bar(name, format!("downloaded {name} ({})", HumanBytes(size)));
    }
}

/// The progress display for a run: nothing when `quiet` (pass `--json`
/// here too), live bars when stderr is a terminal, plain lines otherwise.
pub fn progress_for(quiet: bool) -> Box<dyn Progress> {
    if quiet {
        Box::new(NoProgress)
    } else if std::io::stderr().is_terminal() {
        Box::new(TerminalProgress::new())
    } else {
        Box::new(LineProgress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_well() {
        assert_eq!(summary(1, 1024), "1 blob, 1.00 KiB");
        assert_eq!(summary(3, 1_258_291), "3 blobs, 1.20 MiB");
    }

    #[test]
    fn terminal_progress_counts_shared_blobs_once() {
        let p = TerminalProgress::new();
        p.multi
            .set_draw_target(indicatif::ProgressDrawTarget::hidden());
        let a: ImageRef = "a:1".parse().unwrap();
        let b: ImageRef = "b:1".parse().unwrap();
        let d = Digest::of(b"layer");
        p.image_started(&a);
        p.image_started(&b);
        p.blob_started(&a, &d, 100, false);
        p.blob_started(&b, &d, 100, true);
        p.blob_advanced(&a, 100);
        p.blob_done(&a, &d, 100, false);
        p.blob_done(&b, &d, 100, true);
        assert_eq!(p.total.length(), Some(100));
        assert_eq!(p.total.position(), 100);
        let bar_b = p.bar(&b.to_string()).unwrap();
        assert_eq!((bar_b.position(), bar_b.length()), (100, Some(100)));
        p.image_done(&a, 1, 100);
        assert!(p.bar(&a.to_string()).is_none());
    }
}
