//! Child processes of the real binaries, stopped (SIGTERM, then SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many lines of a child's log a failing test prints.
const LOG_TAIL: usize = 200;

/// A binary of this workspace, built by `cargo test` next to the test executable.
///
/// # Panics
/// When it has not been built.
#[must_use]
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A running child process with its stderr kept in a log file.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
}

impl ChildProcess {
    /// Starts `tandem comparator` (the binary at `tandem`) on two databases and a control
    /// store, with `extra` flags; returns the process and its API's URL.
    ///
    /// # Panics
    /// As [`ChildProcess::start`].
    pub fn comparator(
        tandem: &Path,
        old: &str,
        new: &str,
        control: &str,
        extra: &[&str],
    ) -> (ChildProcess, String) {
        let mut args = vec![
            "comparator",
            "--old",
            old,
            "--new",
            new,
            "--control-db",
            control,
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let (process, line) = ChildProcess::start(tandem, &args, &[], "listening on");
        let api = line.rsplit(' ').next().unwrap_or_default().to_owned();
        (process, api)
    }

    /// Starts `program` with `args` and `envs`; waits until it prints a stdout line containing
    /// `ready`, and returns the process with that line.
    ///
    /// # Panics
    /// When it cannot start, exits, or is not ready within 30 s (its log is printed).
    pub fn start(
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        ready: &str,
    ) -> (ChildProcess, String) {
        let mut process = ChildProcess::spawn(program, args, envs);
        let line = process.wait_for_line(ready, READY_TIMEOUT);
        (process, line)
    }

    /// Starts `program` with `args` and `envs` without waiting for it (for programs that say
    /// nothing on stdout when ready: the caller polls them).
    ///
    /// # Panics
    /// When it cannot start.
    pub fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> ChildProcess {
        let log_dir = tempfile::tempdir().expect("log dir");
        let log = log_dir.path().join("stderr.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProcess {
            child,
            log,
            _log_dir: log_dir,
            lines,
        }
    }

    /// Waits for a stdout line containing `needle`.
    ///
    /// # Panics
    /// When the process ends or `timeout` passes first (its log is printed).
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no line containing {needle:?} within {timeout:?}; stderr:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// What the process wrote to stderr so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for the process to exit, killing it after `timeout`.
    ///
    /// # Panics
    /// When it did not exit in time.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!(
            "process did not exit within {timeout:?}; stderr:\n{}",
            self.log()
        );
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        self.keep_log();
    }
}

impl ChildProcess {
    /// When the test is failing, prints the last [`LOG_TAIL`] lines of the child's log (the
    /// test's captured output shows them with the failure); with `TESTKIT_LOGS` set to a
    /// directory, copies the whole log there, whatever the outcome.
    fn keep_log(&self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!(
                "--- last {} lines of the log of process {} ---\n{}",
                tail.len(),
                self.child.id(),
                tail.join("\n")
            );
        }
        if let Some(dir) = std::env::var_os("TESTKIT_LOGS") {
            let name = format!(
                "{}-{}.log",
                std::thread::current()
                    .name()
                    .unwrap_or("test")
                    .replace("::", "-"),
                self.child.id()
            );
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(name));
        }
    }
}
