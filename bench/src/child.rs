//! Child processes of the harness: spawned from `current_exe()`, read line by line, stopped by PID.
//!
//! Every wait is bounded. A [`ChildProc`] that goes out of scope (also while unwinding from a
//! panic or returning an error) kills its process by PID and reaps it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use crate::error::BenchError;
use crate::sys::PARENT_ENV;

/// Most lines read from one child (a server prints one, a client one or two).
const MAX_LINES: usize = 10_000;

/// A child process of the harness.
#[derive(Debug)]
pub struct ChildProc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    reaped: bool,
}

impl ChildProc {
    /// Starts `exe args...` with stdout piped (read by a thread, line by line), stderr inherited,
    /// stdin closed.
    ///
    /// # Errors
    /// The OS error of spawning.
    pub fn spawn(name: &str, exe: &Path, args: &[String]) -> std::io::Result<Self> {
        let mut child = Command::new(exe)
            .args(args)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        // Ends at EOF, i.e. when the child exits (or closes stdout).
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().take(MAX_LINES) {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        log::debug!("{name}: started, pid {}", child.id());
        Ok(ChildProc {
            name: name.to_string(),
            child,
            lines,
            reaped: false,
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the child prints, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`BenchError::Child`] when the child closed its stdout (exited) or printed nothing in time.
    pub fn line(&mut self, timeout: Duration) -> Result<String, BenchError> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => Err(BenchError::Child(format!(
                "{} (pid {}) printed nothing within {timeout:?}",
                self.name,
                self.pid()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.stop().map(|s| s.to_string()).unwrap_or_default();
                Err(BenchError::Child(format!(
                    "{} exited early ({status})",
                    self.name
                )))
            }
        }
    }

    /// The child's exit status if it has exited (it is then reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    /// Waits at most `timeout` for the child to close its stdout (it does so when it exits), then
    /// reaps it; a child still running then is killed by PID.
    ///
    /// # Errors
    /// The OS error of waiting.
    pub fn finish(&mut self, timeout: Duration) -> std::io::Result<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        for _ in 0..MAX_LINES {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(extra) => log::debug!("{}: {extra}", self.name),
                Err(_) => break,
            }
        }
        if let Some(status) = self.child.try_wait()? {
            self.reaped = true;
            return Ok(status);
        }
        self.stop()
    }

    /// Kills the child by PID (SIGKILL) and reaps it.
    ///
    /// # Errors
    /// The OS error of waiting.
    pub fn stop(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            self.reaped = true;
            return Ok(status);
        }
        log::debug!("{}: killing pid {}", self.name, self.pid());
        // `kill` reports an error only when the process was already reaped, which `try_wait`
        // above rules out; SIGKILL cannot be ignored, so the wait below returns.
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(status)
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_and_a_running_child_is_killed_and_reaped() {
        let mut c = ChildProc::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".into(), "echo hello; exec cat".into()],
        )
        .unwrap();
        assert_eq!(c.line(Duration::from_secs(10)).unwrap(), "hello");
        // `cat` with stdin closed exits by itself; either way it is reaped.
        c.stop().unwrap();
        let mut c = ChildProc::spawn(
            "sleeper",
            Path::new("/bin/sh"),
            &["-c".into(), "echo up; exec sleep 600".into()],
        )
        .unwrap();
        assert_eq!(c.line(Duration::from_secs(10)).unwrap(), "up");
        let pid = c.pid();
        drop(c);
        // Reaped: the PID no longer names our child (signal 0 fails or names another process).
        let alive = unsafe { libc::kill(pid as i32, 0) } == 0;
        assert!(!alive, "pid {pid} still exists after drop");
    }

    #[test]
    fn a_silent_child_times_out() {
        let mut c = ChildProc::spawn(
            "silent",
            Path::new("/bin/sh"),
            &["-c".into(), "exec sleep 600".into()],
        )
        .unwrap();
        assert!(c.line(Duration::from_millis(200)).is_err());
        assert!(!c.stop().unwrap().success());
    }
}
