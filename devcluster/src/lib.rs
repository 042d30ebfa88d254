//! A private, throwaway-or-reusable PostgreSQL cluster for `idemq dev`, the
//! test harness and `idemq bench`. Development tooling only: the service's
//! crates (core, api, worker) never depend on it.
//!
//! Why it looks the way it does:
//! - `initdb` and `postgres` refuse to run as root, and sessions and CI run as
//!   root: when our effective uid is 0 every server-side binary runs through
//!   `runuser -u postgres --`, and the data directory is handed to that user.
//! - The cluster listens on 127.0.0.1 and on a port of its own (its socket in
//!   its own data directory), so parallel clusters never collide.
//! - `stop_when_process_exits` guarantees that a test binary that exits, panics
//!   or is killed never leaves a postmaster behind.
use anyhow::{anyhow, bail, Context, Result};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The system user that runs the server when we are root (initdb and postgres
/// refuse to run as root).
const SERVER_USER: &str = "postgres";
/// How long `start`/`restart` wait for the server to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 40;
/// `sun_path` is 108 bytes on Linux (including the NUL): a socket path longer
/// than this makes postgres refuse to start, so we then go TCP-only.
const MAX_SOCKET_PATH: usize = 107;
/// Start attempts when we chose the port ourselves and lost it to a race.
const PORT_ATTEMPTS: usize = 5;
/// Client/server environment variables that must not leak into our commands
/// (they would override the explicit data directory, port or host).
const PG_ENV: &[&str] = &[
    "PGDATA",
    "PGPORT",
    "PGHOST",
    "PGHOSTADDR",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSFILE",
    "PGCONNECT_TIMEOUT",
];

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster lives in `data_dir/pgdata`; its log in `data_dir/postgres.log`.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// For tests only: `fsync=off`, `synchronous_commit=off`,
    /// `full_page_writes=off` (fast, not crash-safe; never benchmark with it).
    pub fast: bool,
}

/// A running (or stopped) private cluster. Dropping it does NOT stop the
/// server: call [`PgCluster::stop`], or arm [`PgCluster::stop_when_process_exits`].
#[derive(Debug)]
pub struct PgCluster {
    data_dir: PathBuf,
    pgdata: PathBuf,
    log: PathBuf,
    port: u16,
    fast: bool,
    bin_dir: PathBuf,
    /// `Some(user)` when we are root and must run server binaries as `user`.
    run_as: Option<String>,
}

/// Ask the kernel for a free TCP port on 127.0.0.1 (bind port 0, read it,
/// release it). Racy by nature; `PgCluster::start` retries on a lost race.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

impl PgCluster {
    /// Directory holding initdb/pg_ctl/postgres: the dir of `pg_ctl` found on
    /// PATH if `postgres` is beside it (following a symlink to the real
    /// installation first), else the highest-versioned
    /// `/usr/lib/postgresql/*/bin`. The error names what was searched.
    pub fn find_bin_dir() -> Result<PathBuf> {
        let mut searched = Vec::new();
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path_var) {
            let pg_ctl = dir.join("pg_ctl");
            if !is_executable(&pg_ctl) {
                continue;
            }
            // /usr/local/bin/pg_ctl may be a symlink: prefer the real
            // directory, which also holds pg_isready and friends.
            let mut candidates = Vec::new();
            if let Some(real_dir) = fs::canonicalize(&pg_ctl)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            {
                candidates.push(real_dir);
            }
            candidates.push(dir.clone());
            for cand in candidates {
                if has_server_binaries(&cand) {
                    return Ok(cand);
                }
                searched.push(format!("{} (pg_ctl without postgres/initdb)", cand.display()));
            }
        }
        if searched.is_empty() {
            searched.push("PATH (no pg_ctl)".to_string());
        }

        let root = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<(Vec<u32>, PathBuf)> = match fs::read_dir(root) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let version: Option<Vec<u32>> = name.split('.').map(|part| part.parse().ok()).collect();
                    version.map(|v| (v, e.path().join("bin")))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        versions.sort();
        for (_, bin) in versions.iter().rev() {
            if has_server_binaries(bin) {
                return Ok(bin.clone());
            }
        }
        searched.push(format!("{}/*/bin", root.display()));
        bail!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; searched: {}. \
             Install the PostgreSQL server or put its bin directory on PATH (or set DATABASE_URL)",
            searched.join(", ")
        )
    }

    /// Create (if needed) and start the cluster, and wait until it accepts
    /// connections. A reused data directory keeps its data; a stale
    /// `postmaster.pid` from a crashed run is handled; an already running
    /// instance of this cluster is stopped first so that the chosen port
    /// applies. On failure the error quotes the end of the server log.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster> {
        let bin_dir = Self::find_bin_dir()?;
        let run_as = if effective_uid()? == 0 {
            check_user_exists(SERVER_USER)?;
            Some(SERVER_USER.to_string())
        } else {
            None
        };
        let data_dir = std::path::absolute(&opts.data_dir)
            .with_context(|| format!("resolving {}", opts.data_dir.display()))?;
        prepare_data_dir(&data_dir, run_as.as_deref())?;

        let mut cluster = PgCluster {
            pgdata: data_dir.join("pgdata"),
            log: data_dir.join("postgres.log"),
            data_dir,
            port: opts.port,
            fast: opts.fast,
            bin_dir,
            run_as,
        };
        // Disarm the watchdog of a previous run on this directory.
        let _ = fs::remove_file(cluster.owner_file());
        cluster.init_if_needed()?;
        cluster.remove_foreign_pid_file()?;
        if cluster.is_running()? {
            cluster.stop()?;
        }

        let attempts = if opts.port == 0 { PORT_ATTEMPTS } else { 1 };
        for attempt in 1..=attempts {
            if opts.port == 0 {
                cluster.port = free_port()?;
            }
            let log_offset = file_len(&cluster.log);
            match cluster.pg_ctl_start("start") {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let lost_port_race =
                        read_from(&cluster.log, log_offset).contains("Address already in use");
                    // Never leave a half-started server behind.
                    let _ = cluster.stop();
                    if attempt < attempts && lost_port_race {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection URL for database `db`: `postgres://postgres@127.0.0.1:PORT/DB`
    /// (trust authentication on loopback, so no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db)
    }

    /// `pg_ctl stop -m fast -w`. Idempotent: stopping a stopped cluster is Ok.
    pub fn stop(&self) -> Result<()> {
        if !self.is_running()? {
            return Ok(());
        }
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])?;
        if !out.status.success() && self.is_running()? {
            bail!(
                "pg_ctl stop failed for {}: {}",
                self.pgdata.display(),
                output_text(&out)
            );
        }
        Ok(())
    }

    /// `pg_ctl stop -m immediate -w`: every backend killed, unwritten WAL
    /// buffers lost, no checkpoint; the next start runs crash recovery
    /// (crash tests).
    pub fn stop_immediately(&self) -> Result<()> {
        let out = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "60"])?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop -m immediate failed for {}: {}",
                self.pgdata.display(),
                output_text(&out)
            );
        }
        Ok(())
    }

    /// `pg_ctl restart -m fast -w` with the same port and options, then wait
    /// until the server accepts connections again (crash/restart tests).
    pub fn restart(&self) -> Result<()> {
        self.pg_ctl_start("restart")
    }

    /// Spawn a detached watchdog that waits for process `pid` to disappear,
    /// then stops the server (`-m immediate`) and, if `remove_dir`, deletes
    /// `data_dir`. It lives in its own process group with null stdio, so a
    /// test binary that exits, panics or is killed (even by Ctrl-C to its
    /// process group) never leaves a postgres behind.
    ///
    /// The watchdog acts only if `data_dir/watchdog.owner` still names `pid`:
    /// `start` clears that file, so a quick re-run on the same data directory
    /// (`idemq dev` restarted within the polling second) is not stopped by
    /// the previous run's watchdog.
    pub fn stop_when_process_exits(&self, pid: u32, remove_dir: bool) -> Result<()> {
        let owner = self.owner_file();
        fs::write(&owner, format!("{pid}\n")).with_context(|| format!("writing {}", owner.display()))?;
        let stop = self.shell_command(&[
            self.bin("pg_ctl").to_string_lossy().as_ref(),
            "stop",
            "-D",
            self.pgdata.to_string_lossy().as_ref(),
            "-m",
            "immediate",
            "-w",
            "-t",
            "60",
        ]);
        let owner = sh_quote(&owner.to_string_lossy());
        let mut script = format!(
            "trap '' HUP INT; while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ \"$(cat {owner} 2>/dev/null)\" = {pid} ]; then {stop}"
        );
        if remove_dir {
            script.push_str(&format!(
                "; rm -rf {}",
                sh_quote(&self.data_dir.to_string_lossy())
            ));
        }
        script.push_str("; fi");
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("spawning the postgres watchdog (sh)")?;
        Ok(())
    }

    // ----- internals -----

    fn owner_file(&self) -> PathBuf {
        self.data_dir.join("watchdog.owner")
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A command for a server binary, run as `run_as` when we are root.
    fn server_command(&self, program: &Path) -> Command {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        };
        // The server user may not be able to enter our cwd (e.g. /root).
        cmd.current_dir(&self.data_dir).stdin(Stdio::null());
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        cmd
    }

    /// The same as `server_command`, as a shell snippet (for the watchdog).
    fn shell_command(&self, argv: &[&str]) -> String {
        let quoted: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
        match &self.run_as {
            Some(user) => format!("runuser -u {} -- {}", sh_quote(user), quoted.join(" ")),
            None => quoted.join(" "),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output> {
        let pg_ctl = self.bin("pg_ctl");
        self.server_command(&pg_ctl)
            .args(args)
            .arg("-D")
            .arg(&self.pgdata)
            .output()
            .with_context(|| format!("running {} {}", pg_ctl.display(), args.join(" ")))
    }

    /// `pg_ctl status`: 0 = running, 3 = not running, 4 = no data directory.
    fn is_running(&self) -> Result<bool> {
        let out = self.pg_ctl(&["status"])?;
        Ok(out.status.success())
    }

    fn init_if_needed(&self) -> Result<()> {
        if self.pgdata.join("PG_VERSION").exists() {
            return Ok(());
        }
        let initdb = self.bin("initdb");
        let common = ["-A", "trust", "-U", "postgres", "--encoding=UTF8"];
        let mut failures = Vec::new();
        for locale in ["--locale=C.UTF-8", "--no-locale"] {
            let out = self
                .server_command(&initdb)
                .arg("-D")
                .arg(&self.pgdata)
                .args(common)
                .arg(locale)
                .output()
                .with_context(|| format!("running {}", initdb.display()))?;
            if out.status.success() {
                return Ok(());
            }
            failures.push(format!("initdb {locale}: {}", output_text(&out)));
        }
        bail!(
            "initdb failed for {} (if it is a leftover of an interrupted run, delete it): {}",
            self.pgdata.display(),
            failures.join("\n")
        )
    }

    /// A `postmaster.pid` whose PID now belongs to some other process (PIDs
    /// are recycled after a crash, e.g. in containers) would make `pg_ctl`
    /// believe the cluster runs, and `pg_ctl stop` would signal a stranger.
    /// A live postmaster's cwd is its data directory; if the PID's cwd is
    /// readable and is something else, the file is stale: remove it.
    fn remove_foreign_pid_file(&self) -> Result<()> {
        let pid_file = self.pgdata.join("postmaster.pid");
        let Ok(contents) = fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let Some(pid) = contents.lines().next().and_then(|l| l.trim().parse::<i64>().ok()) else {
            return Ok(());
        };
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.abs()));
        if !proc_dir.exists() {
            return Ok(()); // dead: pg_ctl and postgres handle that themselves
        }
        let (Ok(cwd), Ok(pgdata)) = (
            fs::read_link(proc_dir.join("cwd")),
            fs::canonicalize(&self.pgdata),
        ) else {
            return Ok(()); // cannot tell: leave it to postgres' own check
        };
        if cwd != pgdata {
            fs::remove_file(&pid_file).with_context(|| format!("removing stale {}", pid_file.display()))?;
        }
        Ok(())
    }

    /// The `-o` string for the postmaster (parsed by /bin/sh inside pg_ctl).
    fn server_options(&self) -> String {
        let pgdata = self.pgdata.to_string_lossy();
        let socket_path_len = pgdata.len() + "/.s.PGSQL.65535".len();
        let socket_dirs = if socket_path_len <= MAX_SOCKET_PATH {
            pgdata.into_owned()
        } else {
            String::new() // too long for a Unix socket: TCP only
        };
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=300",
            self.port,
            sh_quote(&socket_dirs)
        );
        if self.fast {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        opts
    }

    /// `pg_ctl start|restart -w`, then wait for TCP + pg_isready.
    fn pg_ctl_start(&self, verb: &str) -> Result<()> {
        let opts = self.server_options();
        let log = self.log.to_string_lossy().into_owned();
        let mut args = vec![verb, "-w", "-t", "60", "-l", &log, "-o", &opts];
        if verb == "restart" {
            args.extend(["-m", "fast"]);
        }
        let out = self.pg_ctl(&args);
        let out = match out {
            Ok(o) => o,
            Err(e) => return Err(e.context(self.log_tail())),
        };
        if !out.status.success() {
            bail!(
                "pg_ctl {verb} failed for {} on port {}: {}\n{}",
                self.pgdata.display(),
                self.port,
                output_text(&out),
                self.log_tail()
            );
        }
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let pg_isready = [self.bin("pg_isready"), PathBuf::from("/usr/bin/pg_isready")]
            .into_iter()
            .find(|p| is_executable(p));
        loop {
            let last = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Err(e) => format!("TCP connect to {addr}: {e}"),
                Ok(_) => match &pg_isready {
                    None => return Ok(()),
                    Some(bin) => {
                        let mut cmd = Command::new(bin);
                        for var in PG_ENV {
                            cmd.env_remove(var);
                        }
                        let out = cmd
                            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                            .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
                            .stdin(Stdio::null())
                            .output()
                            .with_context(|| format!("running {}", bin.display()))?;
                        if out.status.success() {
                            return Ok(());
                        }
                        format!("pg_isready: {}", output_text(&out))
                    }
                },
            };
            if Instant::now() >= deadline {
                bail!(
                    "postgres on 127.0.0.1:{} not ready after {:?} ({last})\n{}",
                    self.port,
                    READY_DEADLINE,
                    self.log_tail()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        match fs::read_to_string(&self.log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(LOG_TAIL_LINES);
                format!(
                    "last lines of {}:\n{}",
                    self.log.display(),
                    lines[from..].join("\n")
                )
            }
            Err(e) => format!("(no server log at {}: {e})", self.log.display()),
        }
    }
}

/// Create `data_dir` (and its missing parents), make every existing ancestor
/// traversable by the server user, and give `data_dir` to that user.
fn prepare_data_dir(data_dir: &Path, run_as: Option<&str>) -> Result<()> {
    // Remember which ancestors we create: they must be handed over too.
    let mut created = Vec::new();
    let mut cur = Some(data_dir);
    while let Some(dir) = cur {
        if dir.exists() {
            break;
        }
        created.push(dir.to_path_buf());
        cur = dir.parent();
    }
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;

    let Some(user) = run_as else {
        return Ok(());
    };
    // Ancestors (e.g. a 0700 root tempdir, or /root) must be searchable by
    // the server user; add the execute (search) bits only.
    for dir in data_dir.ancestors().skip(1) {
        let meta = fs::metadata(dir).with_context(|| format!("inspecting {}", dir.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode((mode | 0o011) & 0o7777))
                .with_context(|| format!("making {} traversable for {user}", dir.display()))?;
        }
    }
    let owner = format!("{user}:{user}");
    let mut to_chown = vec![data_dir.to_path_buf()];
    to_chown.extend(created.into_iter().filter(|d| d != data_dir));
    for dir in &to_chown {
        let mut cmd = Command::new("chown");
        if dir == data_dir {
            cmd.arg("-R");
        }
        let out = cmd.arg(&owner).arg(dir).output().context("running chown")?;
        if !out.status.success() {
            bail!("chown {owner} {} failed: {}", dir.display(), output_text(&out));
        }
    }
    Ok(())
}

/// Effective uid from `/proc/self/status` ("Uid: real effective saved fs"),
/// falling back to `id -u`.
fn effective_uid() -> Result<u32> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(euid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
        {
            return Ok(euid);
        }
    }
    let out = Command::new("id").arg("-u").output().context("running id -u")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| anyhow!("cannot determine the effective uid: {e}"))
}

fn check_user_exists(user: &str) -> Result<()> {
    let ok = Command::new("id")
        .arg("-u")
        .arg(user)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "running as root, but PostgreSQL refuses to run as root and there is no '{user}' \
             user to run it as (create one, e.g. `useradd --system {user}`)"
        );
    }
    Ok(())
}

fn has_server_binaries(dir: &Path) -> bool {
    ["pg_ctl", "postgres", "initdb"]
        .iter()
        .all(|b| is_executable(&dir.join(b)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The part of a (log) file after `offset`, lossily decoded.
fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(err.trim());
    }
    format!("[{}] {}", out.status, text)
}

/// Single-quote for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
