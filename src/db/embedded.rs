//! The embedded Postgres cluster: started from the machine's `initdb` and
//! `pg_ctl` when no `DATABASE_URL` is given.
//!
//! The cluster lives in a data folder that is reused across starts, listens
//! on a free loopback port (no Unix socket, so no shared socket folder), and
//! requires a password generated at `initdb` time. Postgres refuses to run as
//! root, so when Tidewire runs as root every Postgres command runs as the
//! `postgres` user.
//!
//! A guardian process (`sh` reading our end of a pipe) stops the cluster when
//! this process goes away by any means, including SIGKILL, so a crashed
//! Tidewire never leaves an orphaned server behind.
//!
//! One Tidewire at a time per data folder: a running one holds an exclusive
//! lock on the folder, and a second is refused rather than joining a
//! cluster the first would stop under it on exit.
//!
//! Secrets (the superuser password, the development JWT secret) are written
//! only with [`write_private`]: a new file, never one that exists or a
//! symlink someone placed there, readable by its owner alone. `initdb` reads
//! the password from such a file inside a folder of random name that only
//! the Postgres user can enter.

use std::{
    fs,
    io::{Read, Write},
    net::TcpListener,
    os::unix::{
        fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// User that runs Postgres when Tidewire itself runs as root.
const POSTGRES_USER: &str = "postgres";
/// Role created by `initdb`. Not `tidewire`: a role named like the
/// `tidewire` schema would put that schema first on `search_path`.
pub const SUPERUSER: &str = "postgres";
/// Database the service uses inside the embedded cluster.
pub const DATABASE: &str = "tidewire";
const PASSWORD_FILE: &str = "tidewire.password";
/// Development JWT secret of the embedded setup.
const JWT_SECRET_FILE: &str = "tidewire.jwt-secret";
/// Pid of the Tidewire process that last started the cluster.
const OWNER_FILE: &str = "tidewire.owner";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL binaries found (initdb and pg_ctl, on PATH or under /usr/lib/postgresql): \
         install PostgreSQL (e.g. `apt-get install postgresql`) or set DATABASE_URL to an existing server"
    )]
    NotInstalled,
    #[error("running as root, but there is no `postgres` user to run PostgreSQL as: create one (`useradd postgres`) or set DATABASE_URL")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error(
        "the data folder {} is in use by {}; use DATABASE_URL to share a database, \
         or give each Tidewire its own --data-dir",
        .dir.display(),
        .pid.map_or_else(|| "another Tidewire".to_owned(), |pid| format!("Tidewire PID {pid}"))
    )]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("embedded Postgres in {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Where and how to run the cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    /// Throw-away cluster for tests: durability off (fsync), and the data
    /// folder is deleted when the cluster stops.
    pub ephemeral: bool,
}

/// A running embedded cluster. [`EmbeddedPostgres::stop`] stops it; if this
/// value is leaked or the process dies, the guardian stops it instead.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
    password: String,
    /// Exclusive lock on the data folder (`flock` on the folder itself),
    /// released when this value drops or the process dies.
    _lock: fs::File,
    /// Holds the write end of the guardian's stdin; dropping it wakes the
    /// guardian.
    _guardian: Option<Child>,
}

impl EmbeddedPostgres {
    /// Initializes the cluster if the data folder is new, then starts it.
    /// Fails with [`EmbeddedError::InUse`] while another Tidewire runs on
    /// the folder. Blocking: call from a blocking thread.
    pub fn start(options: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::NotInstalled)?;
        let run_as = if is_root() {
            Some(postgres_ids().ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        let data_dir = absolute(&options.data_dir)?;
        let io = |source| EmbeddedError::Io {
            dir: data_dir.clone(),
            source,
        };
        if !data_dir.join("PG_VERSION").exists() {
            init_cluster(&bin_dir, &data_dir, run_as, options.ephemeral)?;
        }
        let password = fs::read_to_string(data_dir.join(PASSWORD_FILE))
            .map_err(io)?
            .trim()
            .to_owned();
        let lock = lock_data_dir(&data_dir)?;

        let mut pg = EmbeddedPostgres {
            data_dir: data_dir.clone(),
            bin_dir,
            run_as,
            port: 0,
            password,
            _lock: lock,
            _guardian: None,
        };
        if pg.running_port().is_some() {
            // We hold the lock, so the Tidewire that started it is gone (or
            // still shutting down): stop it and start our own.
            tracing::info!(dir = %data_dir.display(), "stopping an embedded Postgres whose Tidewire is gone");
            pg.stop_server()?;
        }
        pg.port = free_port().map_err(io)?;
        pg._guardian = Some(pg.spawn_guardian(options.ephemeral).map_err(io)?);
        pg.start_server()?;
        tracing::info!(port = pg.port, dir = %data_dir.display(), "embedded Postgres started");
        Ok(pg)
    }

    /// Starts the server process on this cluster's port (again, after
    /// [`EmbeddedPostgres::stop_server`]). Blocking.
    pub fn start_server(&self) -> Result<(), EmbeddedError> {
        // Marks the cluster as ours for the guardian.
        fs::write(
            self.data_dir.join(OWNER_FILE),
            std::process::id().to_string(),
        )
        .map_err(|source| EmbeddedError::Io {
            dir: self.data_dir.clone(),
            source,
        })?;
        let log = self.data_dir.join("postgres.log");
        self.run(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-w")
                .arg("-t")
                .arg("60")
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(format!("-p {} -c listen_addresses=127.0.0.1", self.port)),
        )
    }

    /// Stops the server process (fast shutdown: open transactions roll
    /// back), keeping the data; for outage tests. Blocking.
    pub fn stop_server(&self) -> Result<(), EmbeddedError> {
        self.run(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-m")
                .arg("fast")
                .arg("-w"),
        )
    }

    /// Connection string for a database of this cluster.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The development JWT secret kept in the data folder (created on first
    /// use), so tokens stay valid across restarts of the embedded setup.
    pub fn dev_jwt_secret(&self) -> Result<String, EmbeddedError> {
        let path = self.data_dir.join(JWT_SECRET_FILE);
        let io = |source| EmbeddedError::Io {
            dir: self.data_dir.clone(),
            source,
        };
        if let Ok(secret) = fs::read_to_string(&path) {
            return Ok(secret.trim().to_owned());
        }
        let secret = random_hex(32).map_err(io)?;
        match write_private(&path, &secret, None) {
            Ok(()) => {}
            // Another Tidewire on this folder wrote it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok(fs::read_to_string(&path).map_err(io)?.trim().to_owned());
            }
            Err(e) => return Err(io(e)),
        }
        tracing::info!(file = %path.display(), "generated a development JWT secret (set TIDEWIRE_JWT_SECRET in production)");
        Ok(secret)
    }

    /// Stops the cluster (fast shutdown: open transactions roll back), then
    /// releases the data folder. Blocking.
    pub fn stop(self) -> Result<(), EmbeddedError> {
        self.stop_server()?;
        tracing::info!("embedded Postgres stopped");
        Ok(())
    }

    /// Port of the server running on this data folder, if one runs.
    fn running_port(&self) -> Option<u16> {
        let status = self
            .command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        read_pid_file_port(&self.data_dir)
    }

    fn spawn_guardian(&self, remove_data: bool) -> std::io::Result<Child> {
        // Stops the cluster only if this process was the last to start it:
        // a later Tidewire may have started it again since.
        let script = r#"cat >/dev/null; [ "$(cat "$0/tidewire.owner" 2>/dev/null)" = "$3" ] || exit 0; "$1" stop -D "$0" -m fast -w >/dev/null 2>&1; if [ "$2" = remove ]; then rm -rf "$0"; fi"#;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(&self.data_dir)
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(if remove_data { "remove" } else { "keep" })
            .arg(std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.prepare(&mut cmd);
        cmd.spawn()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        self.prepare(&mut cmd);
        cmd
    }

    fn prepare(&self, cmd: &mut Command) {
        prepare(cmd, self.run_as);
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<(), EmbeddedError> {
        run(what, cmd)
    }
}

/// Runs as the Postgres user where needed, from `/` (the caller's folder may
/// be closed to that user), and in its own process group so Ctrl-C reaches
/// Tidewire, which then stops the cluster in order.
fn prepare(cmd: &mut Command, run_as: Option<(u32, u32)>) {
    cmd.current_dir("/").process_group(0);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<(), EmbeddedError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| EmbeddedError::Command {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    Err(EmbeddedError::Command {
        what: what.to_owned(),
        detail,
    })
}

fn init_cluster(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: Option<(u32, u32)>,
    ephemeral: bool,
) -> Result<(), EmbeddedError> {
    let io = |source| EmbeddedError::Io {
        dir: data_dir.to_owned(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(io)?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(data_dir, Some(uid), Some(gid)).map_err(io)?;
        if !reachable_by(data_dir, uid, gid) {
            return Err(EmbeddedError::Command {
                what: "initdb".into(),
                detail: format!(
                    "the `postgres` user cannot enter {} (a parent folder is closed to it): \
                     choose a --data-dir it can reach, e.g. /var/lib/tidewire/pg",
                    data_dir.display()
                ),
            });
        }
    }
    let password = random_hex(24).map_err(io)?;
    // initdb reads the password from a file the Postgres user can read: in
    // a fresh folder of random name only that user can enter, removed when
    // `pw_dir` drops.
    let pw_dir = PrivateDir::create(&std::env::temp_dir(), run_as).map_err(io)?;
    let pw_file = pw_dir.path.join("pwfile");
    write_private(&pw_file, &password, run_as).map_err(io)?;
    let mut cmd = Command::new(bin_dir.join("initdb"));
    prepare(&mut cmd, run_as);
    cmd.arg("-D")
        .arg(data_dir)
        .arg("-U")
        .arg(SUPERUSER)
        .arg("--auth=scram-sha-256")
        .arg(format!("--pwfile={}", pw_file.display()))
        .arg("-E")
        .arg("UTF8")
        .arg("--no-locale");
    if ephemeral {
        cmd.arg("--no-sync");
    }
    let result = run("initdb", &mut cmd);
    drop(pw_dir);
    result?;

    let mut conf = String::from(
        "\n# Tidewire embedded cluster\nunix_socket_directories = ''\nmax_connections = 400\n",
    );
    if ephemeral {
        conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
    }
    let conf_path = data_dir.join("postgresql.conf");
    let mut existing = fs::read_to_string(&conf_path).map_err(io)?;
    existing.push_str(&conf);
    fs::write(&conf_path, existing).map_err(io)?;
    write_private(&data_dir.join(PASSWORD_FILE), &password, run_as).map_err(io)?;
    tracing::info!(dir = %data_dir.display(), "initialized a new embedded Postgres cluster");
    Ok(())
}

/// Writes `contents` to a new file at `path`, mode 0600, owned by `run_as`
/// when given (Tidewire runs as root). Fails if anything exists at `path`,
/// a symlink included (`O_CREAT | O_EXCL`), so a file or link planted there
/// beforehand is never written through, chmod-ed or chown-ed.
pub fn write_private(
    path: &Path,
    contents: &str,
    run_as: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    // The umask cannot widen 0600, but may narrow it: make it exact. Both
    // calls act on the open file, not on the path.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// A new folder of random name, mode 0700, owned by `run_as` when given;
/// removed with its contents on drop.
#[derive(Debug)]
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(parent: &Path, run_as: Option<(u32, u32)>) -> std::io::Result<Self> {
        let path = parent.join(format!("tidewire-init-{}", random_hex(16)?));
        // Fails if anything, a symlink included, is already there.
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        let dir = PrivateDir { path };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::lchown(&dir.path, Some(uid), Some(gid))?;
        }
        Ok(dir)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Connection string of the embedded cluster running on `data_dir`, read
/// from its pid file and password file (for `tidewire psql` and
/// `create-admin`).
pub fn running_url(data_dir: &Path) -> Option<String> {
    let dir = absolute(data_dir).ok()?;
    let port = read_pid_file_port(&dir)?;
    let password = fs::read_to_string(dir.join(PASSWORD_FILE)).ok()?;
    Some(format!(
        "postgres://{SUPERUSER}:{}@127.0.0.1:{port}/{DATABASE}",
        password.trim()
    ))
}

/// Locks `data_dir` for this process, or says which Tidewire holds it. The
/// lock is on the folder itself (no file to create, so nothing to plant a
/// symlink at) and goes away with the process, however it ends.
fn lock_data_dir(data_dir: &Path) -> Result<fs::File, EmbeddedError> {
    let io = |source| EmbeddedError::Io {
        dir: data_dir.to_owned(),
        source,
    };
    let folder = fs::File::open(data_dir).map_err(io)?;
    match folder.try_lock() {
        Ok(()) => Ok(folder),
        Err(fs::TryLockError::WouldBlock) => Err(EmbeddedError::InUse {
            dir: data_dir.to_owned(),
            // The holder writes its pid when it starts the server.
            pid: fs::read_to_string(data_dir.join(OWNER_FILE))
                .ok()
                .and_then(|pid| pid.trim().parse::<u32>().ok())
                .filter(|pid| Path::new(&format!("/proc/{pid}")).exists()),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// The fourth line of `postmaster.pid` is the port.
fn read_pid_file_port(data_dir: &Path) -> Option<u16> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().nth(3)?.trim().parse().ok()
}

/// Folder of the PostgreSQL server binaries (`initdb`, `pg_ctl`, and
/// beside them `pg_dump`): the first on `PATH`, else the newest under
/// `/usr/lib/postgresql`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_tools(&dir) {
                // Resolve symlinks such as /usr/local/bin/initdb so pg_ctl
                // finds its sibling `postgres` binary.
                let real = fs::canonicalize(dir.join("initdb")).ok()?;
                return real.parent().map(Path::to_path_buf);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&POSTGRES_USER) || fields.len() < 4 {
            return None;
        }
        Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
    })
}

/// Whether a user can traverse every folder above `dir`.
fn reachable_by(dir: &Path, uid: u32, gid: u32) -> bool {
    dir.ancestors().skip(1).all(|parent| {
        let Ok(meta) = fs::metadata(parent) else {
            return false;
        };
        let mode = meta.mode();
        (meta.uid() == uid && mode & 0o100 != 0)
            || (meta.gid() == gid && mode & 0o010 != 0)
            || mode & 0o001 != 0
    })
}

fn absolute(path: &Path) -> Result<PathBuf, EmbeddedError> {
    std::path::absolute(path).map_err(|source| EmbeddedError::Io {
        dir: path.to_owned(),
        source,
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_port_is_the_fourth_line() {
        let dir = std::env::temp_dir().join(format!("tidewire-pidfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("postmaster.pid"),
            "123\n/data\n1700000000\n54321\n\n127.0.0.1\n",
        )
        .unwrap();
        assert_eq!(read_pid_file_port(&dir), Some(54321));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh folder for one test.
    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidewire-test-{}", random_hex(8).unwrap()));
        fs::create_dir(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn private_files_are_new_and_owner_only() {
        let dir = scratch();
        let path = dir.join("secret");
        let me = fs::metadata(&dir).map(|m| (m.uid(), m.gid())).unwrap();
        write_private(&path, "s3cret", Some(me)).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "s3cret");
        assert_eq!(mode(&path), 0o600);

        // An existing file is neither overwritten nor re-moded.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = write_private(&path, "other", None).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&path).unwrap(), "s3cret");
        assert_eq!(mode(&path), 0o644);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_files_never_follow_a_planted_symlink() {
        let dir = scratch();
        let target = dir.join("victim");
        fs::write(&target, "keep").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.join("pwfile");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = write_private(&link, "s3cret", None).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(mode(&target), 0o644);

        // A dangling link does not get its target created either.
        let missing = dir.join("missing");
        let dangling = dir.join("dangling");
        std::os::unix::fs::symlink(&missing, &dangling).unwrap();
        assert!(write_private(&dangling, "s3cret", None).is_err());
        assert!(!missing.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn private_dirs_are_fresh_owner_only_and_removed() {
        let parent = scratch();
        let me = fs::metadata(&parent).map(|m| (m.uid(), m.gid())).unwrap();
        let one = PrivateDir::create(&parent, Some(me)).unwrap();
        let two = PrivateDir::create(&parent, None).unwrap();
        assert_ne!(one.path, two.path);
        assert_eq!(mode(&one.path), 0o700);
        let path = one.path.clone();
        write_private(&path.join("pwfile"), "s3cret", None).unwrap();
        drop(one);
        assert!(!path.exists());
        drop(two);
        fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn random_hex_has_the_asked_length() {
        let a = random_hex(8).unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_hex(8).unwrap());
    }
}
