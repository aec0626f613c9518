//! # sluice-tests
//!
//! The harness that gives tests real servers instead of mocks (DESIGN.md, "Tests and checks"):
//!
//! - [`start_nats`] runs `nats-server -js` with its own JetStream store directory;
//! - [`start_kafka`] runs Apache Kafka 4.x in KRaft mode (one node, broker and controller)
//!   from its Maven Central jars (`java -cp 'libs/*' kafka.Kafka server.properties`), with its
//!   own data directory; [`shared_kafka`] is one such broker for a whole test binary, since a
//!   JVM start costs seconds.
//! - [`start_kube`] / [`shared_kube`] run etcd and kube-apiserver (module `kube`).
//!
//! Each server listens on free loopback ports, is ready (answers its protocol, not just
//! accepts TCP) when the `start_*` future resolves, and is killed when its handle is dropped,
//! so a failing test never leaves a server behind (the shared Kafka broker dies with the test
//! process). `stop` / `start` kill (SIGKILL) and restart a server on the same ports with the
//! same data (JetStream store, Kafka log directory), which is how tests simulate an outage or a
//! crash.
//!
//! ```no_run
//! # async fn demo() {
//! let mut nats = sluice_tests::start_nats().await;
//! let url = nats.url(); // nats://127.0.0.1:PORT
//! nats.stop().await; // clients now see the server as unreachable
//! nats.start().await; // back on the same port, JetStream data intact
//! # let _ = url;
//! let kafka = sluice_tests::shared_kafka().await;
//! let servers = kafka.bootstrap_servers(); // 127.0.0.1:PORT
//! # let _ = servers;
//! # }
//! ```
//!
//! A missing install is a test failure with the command that installs it, never a silent
//! skip: `scripts/install-test-deps.sh` installs everything, `scripts/install-kafka.sh` just
//! Kafka (the jars `tests/kafka/pom.xml` lists, cached in `~/.cache/sluice/kafka-<version>/libs`).
//! `SLUICE_NATS_SERVER` points the harness at a `nats-server` elsewhere than `PATH`;
//! `SLUICE_KAFKA_HOME` at a directory of Kafka jars (or one holding `libs/`); `JAVA_HOME` or
//! `SLUICE_JAVA` at the JVM. Each server's output goes to a log file whose tail is printed if
//! the server fails to start; set `SLUICE_KEEP_SERVER_LOGS=1` to keep the logs (their
//! directory is printed) after the test.

mod kube;
pub use kube::*;

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
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
    /// Run under [`GUARD`], which kills the server when this process ends without killing it
    /// (for servers held in statics, which are never dropped).
    guarded: bool,
    /// The guard's stdin: "stop" kills the server; end-of-file also removes `dir`.
    guard: Option<ChildStdin>,
    starts: u32,
}

/// Runs a server (`$2...`) and kills it (SIGKILL) when a line arrives on stdin. When stdin
/// reaches end-of-file instead — the test process has exited or been killed, and the kernel
/// closed the pipe — it also removes the server's directory (`$1`) once the server is gone.
/// A background list in a non-interactive shell reads /dev/null unless told otherwise, hence
/// stdin duplicated to fd 3 for the watcher.
const GUARD: &str = r#"dir="$1"; shift
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
{
  if read -r _ <&3; then
    kill -9 "$pid" 2>/dev/null
  else
    kill -9 "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -rf "$dir"
  fi
} &
exec 3<&-
wait "$pid"
"#;

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
            guarded: false,
            guard: None,
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
        let mut command = if self.guarded {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(GUARD)
                .arg("sluice-guard")
                .arg(self.dir.path())
                .arg(&self.program)
                .stdin(Stdio::piped());
            c
        } else {
            let mut c = Command::new(&self.program);
            c.stdin(Stdio::null());
            c
        };
        let mut child = command
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        self.guard = child.stdin.take();
        self.child = Some(child);
    }

    /// Panics with the end of the log if the process has exited.
    fn check_alive(&mut self) {
        let Some(child) = self.child.as_mut() else {
            panic!("{} is not running", self.name);
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            // "stop", not end-of-file: the guard must leave the log for the message below.
            if let Some(mut guard) = self.guard.take() {
                let _ = guard.write_all(b"stop\n");
            }
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
            match self.guard.take() {
                // The guard kills the server and exits once it is gone.
                Some(mut guard) => {
                    let _ = guard.write_all(b"stop\n");
                    let _ = guard.flush();
                    let _ = child.wait();
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
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

/// The Apache Kafka version the harness runs: the one `tests/kafka/pom.xml` names, which is
/// also what `scripts/install-kafka.sh` installs by default.
pub fn kafka_version() -> &'static str {
    const POM: &str = include_str!("../kafka/pom.xml");
    POM.split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .map(|(v, _)| v.trim())
        .expect("tests/kafka/pom.xml names no <kafka.version>")
}

/// The directory of Kafka's jars: `SLUICE_KAFKA_HOME` (the jars' directory, or a directory
/// holding `libs/`), else the install script's cache, `~/.cache/sluice/kafka-<version>/libs`
/// (or under `SLUICE_CACHE_DIR`).
fn kafka_libs() -> PathBuf {
    const INSTALL: &str = "scripts/install-kafka.sh";
    let has_jars = |dir: &Path| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("kafka_2.13-") && name.ends_with(".jar")
            })
        })
    };
    if let Some(home) = std::env::var_os("SLUICE_KAFKA_HOME") {
        let home = PathBuf::from(home);
        for dir in [home.join("libs"), home.clone()] {
            if has_jars(&dir) {
                return dir;
            }
        }
        panic!(
            "SLUICE_KAFKA_HOME={} holds no kafka_2.13-*.jar (nor does its libs/); point it at \
             the jars of Apache Kafka 4.x, or unset it and run {INSTALL}",
            home.display()
        );
    }
    let cache = std::env::var_os("SLUICE_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice")))
        .expect("neither SLUICE_CACHE_DIR nor HOME is set: cannot find the Kafka install");
    let version = kafka_version();
    let libs = cache.join(format!("kafka-{version}")).join("libs");
    assert!(
        libs.join(".complete").is_file() && has_jars(&libs),
        "Apache Kafka {version} is not installed in {}, and the Kafka tests need a real broker. \
         Install it with `{INSTALL}` (needs java 17+ and mvn; scripts/install-test-deps.sh \
         installs every test dependency), or set SLUICE_KAFKA_HOME to a directory of Kafka 4.x \
         jars.",
        libs.display()
    );
    libs
}

/// `java`: `$JAVA_HOME/bin/java`, else the one on `PATH`.
fn java() -> PathBuf {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let java = PathBuf::from(home).join("bin/java");
        if java.is_file() {
            return java;
        }
    }
    find_binary(
        "java",
        "SLUICE_JAVA",
        "apt-get install -y openjdk-17-jre-headless",
    )
}

/// JVM flags for a broker that starts fast on a small machine: the single-threaded collector
/// and the C1 compiler only (start-up is mostly class loading and warm-up, and the tests'
/// load is light), a small fixed heap.
const JVM_FLAGS: &[&str] = &[
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
];

/// Any 16 bytes in Kafka's base64 form; each server has its own data directory, so one id
/// serves them all.
const CLUSTER_ID: &str = "U2x1aWNlVGVzdEthZmthMQ";

/// A running Apache Kafka broker in KRaft mode (one node that is broker and controller), with
/// its data in a temporary directory. Killed on drop (and when the test process exits, even if
/// it never drops it: see [`shared_kafka`]).
///
/// [`stop`](Self::stop) kills it with SIGKILL, as a crash would; [`start`](Self::start) brings
/// it back on the same ports with the same data (topics, records, committed offsets).
#[derive(Debug)]
pub struct KafkaServer {
    port: u16,
    controller_port: u16,
    process: Process,
}

/// Starts Apache Kafka on free loopback ports (client and controller listener) with a fresh
/// data directory, and waits until it answers a Kafka `ApiVersions` request. Costs a few
/// seconds of JVM start: tests that need no outage of their own should use [`shared_kafka`].
pub async fn start_kafka() -> KafkaServer {
    let libs = kafka_libs();
    let java = java();
    let port = free_port();
    let mut controller_port = free_port();
    while controller_port == port {
        controller_port = free_port();
    }
    let classpath = format!("{}/*", libs.display());
    let mut args: Vec<OsString> = JVM_FLAGS.iter().map(OsString::from).collect();
    args.extend([
        OsString::from("-Dlog4j2.configurationFile=log4j2.properties"),
        "-cp".into(),
        classpath.clone().into(),
        "kafka.Kafka".into(),
        "server.properties".into(),
    ]);
    let mut process = Process::new("kafka", java.clone(), args);
    process.guarded = true;
    let dir = process.dir.path().to_path_buf();
    let data = dir.join("data");
    std::fs::write(
        dir.join("server.properties"),
        kafka_properties(port, controller_port, &data),
    )
    .expect("cannot write server.properties");
    std::fs::write(dir.join("log4j2.properties"), KAFKA_LOG4J).expect("cannot write log4j2");

    // `format` writes the node's identity and the cluster's bootstrap metadata into the data
    // directory; with a static quorum (`controller.quorum.voters`) it needs no --standalone.
    let out = Command::new(&java)
        .args(JVM_FLAGS)
        .arg("-Dlog4j2.configurationFile=log4j2.properties")
        .arg("-cp")
        .arg(&classpath)
        .args(["kafka.tools.StorageTool", "format", "-t", CLUSTER_ID])
        .args(["-c", "server.properties"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", java.display()));
    assert!(
        out.status.success(),
        "formatting Kafka's storage failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut server = KafkaServer {
        port,
        controller_port,
        process,
    };
    server.start().await;
    server
}

/// One Kafka broker for the whole test binary, started by the first test that asks (the
/// others wait for it). Tests that share it use topics and groups of their own; a test that
/// stops its broker needs [`start_kafka`]. It is never dropped: the broker dies with the test
/// process (its guard sees the process's end) and its directory is removed then.
pub async fn shared_kafka() -> &'static KafkaServer {
    static SHARED: tokio::sync::OnceCell<KafkaServer> = tokio::sync::OnceCell::const_new();
    SHARED.get_or_init(start_kafka).await
}

fn kafka_properties(port: u16, controller_port: u16, data: &Path) -> String {
    format!(
        "# Written by sluice-tests: one node, broker and controller, on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
# One replica of everything: there is one broker.
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A group's first member need not wait 3 s for others to join.
group.initial.rebalance.delay.ms=0
# After a SIGKILL the restarted broker cannot register until the controller has expired its
# previous incarnation's session (9 s by default): keep that short.
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
# Lets tests use short consumer sessions (a killed member is noticed in seconds).
group.min.session.timeout.ms=1000
# Topics are created explicitly (channels, tests); a source reading a missing topic must see it
# missing rather than create it.
auto.create.topics.enable=false
# Small files: tests make many topics with little data.
log.segment.bytes=1048576
log.index.size.max.bytes=65536
# Few threads: the machine is small and shared.
num.network.threads=2
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
",
        data = data.display()
    )
}

/// Warnings and errors, plus the lines that say the server started or stopped.
const KAFKA_LOG4J: &str = "rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.raftserver.name=kafka.server.KafkaRaftServer
logger.raftserver.level=INFO
";

impl KafkaServer {
    /// The `bootstrap.servers` value, `127.0.0.1:PORT`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The KRaft controller's port (not for clients).
    pub fn controller_port(&self) -> u16 {
        self.controller_port
    }

    /// The broker's data directory (kept across [`stop`](Self::stop) / [`start`](Self::start)).
    pub fn data_dir(&self) -> PathBuf {
        self.process.dir.path().join("data")
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Kills the broker (SIGKILL). Clients see it as unreachable until [`start`](Self::start).
    pub async fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts the broker again on the same ports with the same data, waiting until it
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
    async fn kafka_starts_and_restarts_on_the_same_port_with_its_data() {
        let started = Instant::now();
        let mut kafka = start_kafka().await;
        eprintln!("kafka started in {:?}", started.elapsed());
        let addr: SocketAddr = kafka.bootstrap_servers().parse().unwrap();
        kafka_answers(addr).await.unwrap();
        let meta = kafka.data_dir().join("meta.properties");
        assert!(meta.is_file(), "storage not formatted: {}", meta.display());
        kafka.stop().await;
        assert!(!kafka.is_running());
        assert!(TcpStream::connect(addr).await.is_err());
        let restarted = Instant::now();
        kafka.start().await;
        eprintln!("kafka restarted in {:?}", restarted.elapsed());
        kafka_answers(addr).await.unwrap();
        assert!(
            meta.is_file(),
            "the data directory did not survive a restart"
        );
        assert_ne!(kafka.port(), kafka.controller_port());
    }

    #[test]
    fn the_kafka_version_comes_from_the_pom() {
        assert!(kafka_version().starts_with("4."), "{}", kafka_version());
    }
}
