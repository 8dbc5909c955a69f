//! Running external programs: the only place moor spawns a process.
//!
//! Invariants: every command has a deadline (the whole process group is killed when it
//! passes); arguments marked secret never reach a log line or an error message; the child's
//! stdin is `/dev/null` unless the command carries input, so a tool that prompts (mke2fs
//! "Proceed anyway?") reads EOF and refuses instead of hanging.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How much of a command's stderr an error message keeps.
const STDERR_TAIL: usize = 512;
/// How long to wait for pipes to close after the child exited. A tool that forks a daemon
/// (mount helpers for FUSE) leaves the daemon holding the pipe; we must not wait on it.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// One external command: what to run, with which input, and for how long at most.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// Program name or path.
    pub program: OsString,
    /// Arguments, without argv[0].
    pub args: Vec<OsString>,
    /// Bytes written to the child's stdin (secrets go here or into 0600 files, never argv).
    pub stdin: Option<Vec<u8>>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Deadline for the whole command.
    pub timeout: Duration,
    /// Indexes into `args` whose values are replaced by `<redacted>` when displayed.
    pub redact: Vec<usize>,
    /// Send stdout and stderr to this file (0600, appended) instead of pipes. For helpers
    /// that fork a daemon (FUSE mounts): the daemon must not hold moor's pipes open, and
    /// what it prints later still lands somewhere an operator can read.
    pub output_file: Option<std::path::PathBuf>,
    /// Never cut to the operation's deadline (see [`Cmd::outlive_operation`]).
    pub outlive_operation: bool,
}

impl Cmd {
    /// A command with the default 60 s deadline.
    pub fn new(program: impl Into<OsString>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            stdin: None,
            env: Vec::new(),
            timeout: Duration::from_secs(60),
            redact: Vec::new(),
            output_file: None,
            outlive_operation: false,
        }
    }

    /// Keeps this command's own deadline even past the operation's: for tools that must not
    /// be killed halfway (mkfs, fsck). The operation's timeout answer then names it, and
    /// the volume stays locked until it ends.
    pub fn outlive_operation(mut self) -> Self {
        self.outlive_operation = true;
        self
    }

    /// Sends stdout and stderr to `path` instead of pipes (see [`Cmd::output_file`]).
    pub fn output_to(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.output_file = Some(path.into());
        self
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(it.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds an argument that is a secret (a tool forces it onto argv): shown as `<redacted>`.
    pub fn secret_arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.redact.push(self.args.len());
        self.args.push(a.as_ref().to_owned());
        self
    }

    /// Sets the deadline.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets the bytes written to stdin.
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// The program name as text.
    pub fn program_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    /// The command line with secrets redacted: safe for logs and error messages.
    pub fn display(&self) -> String {
        let mut s = self.program_name();
        for (i, a) in self.args.iter().enumerate() {
            s.push(' ');
            if self.redact.contains(&i) {
                s.push_str("<redacted>");
            } else {
                s.push_str(&a.to_string_lossy());
            }
        }
        s
    }
}

/// What a finished command returned.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit code, `None` when killed by a signal.
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
}

impl Output {
    /// True when the exit code is 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last bytes of stderr (or stdout when stderr is empty), trimmed, for messages.
    pub fn stderr_tail(&self) -> String {
        let src = if self.stderr.iter().all(u8::is_ascii_whitespace) {
            &self.stdout
        } else {
            &self.stderr
        };
        let text = String::from_utf8_lossy(src);
        let text = text.trim();
        if text.len() <= STDERR_TAIL {
            return text.to_owned();
        }
        let mut start = text.len() - STDERR_TAIL;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        format!("…{}", &text[start..])
    }
}

/// How a command ended, for messages: `exit status 4`, or `killed by a signal` (no code).
pub fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit status {c}"),
        None => "killed by a signal".to_owned(),
    }
}

/// Why a command could not produce an [`Output`].
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is not installed (or not on PATH).
    #[error("{program} is not installed (not found on PATH)")]
    NotFound {
        /// Program name.
        program: String,
    },
    /// Spawning failed for another reason.
    #[error("cannot start `{cmdline}`")]
    Spawn {
        /// Redacted command line.
        cmdline: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The deadline passed; the process group was killed.
    #[error("`{cmdline}` did not finish within {timeout:?} and was killed")]
    Timeout {
        /// Redacted command line.
        cmdline: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The command ran and exited non-zero (from [`CommandRunner::run_ok`]).
    #[error("`{cmdline}` failed ({}): {stderr}", exit_text(*code))]
    Failed {
        /// Redacted command line.
        cmdline: String,
        /// Exit code; `None` when killed by a signal.
        code: Option<i32>,
        /// The tail of stderr (or stdout).
        stderr: String,
    },
}

impl ExecError {
    /// Stable reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            ExecError::NotFound { .. } => "missing_binary",
            ExecError::Spawn { .. } => "exec_failed",
            ExecError::Timeout { .. } => "timeout",
            ExecError::Failed { .. } => "command_failed",
        }
    }
}

/// Runs external commands. Production uses [`SystemRunner`]; unit tests use a script.
pub trait CommandRunner: Send + Sync {
    /// Runs `cmd` to completion or until its deadline.
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError>;

    /// Runs `cmd` and turns a non-zero exit into [`ExecError::Failed`].
    fn run_ok(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        let out = self.run(cmd)?;
        if out.success() {
            Ok(out)
        } else {
            Err(ExecError::Failed {
                cmdline: cmd.display(),
                code: out.code,
                stderr: out.stderr_tail(),
            })
        }
    }
}

/// Runs commands on this machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, ExecError> {
        let started = Instant::now();
        let mut command = Command::new(&cmd.program);
        let (out_stdio, err_stdio, log_start) = match &cmd.output_file {
            Some(path) => {
                let file = open_output_file(path).map_err(|source| ExecError::Spawn {
                    cmdline: cmd.display(),
                    source,
                })?;
                let start = file.metadata().map(|m| m.len()).unwrap_or(0);
                let dup = file.try_clone().map_err(|source| ExecError::Spawn {
                    cmdline: cmd.display(),
                    source,
                })?;
                (Stdio::from(file), Stdio::from(dup), Some(start))
            }
            None => (Stdio::piped(), Stdio::piped(), None),
        };
        command
            .args(&cmd.args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(out_stdio)
            .stderr(err_stdio)
            // Own process group, so a deadline kills helpers the tool started too.
            .process_group(0);
        let mut child = command.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ExecError::NotFound {
                    program: cmd.program_name(),
                }
            } else {
                ExecError::Spawn {
                    cmdline: cmd.display(),
                    source,
                }
            }
        })?;
        if let (Some(input), Some(mut pipe)) = (cmd.stdin.clone(), child.stdin.take()) {
            // A thread, so a child that never reads cannot block us past the deadline.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        // Within a volume operation, the command must end before the operation does (or,
        // when it must not be cut, be named by the operation's timeout answer).
        let timeout = if cmd.outlive_operation {
            cmd.timeout
        } else {
            super::deadline::clamp(cmd.timeout)
        };
        let _running = super::deadline::running(&cmd.display());
        let status = wait_deadline(&mut child, timeout);
        let Some(status) = status else {
            tracing::warn!(cmd = %cmd.display(), ?timeout, "command timed out; killed");
            return Err(ExecError::Timeout {
                cmdline: cmd.display(),
                timeout,
            });
        };
        let mut out = Output {
            code: status.code(),
            stdout: stdout.recv_timeout(PIPE_GRACE).unwrap_or_default(),
            stderr: stderr.recv_timeout(PIPE_GRACE).unwrap_or_default(),
        };
        if let (Some(path), Some(start)) = (&cmd.output_file, log_start) {
            out.stderr = read_from(path, start);
        }
        tracing::debug!(cmd = %cmd.display(), code = ?out.code, elapsed = ?started.elapsed(), "command finished");
        Ok(out)
    }
}

fn open_output_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// What a command appended to its output file, capped like a pipe's tail would be.
fn read_from(path: &std::path::Path, start: u64) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = start.max(len.saturating_sub(64 * 1024));
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    buf
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut p) = pipe {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

/// Waits for the child until `timeout`; on expiry kills its process group and reaps it.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(200);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_redacts_secret_arguments() {
        let c = Cmd::new("iscsiadm")
            .args(["-m", "node"])
            .arg("--value")
            .secret_arg("s3cr3t");
        assert_eq!(c.display(), "iscsiadm -m node --value <redacted>");
        assert!(!c.display().contains("s3cr3t"));
    }

    #[test]
    fn runs_and_captures_output() {
        let out = SystemRunner
            .run(&Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout_text(), "out\n");
        assert_eq!(out.stderr_tail(), "err");
    }

    #[test]
    fn stdin_reaches_the_child() {
        let out = SystemRunner
            .run(&Cmd::new("cat").stdin(b"secret-from-stdin".to_vec()))
            .unwrap();
        assert_eq!(out.stdout_text(), "secret-from-stdin");
    }

    #[test]
    fn deadline_kills_the_process_group() {
        let started = Instant::now();
        let err = SystemRunner
            .run(
                &Cmd::new("sh")
                    .args(["-c", "sleep 30 & sleep 30"])
                    .timeout(Duration::from_millis(300)),
            )
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_named() {
        let err = SystemRunner
            .run(&Cmd::new("moor-no-such-tool"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "moor-no-such-tool is not installed (not found on PATH)"
        );
    }

    #[test]
    fn stderr_tail_keeps_the_end() {
        let out = Output {
            code: Some(1),
            stdout: vec![],
            stderr: format!("{}END", "x".repeat(2000)).into_bytes(),
        };
        let tail = out.stderr_tail();
        assert!(tail.ends_with("END"));
        assert!(tail.len() < 600);
    }
}
