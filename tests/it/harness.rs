//! The one harness for real `idemq` processes: build the command
//! ([`idemq`]), start it with its stdout and stderr collected ([`Proc`]),
//! wait for a condition with a deadline, signal it, and know it is killed
//! (SIGKILL) when the test ends, its output printed if the test failed.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// The `idemq` binary built for these tests.
pub fn idemq_bin() -> &'static str {
    env!("CARGO_BIN_EXE_idemq")
}

/// `idemq ARGS…`, to be configured, then [`spawn`](Idemq::spawn)ed or run to
/// the end ([`output`](Idemq::output)). Stdin is empty.
pub fn idemq<I, S>(args: I) -> Idemq
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(idemq_bin());
    cmd.args(args);
    let what = format!(
        "idemq {}",
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Idemq { cmd, what }
}

pub struct Idemq {
    cmd: Command,
    what: String,
}

impl Idemq {
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Each `(key, value)`, after (so over) what is set already.
    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        self.cmd.envs(env.iter().copied());
        self
    }

    pub fn env_remove(mut self, key: &str) -> Self {
        self.cmd.env_remove(key);
        self
    }

    /// Starts from an empty environment (for tests of start-up errors and
    /// of variables that must not leak in from the caller's).
    pub fn env_clear(mut self) -> Self {
        self.cmd.env_clear();
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Starts the process; both its streams are collected line by line.
    pub fn spawn(mut self) -> Proc {
        let mut child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.what));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), Stream::Stdout, lines.clone()),
            collect(child.stderr.take().unwrap(), Stream::Stderr, lines.clone()),
        ];
        Proc {
            child,
            what: self.what,
            lines,
            readers,
            exited: None,
        }
    }

    /// Runs the process to its end (killed if the test is dropped first).
    pub async fn output(mut self) -> Output {
        self.cmd.stdin(Stdio::null());
        tokio::process::Command::from(self.cmd)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {}: {e}", self.what))
    }

    /// [`output`](Idemq::output) for a test without a runtime.
    pub fn output_blocking(mut self) -> Output {
        self.cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.what))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

fn collect(
    from: impl Read + Send + 'static,
    stream: Stream,
    into: Arc<Mutex<Vec<(Stream, String)>>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            into.lock().unwrap().push((stream, line));
        }
    })
}

/// A running `idemq` process. Killed (SIGKILL) when dropped; if the test is
/// failing, the last lines of its output are printed.
pub struct Proc {
    child: Child,
    what: String,
    lines: Arc<Mutex<Vec<(Stream, String)>>>,
    readers: Vec<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

/// Whether a wait goes on: the value, or not yet.
enum Poll<T> {
    Ready(T),
    Pending,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn text(&self, stream: Option<Stream>) -> String {
        let lines = self.lines.lock().unwrap();
        let mut text = String::new();
        for (s, line) in lines.iter() {
            if stream.is_none_or(|want| want == *s) {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// What it printed on stdout so far (banners, addresses, results).
    pub fn stdout(&self) -> String {
        self.text(Some(Stream::Stdout))
    }

    /// Its stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout().lines().map(str::to_owned).collect()
    }

    /// What it logged (stderr) so far.
    pub fn log(&self) -> String {
        self.text(Some(Stream::Stderr))
    }

    /// Both streams so far, in the order the lines arrived.
    pub fn output(&self) -> String {
        self.text(None)
    }

    /// The log's JSON lines (`IDEMQ_LOG_FORMAT=json`), parsed; other lines skipped.
    pub fn json_logs(&self) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }

    /// The JSON log lines whose `message` starts with `prefix`.
    pub fn messages(&self, prefix: &str) -> Vec<Value> {
        self.json_logs()
            .into_iter()
            .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .collect()
    }

    fn check<T>(
        &mut self,
        what: &str,
        started: Instant,
        within: Duration,
        f: &mut impl FnMut(&Proc) -> Option<T>,
    ) -> Poll<T> {
        let exited = self.try_exit();
        if exited.is_some() {
            self.drain();
        }
        if let Some(value) = f(self) {
            return Poll::Ready(value);
        }
        if let Some(status) = exited {
            panic!(
                "{} exited ({status}) before {what}:\n{}",
                self.what,
                self.output()
            );
        }
        assert!(
            started.elapsed() < within,
            "{}: not {what} after {within:?}:\n{}",
            self.what,
            self.output()
        );
        Poll::Pending
    }

    /// Its exit status, if it is known to have exited (see [`try_exit`](Proc::try_exit)).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exited
    }

    /// Waits until `f` finds what it looks for in the process's output (or
    /// state), and returns it. Panics, with the output, if the process exits
    /// first or `within` passes.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&Proc) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Poll::Ready(v) = self.check(what, started, within, &mut f) {
                return v;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`wait_for`](Proc::wait_for) for callers that are not async.
    pub fn wait_for_blocking<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&Proc) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Poll::Ready(v) = self.check(what, started, within, &mut f) {
                return v;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until its output (either stream) contains `needle`.
    pub async fn wait_output(&mut self, needle: &str, within: Duration) {
        self.wait_for(&format!("printed {needle:?}"), within, |p| {
            p.output().contains(needle).then_some(())
        })
        .await
    }

    /// The rest of the line of stdout that starts with `prefix`, once printed.
    pub fn stdout_after(&self, prefix: &str) -> Option<String> {
        self.stdout()
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.trim().to_owned())
    }

    /// Its exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill9(&mut self) -> ExitStatus {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = Some(self.child.wait().unwrap());
            self.drain();
        }
        self.exited.unwrap()
    }

    /// Sends a signal by name (`TERM`, `INT`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} {}", self.pid());
    }

    pub fn sigterm(&self) {
        self.signal("TERM")
    }

    pub fn sigint(&self) {
        self.signal("INT")
    }

    /// Waits until it exits, or panics (with its output) after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        self.wait_for("exited", within, Proc::exit_status).await
    }

    /// Kills it and returns everything it logged (stderr).
    pub fn stop(mut self) -> String {
        self.kill9();
        self.log()
    }

    /// After the exit: lets the readers take the last lines in, for a
    /// moment only (a grandchild may hold the pipes open).
    fn drain(&mut self) {
        let until = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let text = self.output();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!(
                "--- {} (pid {}) output, last lines ---\n{}",
                self.what,
                self.child.id(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// SIGTERM to each, then waits until all have exited, `within` in all.
pub async fn terminate_all(procs: &mut [Proc], within: Duration) -> Vec<ExitStatus> {
    for p in procs.iter() {
        p.sigterm();
    }
    let started = Instant::now();
    let mut exits = Vec::new();
    for p in procs.iter_mut() {
        exits.push(p.wait_exit(within.saturating_sub(started.elapsed())).await);
    }
    exits
}
