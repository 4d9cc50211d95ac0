//! The harness's error type, [`BenchError`], and [`Context`], which wraps an OS or library error
//! with what the harness was doing when it failed.
//!
//! `{}` prints an error's own message; `{:#}` appends its source chain, `: `-separated, skipping a
//! source whose text the message before it already holds (mqnet's errors print their cause
//! inline too). `main` and the result tables print `{:#}`.

use std::error::Error;
use std::fmt;
use std::io;

/// Why a harness command, or one of its runs, could not finish.
#[derive(Debug)]
pub(crate) enum BenchError {
    /// A flag value (or combination of flags) the harness cannot use; the text names the flag and
    /// what it accepts.
    Usage(String),
    /// An OS call failed (bind, spawn, current_exe, write, ...); `what` says which and on what.
    Io {
        /// What the harness was doing.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// mqnet, librdkafka, serde, the failover URI parser, ... refused or failed; `what` says at
    /// what.
    Library {
        /// What the harness was doing.
        what: String,
        /// The library's error.
        source: Box<dyn Error + Send + Sync>,
    },
    /// A child process or thread misbehaved: no port line, early exit, a bad result line, a panic.
    Child(String),
    /// A run finished without a usable result (the warm-up record failed, it never connected, ...).
    Run(String),
}

impl BenchError {
    /// A [`BenchError::Usage`].
    pub(crate) fn usage(msg: impl Into<String>) -> Self {
        BenchError::Usage(msg.into())
    }

    /// A [`BenchError::Child`].
    pub(crate) fn child(msg: impl Into<String>) -> Self {
        BenchError::Child(msg.into())
    }

    /// A [`BenchError::Run`].
    pub(crate) fn run(msg: impl Into<String>) -> Self {
        BenchError::Run(msg.into())
    }

    /// `e` wrapped with `what`: an [`io::Error`] becomes [`BenchError::Io`], a `BenchError` gets
    /// `what: ` in front of its message, anything else becomes [`BenchError::Library`].
    pub(crate) fn wrap<E: Error + Send + Sync + 'static>(what: String, e: E) -> Self {
        let boxed: Box<dyn Error + Send + Sync> = Box::new(e);
        let boxed = match boxed.downcast::<io::Error>() {
            Ok(source) => {
                return BenchError::Io {
                    what,
                    source: *source,
                }
            }
            Err(other) => other,
        };
        match boxed.downcast::<BenchError>() {
            Ok(inner) => inner.prefixed(&what),
            Err(source) => BenchError::Library { what, source },
        }
    }

    /// This error with `what: ` in front of its own message.
    fn prefixed(self, what: &str) -> Self {
        let pre = |msg: String| format!("{what}: {msg}");
        match self {
            BenchError::Usage(m) => BenchError::Usage(pre(m)),
            BenchError::Io { what: w, source } => BenchError::Io {
                what: pre(w),
                source,
            },
            BenchError::Library { what: w, source } => BenchError::Library {
                what: pre(w),
                source,
            },
            BenchError::Child(m) => BenchError::Child(pre(m)),
            BenchError::Run(m) => BenchError::Run(pre(m)),
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let own = match self {
            BenchError::Usage(m) | BenchError::Child(m) | BenchError::Run(m) => m,
            BenchError::Io { what, .. } | BenchError::Library { what, .. } => what,
        };
        f.write_str(own)?;
        if f.alternate() {
            let mut last = own.clone();
            let mut next = self.source();
            while let Some(e) = next {
                let text = e.to_string();
                if !last.contains(&text) {
                    write!(f, ": {text}")?;
                }
                last = text;
                next = e.source();
            }
        }
        Ok(())
    }
}

impl Error for BenchError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            BenchError::Io { source, .. } => Some(source),
            BenchError::Library { source, .. } => Some(source.as_ref()),
            BenchError::Usage(_) | BenchError::Child(_) | BenchError::Run(_) => None,
        }
    }
}

/// Wraps the error of a `Result` with what the harness was doing: `.context("bind")` in place of
/// `.map_err(|e| format!("bind: {e}"))`.
pub(crate) trait Context<T> {
    /// The error wrapped with `what` (see [`BenchError::wrap`]).
    ///
    /// # Errors
    /// The wrapped error.
    fn context(self, what: &str) -> Result<T, BenchError>;

    /// The error wrapped with what `what` returns, called only on an error.
    ///
    /// # Errors
    /// The wrapped error.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, BenchError>;
}

impl<T, E: Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, BenchError> {
        self.map_err(|e| BenchError::wrap(what.to_string(), e))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, BenchError> {
        self.map_err(|e| BenchError::wrap(what().into(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library error that prints its cause inline, as mqnet's do.
    #[derive(Debug)]
    struct Inline(io::Error);

    impl fmt::Display for Inline {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "cannot start: {}", self.0)
        }
    }

    impl Error for Inline {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn refused() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionRefused, "refused")
    }

    #[test]
    fn io_error_becomes_io_with_its_source() {
        let e = Err::<(), _>(refused())
            .context("bind 127.0.0.1:1")
            .unwrap_err();
        assert!(matches!(&e, BenchError::Io { what, .. } if what == "bind 127.0.0.1:1"));
        assert_eq!(e.to_string(), "bind 127.0.0.1:1");
        assert_eq!(format!("{e:#}"), "bind 127.0.0.1:1: refused");
        let src = e.source().expect("an Io error has a source");
        let io = src
            .downcast_ref::<io::Error>()
            .expect("the source is the io::Error");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
        assert!(src.source().is_none());
    }

    #[test]
    fn library_error_chain_is_printed_once() {
        let e = Err::<(), _>(Inline(refused()))
            .with_context(|| format!("server {}", 3))
            .unwrap_err();
        assert!(matches!(&e, BenchError::Library { .. }));
        assert_eq!(e.to_string(), "server 3");
        // The library's message holds its cause already: it is not repeated.
        assert_eq!(format!("{e:#}"), "server 3: cannot start: refused");
        let lib = e.source().expect("a Library error has a source");
        assert_eq!(lib.to_string(), "cannot start: refused");
        assert_eq!(
            lib.source().map(|s| s.to_string()).as_deref(),
            Some("refused")
        );
    }

    #[test]
    fn context_on_a_bench_error_prefixes_it() {
        let inner = Err::<(), _>(refused()).context("spawn").unwrap_err();
        let e = Err::<(), _>(inner).context("server 1").unwrap_err();
        assert!(matches!(&e, BenchError::Io { .. }));
        assert_eq!(format!("{e:#}"), "server 1: spawn: refused");
        let e = Err::<(), _>(BenchError::child("printed nothing"))
            .context("tokio-mt server")
            .unwrap_err();
        assert!(matches!(&e, BenchError::Child(_)));
        assert_eq!(format!("{e:#}"), "tokio-mt server: printed nothing");
        assert!(e.source().is_none());
    }

    #[test]
    fn messages_without_source() {
        assert_eq!(
            format!("{:#}", BenchError::usage("--size must be in 16..=1048576")),
            "--size must be in 16..=1048576"
        );
        assert_eq!(
            BenchError::run("never connected").to_string(),
            "never connected"
        );
    }
}
