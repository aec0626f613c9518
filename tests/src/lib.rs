//! # sluice-tests
//!
//! The harness that gives tests real servers instead of mocks (DESIGN.md, "Tests and checks"):
//!
//! - [`start_nats`] runs `nats-server -js` with its own JetStream store directory;
//! - [`start_kafka`] runs `tansu broker`, a Kafka-compatible broker, with memory storage;
//! - [`start_kube`] / [`shared_kube`] run etcd and kube-apiserver (module `kube`).
//!
//! Each server listens on a free loopback port, is ready (answers its protocol, not just
//! accepts TCP) when the `start_*` future resolves, and is killed when its handle is dropped,
//! so a failing test never leaves a server behind. [`NatsServer::stop`] / [`NatsServer::start`]
//! kill and restart a server on the same port (and, for NATS, the same store directory), which
//! is how tests simulate an outage or a crash.
//!
//! ```no_run
//! # async fn demo() {
//! let mut nats = sluice_tests::start_nats().await;
//! let url = nats.url(); // nats://127.0.0.1:PORT
//! nats.stop().await; // clients now see the server as unreachable
//! nats.start().await; // back on the same port, JetStream data intact
//! # let _ = url;
//! # }
//! ```
//!
//! A missing binary is a test failure with the command that installs it, never a silent skip:
//! `scripts/install-test-deps.sh` installs both. The environment variables `SLUICE_NATS_SERVER`
//! and `SLUICE_TANSU` point the harness at binaries elsewhere than `PATH` / `~/.cargo/bin`.
//! Each server's output goes to a log file whose tail is printed if the server fails to start;
//! set `SLUICE_KEEP_SERVER_LOGS=1` to keep the logs (their directory is printed) after the test.

mod kube;
pub use kube::*;

use std::ffi::OsString;
use std::fs::File;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a server may take to become ready before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`. Tests wait with
/// this instead of sleeping: it returns as soon as the condition holds.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound once and released, so another process could in theory
/// take it first; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind a free loopback port")
}

/// Finds an executable: the override variable, then `PATH`, then `~/.cargo/bin` (where
/// `cargo install` puts it, which is not always on `PATH` in CI).
fn find_binary(name: &str, env_var: &str, install: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env_var}={} is not a file; unset it or point it at the {name} binary",
            p.display()
        );
        return p;
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed, and the tests need a real server. Install it with \
                 `{install}` (or run scripts/install-test-deps.sh, which installs every test \
                 dependency), or set {env_var} to its path."
            )
        })
}

/// One server process: how to start it, and the running child if any.
#[derive(Debug)]
struct Process {
    name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    /// Working directory and log files.
    dir: TempDir,
    child: Option<Child>,
    starts: u32,
}

impl Process {
    fn new(name: &'static str, program: PathBuf, args: Vec<OsString>) -> Self {
        Process {
            name,
            program,
            args,
            dir: tempfile::Builder::new()
                .prefix(&format!("sluice-{name}-"))
                .tempdir()
                .expect("cannot create a temporary directory"),
            child: None,
            starts: 0,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}-{}.log", self.name, self.starts))
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let log = File::create(self.log_path()).expect("cannot create the server log file");
        let log2 = log.try_clone().expect("cannot share the server log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// Panics with the end of the log if the process has exited.
    fn check_alive(&mut self) {
        let Some(child) = self.child.as_mut() else {
            panic!("{} is not running", self.name);
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            panic!(
                "{} exited during start-up ({status}); its output:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut s);
        }
        let start = s.len().saturating_sub(4000);
        let start = (start..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        s[start..].to_string()
    }

    /// Kills the process (SIGKILL: a crash, no clean shutdown) and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Polls `probe` until it succeeds, failing the test on timeout or if the process dies.
    async fn wait_ready<F, Fut>(&mut self, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<()>>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_err: Option<String>;
        loop {
            self.check_alive();
            match tokio::time::timeout(Duration::from_secs(2), probe()).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => last_err = Some(e.to_string()),
                Err(_) => last_err = Some("probe timed out".into()),
            }
            if Instant::now() >= deadline {
                let tail = self.log_tail();
                self.kill();
                panic!(
                    "{} did not become ready within {READY_TIMEOUT:?} (last error: {}); its output:\n{tail}",
                    self.name,
                    last_err.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("SLUICE_KEEP_SERVER_LOGS").is_some() {
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("cannot create a temporary directory"),
            );
            eprintln!("{} logs kept in {}", self.name, dir.keep().display());
        }
    }
}

/// A running `nats-server -js`. Killed on drop; its store directory is removed with it.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    store: TempDir,
    process: Process,
}

/// Starts `nats-server` with JetStream on a free loopback port and a fresh store directory,
/// and waits until it greets clients.
pub async fn start_nats() -> NatsServer {
    let program = find_binary(
        "nats-server",
        "SLUICE_NATS_SERVER",
        "apt-get install -y nats-server",
    );
    let port = free_port();
    let store = tempfile::Builder::new()
        .prefix("sluice-nats-store-")
        .tempdir()
        .expect("cannot create a temporary directory");
    let args: Vec<OsString> = vec![
        "-js".into(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string().into(),
        "-sd".into(),
        store.path().into(),
    ];
    let mut server = NatsServer {
        port,
        store,
        process: Process::new("nats-server", program, args),
    };
    server.start().await;
    server
}

impl NatsServer {
    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across [`stop`](Self::stop) / [`start`](Self::start)).
    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kills the server (SIGKILL, like a crash). Clients see it as unreachable until
    /// [`start`](Self::start).
    pub async fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port and store directory, waiting until it is
    /// ready. Does nothing if it is running.
    pub async fn start(&mut self) {
        if self.process.is_running() {
            return;
        }
        self.process.spawn();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        self.process.wait_ready(|| nats_greets(addr)).await;
    }

    /// [`stop`](Self::stop) then [`start`](Self::start).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }
}

/// A NATS server sends `INFO {...}` as soon as a client connects; the client port only opens
/// once JetStream has recovered its store.
async fn nats_greets(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await?;
    if &buf == b"INFO " {
        Ok(())
    } else {
        Err(std::io::Error::other("not a NATS greeting"))
    }
}

/// A running `tansu broker` (Kafka-compatible) with memory storage. Killed on drop.
///
/// Memory storage means a [`restart`](Self::restart) starts with no topics, groups or records:
/// use it to test unavailability, not durability.
#[derive(Debug)]
pub struct KafkaServer {
    port: u16,
    process: Process,
}

/// Starts `tansu broker` with memory storage on a free loopback port, and waits until it
/// answers a Kafka `ApiVersions` request.
pub async fn start_kafka() -> KafkaServer {
    let program = find_binary(
        "tansu",
        "SLUICE_TANSU",
        "cargo install tansu --locked --features dynostore",
    );
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let args: Vec<OsString> = vec![
        "broker".into(),
        "--listener-url".into(),
        url.clone().into(),
        "--advertised-listener-url".into(),
        url.into(),
        "--storage-engine".into(),
        "memory://tansu/".into(),
    ];
    let mut server = KafkaServer {
        port,
        process: Process::new("tansu", program, args),
    };
    server.start().await;
    server
}

impl KafkaServer {
    /// The `bootstrap.servers` value, `127.0.0.1:PORT`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kills the broker (SIGKILL). Clients see it as unreachable until [`start`](Self::start).
    pub async fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the broker again on the same port (with empty memory storage), waiting until it
    /// answers. Does nothing if it is running.
    pub async fn start(&mut self) {
        if self.process.is_running() {
            return;
        }
        self.process.spawn();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        self.process.wait_ready(|| kafka_answers(addr)).await;
    }

    /// [`stop`](Self::stop) then [`start`](Self::start).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }
}

/// Sends a Kafka `ApiVersions` v0 request and checks that a response with our correlation id
/// comes back.
async fn kafka_answers(addr: SocketAddr) -> std::io::Result<()> {
    const CORRELATION: i32 = 0x5a1c;
    let client = b"sluice-tests";
    let mut req = Vec::new();
    req.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    req.extend_from_slice(&0i16.to_be_bytes()); // version 0
    req.extend_from_slice(&CORRELATION.to_be_bytes());
    req.extend_from_slice(&(client.len() as i16).to_be_bytes());
    req.extend_from_slice(client);
    let mut frame = (req.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&req);
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(&frame).await?;
    let mut head = [0u8; 8];
    s.read_exact(&mut head).await?;
    let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if correlation == CORRELATION {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected ApiVersions response"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nats_starts_stops_and_restarts_on_the_same_port() {
        let mut nats = start_nats().await;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, nats.port()));
        nats_greets(addr).await.unwrap();
        nats.stop().await;
        assert!(TcpStream::connect(addr).await.is_err());
        nats.start().await;
        nats_greets(addr).await.unwrap();
        assert!(nats.url().ends_with(&nats.port().to_string()));
    }

    #[tokio::test]
    async fn kafka_starts_and_restarts_on_the_same_port() {
        let mut kafka = start_kafka().await;
        let addr: SocketAddr = kafka.bootstrap_servers().parse().unwrap();
        kafka_answers(addr).await.unwrap();
        kafka.restart().await;
        kafka_answers(addr).await.unwrap();
    }
}
