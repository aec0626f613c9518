//! The system under test: the real `sluice` binary (release build) as a child process, with a
//! generated resource file in a temporary directory, on free loopback ports.

use crate::load;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The broker's namespace and name in every scenario.
pub const NAMESPACE: &str = "default";
pub const BROKER: &str = "bench";
/// `ce-type` of events the matching triggers select.
pub const MATCH_TYPE: &str = "bench.event";

/// Which channel the broker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    Memory,
    Kafka { bootstrap_servers: String },
    Nats { url: String },
}

/// A trigger: `filter_type` None matches everything; `Some(t)` matches `type == t`. Its
/// subscriber is the sink's `/t/<subscriber>`.
#[derive(Debug, Clone)]
pub struct TriggerSpec {
    pub filter_type: Option<String>,
    pub subscriber: usize,
}

/// `n` triggers of which the first `matching` select the benchmark's events and the rest
/// select a type that is never sent. Matching trigger `k` delivers to subscriber `k`.
pub fn triggers(n: usize, matching: usize) -> Vec<TriggerSpec> {
    (0..n)
        .map(|i| TriggerSpec {
            filter_type: Some(if i < matching {
                MATCH_TYPE.to_string()
            } else {
                format!("bench.other.{i}")
            }),
            subscriber: if i < matching { i } else { 0 },
        })
        .collect()
}

/// The resource file for one scenario.
pub fn resources(class: &Class, triggers: &[TriggerSpec], sink: SocketAddr) -> String {
    let mut y = String::new();
    let (annotation, config) = match class {
        Class::Memory => (None, None),
        Class::Kafka { bootstrap_servers } => (
            Some("Kafka"),
            Some(format!("bootstrap.servers: \"{bootstrap_servers}\"")),
        ),
        Class::Nats { url } => (Some("NatsJetStreamBroker"), Some(format!("url: \"{url}\""))),
    };
    if let Some(data) = &config {
        y.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bench-broker\n  namespace: {NAMESPACE}\ndata:\n  {data}\n---\n"
        ));
    }
    y.push_str(&format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: {BROKER}\n  namespace: {NAMESPACE}\n"
    ));
    if let Some(a) = annotation {
        y.push_str(&format!(
            "  annotations:\n    eventing.knative.dev/broker.class: {a}\n"
        ));
    }
    if config.is_some() {
        y.push_str(
            "spec:\n  config:\n    apiVersion: v1\n    kind: ConfigMap\n    name: bench-broker\n",
        );
    }
    for (i, t) in triggers.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t{i}\n  namespace: {NAMESPACE}\nspec:\n  broker: {BROKER}\n"
        ));
        if let Some(ty) = &t.filter_type {
            y.push_str(&format!("  filter:\n    attributes:\n      type: {ty}\n"));
        }
        y.push_str(&format!(
            "  subscriber:\n    uri: http://{sink}/t/{}\n",
            t.subscriber
        ));
    }
    y
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A running `sluice run`, killed on drop; its directory is removed with it.
pub struct Sluice {
    pub pid: u32,
    pub ingress: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    child: Child,
}

static DIRS: AtomicU32 = AtomicU32::new(0);

impl Sluice {
    /// Writes the resources to a fresh directory and spawns `sluice run` on free ports;
    /// returns at once (see [`Sluice::wait_ready`]) with the time it was spawned.
    pub fn spawn(bin: &Path, yaml: &str) -> anyhow::Result<(Sluice, Instant)> {
        let dir = std::env::temp_dir().join(format!(
            "sluice-bench-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("resources.yaml"), yaml)?;
        let log = std::fs::File::create(dir.join("sluice.log"))?;
        let ingress = free_addr()?;
        let admin = free_addr()?;
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("run")
            .arg("-f")
            .arg(dir.join("resources.yaml"))
            .arg("--ingress")
            .arg(ingress.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("sluice exited at once")?;
        Ok((
            Sluice {
                pid,
                ingress,
                admin,
                dir,
                child,
            },
            started,
        ))
    }

    /// Spawns and waits until `/readyz` answers 200.
    pub async fn start(bin: &Path, yaml: &str) -> anyhow::Result<Sluice> {
        let (mut s, _) = Self::spawn(bin, yaml)?;
        s.wait_ready(Duration::from_secs(30)).await?;
        Ok(s)
    }

    /// Polls `/readyz` until 200; on timeout the error holds its last answer.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                anyhow::bail!(
                    "sluice exited ({status}) before it was ready: {}",
                    self.log_tail()
                );
            }
            let last = match load::get_text(self.admin, "/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code}: {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                anyhow::bail!("sluice was not ready after {timeout:?}: /readyz said {last}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn broker_path(&self) -> String {
        format!("/{NAMESPACE}/{BROKER}")
    }

    /// True while the process is running (it has not exited or been restarted).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("sluice.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_for_memory_and_kafka() {
        let sink: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let y = resources(&Class::Memory, &triggers(3, 1), sink);
        assert_eq!(y.matches("kind: Trigger").count(), 3);
        assert_eq!(y.matches("type: bench.event").count(), 1);
        assert!(y.contains("type: bench.other.2"));
        assert!(y.contains("uri: http://127.0.0.1:9999/t/0"));
        assert!(!y.contains("broker.class"));

        let all = resources(
            &Class::Memory,
            &[TriggerSpec {
                filter_type: None,
                subscriber: 0,
            }],
            sink,
        );
        assert!(!all.contains("filter"));

        let k = resources(
            &Class::Kafka {
                bootstrap_servers: "127.0.0.1:9092".into(),
            },
            &triggers(20, 20),
            sink,
        );
        assert!(k.contains("eventing.knative.dev/broker.class: Kafka"));
        assert!(k.contains("bootstrap.servers: \"127.0.0.1:9092\""));
        assert!(k.contains("uri: http://127.0.0.1:9999/t/19"));
    }
}
