//! Parsers that can recurse or decompress without bound run in a child process.
//!
//! A PDF whose form XObject draws itself makes `pdf-extract` recurse until the
//! stack overflows, and a flate bomb decompresses until memory runs out. Both
//! are aborts, not panics: in-process they take the whole server down (tried: a
//! 784-byte PDF stopped `tessera up`). Here the parse runs in a child process
//! with an address-space limit, a CPU-time limit and a wall-clock deadline; the
//! child's death is one file's error and the batch goes on.
//!
//! The child is the running binary itself, started with [`SANDBOX_ARG`] and the
//! format: it reads the file on stdin and writes the text on stdout
//! ([`child_main`]). Nothing is exec'd that the server did not ship.
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::LoadError;

/// The hidden first argument that turns the binary into a sandboxed parser.
pub const SANDBOX_ARG: &str = "__load-sandbox";

/// Exit code of a child that parsed the file and rejected it (message on stderr).
const REJECTED: i32 = 3;

/// What one sandboxed parse may use.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Address space of the child (RLIMIT_AS).
    pub memory_bytes: u64,
    /// CPU seconds of the child (RLIMIT_CPU; SIGXCPU past it).
    pub cpu_seconds: u64,
    /// Wall-clock deadline, after which the child is killed (a child blocked
    /// without using CPU would otherwise never hit the CPU limit).
    pub wall: Duration,
    /// Most text accepted back; more is an error, not a truncation.
    pub output_bytes: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self { memory_bytes: 1 << 30, cpu_seconds: 30, wall: Duration::from_secs(60), output_bytes: 64 << 20 }
    }
}

/// A program that parses one file per run under [`SandboxLimits`].
#[derive(Debug, Clone)]
pub struct Sandbox {
    program: PathBuf,
    args: Vec<String>,
    limits: SandboxLimits,
}

impl Sandbox {
    /// `program args... FORMAT` parses stdin as FORMAT and prints its text.
    pub fn new(program: PathBuf, args: Vec<String>, limits: SandboxLimits) -> Self {
        Self { program, args, limits }
    }

    /// The running executable as its own sandbox (`exe __load-sandbox FORMAT`);
    /// for binaries whose `main` calls [`child_main`] on [`SANDBOX_ARG`].
    pub fn this_executable(limits: SandboxLimits) -> std::io::Result<Self> {
        Ok(Self::new(std::env::current_exe()?, vec![SANDBOX_ARG.to_string()], limits))
    }

    /// Parses `bytes` as `format` in a fresh child and returns its text.
    pub fn extract(&self, format: &str, bytes: &[u8]) -> Result<String, LoadError> {
        let limits = self.limits;
        let mut command = Command::new(&self.program);
        command.args(&self.args).arg(format).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group, so that a deadline kills whatever it started too
        // (a straggler holding the pipes open would keep this call waiting).
        command.process_group(0);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // setrlimit/prctl, which are async-signal-safe and touch no shared state.
        unsafe {
            command.pre_exec(move || {
                set_limit(libc::RLIMIT_AS, limits.memory_bytes)?;
                set_limit(libc::RLIMIT_CPU, limits.cpu_seconds)?;
                set_limit(libc::RLIMIT_CORE, 0)?;
                // The child must not outlive a server that died mid-parse.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let crashed = |what: String| LoadError::Sandbox { format: format.to_string(), reason: what };
        let mut child = command.spawn().map_err(|e| crashed(format!("cannot start the parser process: {e}")))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(crashed("the parser process has no pipes".into()));
        };
        std::thread::scope(|s| {
            // Input and output on their own threads: a child that writes before it
            // has read everything must not deadlock against a full pipe.
            s.spawn(move || {
                let _ = stdin.write_all(bytes);
            });
            let out = s.spawn(move || read_capped(stdout, limits.output_bytes));
            let err = s.spawn(move || read_capped(stderr, 4096));
            let status = wait_until(&mut child, limits.wall);
            let out = out.join().unwrap_or_default();
            let err = err.join().unwrap_or_default();
            let message = String::from_utf8_lossy(&err).trim().to_string();
            // Reading stops one byte past the cap, so an over-long text ends with
            // the child killed by a broken pipe: report the size, not the signal.
            if out.len() > limits.output_bytes {
                return Err(crashed(format!("its text is over {} bytes", limits.output_bytes)));
            }
            match status {
                None => Err(crashed(format!("took longer than {:.1} s and was stopped", limits.wall.as_secs_f64()))),
                Some(st) if st.success() => {
                    String::from_utf8(out).map_err(|_| crashed("the parser returned text that is not UTF-8".into()))
                }
                Some(st) if st.code() == Some(REJECTED) => Err(LoadError::Rejected(message)),
                Some(st) => Err(crashed(describe_death(st, limits, &message))),
            }
        })
    }
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: a plain system call on a stack value.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn read_capped(from: impl Read, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    // One byte past the cap tells "exactly at the cap" from "over it".
    let _ = from.take(cap as u64 + 1).read_to_end(&mut buf);
    buf
}

/// The child's status, or None after killing it at the deadline.
fn wait_until(child: &mut std::process::Child, wall: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + wall;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                // SAFETY: a signal to the child's own process group (see process_group(0)).
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

fn describe_death(status: std::process::ExitStatus, limits: SandboxLimits, stderr: &str) -> String {
    let gib = limits.memory_bytes as f64 / (1u64 << 30) as f64;
    let why = match status.signal() {
        Some(libc::SIGXCPU) => format!("used more than {} s of CPU", limits.cpu_seconds),
        Some(libc::SIGSEGV) | Some(libc::SIGABRT) | Some(libc::SIGBUS) => {
            if stderr.contains("overflowed its stack") {
                "overflowed its stack (a structure that refers to itself?)".to_string()
            } else if stderr.contains("memory allocation") {
                format!("needed more than {gib:.1} GiB of memory (a decompression bomb?)")
            } else {
                format!(
                    "crashed (signal {}; stack overflow or over the {gib:.1} GiB memory limit)",
                    status.signal().unwrap_or(0)
                )
            }
        }
        Some(sig) => format!("was killed by signal {sig}"),
        None => format!("exited with status {}", status.code().unwrap_or(-1)),
    };
    format!("the parser {why}")
}

/// The child side: parse stdin as `format`, text to stdout. Returns the exit code.
pub fn child_main(format: &str) -> i32 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the file: {e}");
        return REJECTED;
    }
    let text = match format {
        "pdf" => super::pdf::extract_text(&bytes),
        other => Err(LoadError::Unsupported(other.to_string())),
    };
    match text {
        Ok(text) => match std::io::stdout().write_all(text.as_bytes()) {
            Ok(()) => 0,
            Err(_) => 1,
        },
        Err(e) => {
            eprintln!("{e}");
            REJECTED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, limits: SandboxLimits) -> Sandbox {
        // `sh -c SCRIPT NAME FORMAT`: the format lands in $1, as the binary would take it.
        Sandbox::new("/bin/sh".into(), vec!["-c".into(), script.into(), "sandbox".into()], limits)
    }

    #[test]
    fn a_well_behaved_child_returns_its_text() {
        let s = sh("test \"$1\" = pdf && cat", SandboxLimits::default());
        assert_eq!(s.extract("pdf", "读 this".as_bytes()).unwrap(), "读 this");
    }

    #[test]
    fn a_crash_a_rejection_a_hang_and_a_flood_are_errors() {
        let quick = SandboxLimits { output_bytes: 1000, ..SandboxLimits::default() };
        let crash = sh("kill -SEGV $$", quick).extract("pdf", b"x").unwrap_err().to_string();
        assert!(crash.contains("crashed (signal 11"), "{crash}");
        let rejected = sh("echo 'cannot read PDF: bad xref' >&2; exit 3", quick).extract("pdf", b"x").unwrap_err();
        assert_eq!(rejected.to_string(), "cannot read PDF: bad xref");
        let short = SandboxLimits { wall: Duration::from_millis(300), ..quick };
        let started = Instant::now();
        let hang = sh("sleep 30", short).extract("pdf", b"x").unwrap_err().to_string();
        assert!(hang.contains("took longer than"), "{hang}");
        assert!(started.elapsed() < Duration::from_secs(20), "the whole group was stopped, not waited for");
        let flood = sh("head -c 5000 /dev/zero", quick).extract("pdf", b"x").unwrap_err().to_string();
        assert!(flood.contains("over 1000 bytes"), "{flood}");
    }

    #[test]
    fn the_memory_limit_holds_in_the_child() {
        // 64 MiB of address space cannot hold a 200 MB string.
        let tight = SandboxLimits { memory_bytes: 64 << 20, ..SandboxLimits::default() };
        let s = sh("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo done", tight);
        assert!(s.extract("pdf", b"").is_err());
        let roomy = sh("x=$(head -c 2000 /dev/zero | tr '\\0' a); echo done", tight);
        assert_eq!(roomy.extract("pdf", b"").unwrap().trim(), "done");
    }
}
