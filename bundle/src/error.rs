//! Errors on one line, for messages that must say why and not only what:
//! an HTTP client's own error names the request that failed, its causes say
//! why. Owns nothing else; trusts the errors' own `Display` and `source`.

/// `err` and each of its causes, joined by `: `; a cause whose text the line
/// already holds (many errors repeat their source's message) is left out.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    #[test]
    fn joins_causes_once() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Wrapped("GET http://x/", Some(refused()));
        assert_eq!(chain(&e), "GET http://x/: refused");
        // A cause the message already repeats is not said twice.
        let e = Wrapped("GET http://x/: refused", Some(refused()));
        assert_eq!(chain(&e), "GET http://x/: refused");
        assert_eq!(chain(&Wrapped("alone", None)), "alone");
    }
}
