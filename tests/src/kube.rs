//! A real Kubernetes control plane for tests: `etcd` and `kube-apiserver` on free loopback
//! ports, the way controller-runtime's envtest runs one. There is no kubelet and no
//! controller-manager, so nothing runs pods or garbage-collects: tests run Sluice's controller
//! and data plane as processes against this API server, which is what they talk to in a cluster.
//!
//! The server is secure like a real cluster's: TLS with a test CA, client-certificate
//! authentication, RBAC authorization, and service-account tokens signed by a key of its own.
//! The admin identity is a client certificate in the `system:masters` group; [`KubeServer::user`]
//! and [`KubeServer::service_account`] make identities with no rights until a test grants some.
//!
//! ```no_run
//! # async fn demo() {
//! let kube = sluice_tests::shared_kube().await;
//! let namespaces = kube.kubectl(&["get", "namespaces", "-o", "name"]).await.unwrap();
//! assert!(namespaces.contains("namespace/default"));
//! # }
//! ```
//!
//! The binaries are built from Go modules by `scripts/install-kube.sh` and cached by version;
//! `SLUICE_KUBE_APISERVER`, `SLUICE_ETCD` and `SLUICE_KUBECTL` point at other builds.

use super::{free_port, Process};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The Kubernetes release the harness expects, read from the wrapper module that
/// `scripts/install-kube.sh` builds, so the two cannot disagree.
pub fn kube_version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        include_str!("../kube/apiserver/go.mod")
            .lines()
            .map(|l| l.trim().trim_start_matches("require").trim())
            .find_map(|l| l.strip_prefix("k8s.io/kubernetes v"))
            .map(|v| format!("v{}", v.trim()))
            .expect("tests/kube/apiserver/go.mod does not require k8s.io/kubernetes")
    })
}

/// kube-apiserver compiles its CEL environments and runs a dozen post-start hooks before
/// `/readyz` passes: a few seconds on an idle machine, much more on a loaded 2-core one.
const KUBE_READY_TIMEOUT: Duration = Duration::from_secs(120);

const INSTALL: &str = "scripts/install-kube.sh";

/// `${SLUICE_KUBE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/sluice/kube-<version>}`, as in the
/// install script.
fn kube_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_KUBE_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set");
    base.join("sluice").join(format!("kube-{}", kube_version()))
}

/// The override variable, else the versioned cache. `PATH` is not searched: a kubectl or etcd
/// found there would be whatever version the machine has.
fn kube_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env_var}={} is not a file; unset it or point it at the {name} binary",
            p.display()
        );
        return p;
    }
    let p = kube_cache_dir().join(name);
    assert!(
        p.is_file(),
        "`{name}` {} is not built ({} is missing), and the Kubernetes tests need a real API \
         server. Build it with `{INSTALL}` (it builds kube-apiserver, kubectl and etcd from Go \
         modules; needs Go), or set {env_var} to its path.",
        kube_version(),
        p.display()
    );
    p
}

/// Spawns `program` from one thread that lives as long as the test process, under
/// `setpriv --pdeathsig KILL`. The kernel signals a child when the *thread* that forked it
/// exits, so forking from a long-lived thread turns that into "when the test binary exits":
/// the [`shared_kube`] server is never dropped, and must not outlive its test binary.
fn spawn_tied_to_test_process(
    program: &Path,
    args: &[OsString],
    dir: &Path,
    log: std::fs::File,
) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sluice-kube-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this thread never gets here: its exit would
                // kill every child it spawned.
            })
            .expect("cannot start the process spawner thread");
        Mutex::new(tx)
    });
    // setpriv is part of util-linux, on every Debian; without it the children are still
    // killed on drop, just not when the test binary is killed.
    let setpriv = Path::new("/usr/bin/setpriv");
    let mut cmd = if setpriv.is_file() {
        let mut c = Command::new(setpriv);
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("the process spawner thread is gone");
    reply_rx
        .recv()
        .expect("the process spawner thread did not answer")
}

/// `Process::spawn`, through [`spawn_tied_to_test_process`].
fn spawn_process(p: &mut Process) {
    assert!(p.child.is_none(), "{} is already running", p.name);
    p.starts += 1;
    let log = std::fs::File::create(p.log_path()).expect("cannot create the server log file");
    let child = spawn_tied_to_test_process(&p.program, &p.args, p.dir.path(), log)
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", p.program.display()));
    p.child = Some(child);
}

fn new_process(
    name: &'static str,
    program: PathBuf,
    args: Vec<OsString>,
    parent: &Path,
) -> Process {
    Process {
        name,
        program,
        args,
        dir: tempfile::Builder::new()
            .prefix(&format!("sluice-{name}-"))
            .tempdir_in(parent)
            .expect("cannot create a temporary directory"),
        child: None,
        guarded: false,
        guard: None,
        starts: 0,
    }
}

/// A client identity: a kubeconfig for kubectl and the same credentials for
/// [`KubeServer::request_as`].
#[derive(Clone)]
pub struct KubeUser {
    name: String,
    kubeconfig: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
}

impl std::fmt::Debug for KubeUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeUser")
            .field("name", &self.name)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl KubeUser {
    /// The user name the API server sees (`system:serviceaccount:NS:NAME` for a service
    /// account).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }
}

/// What kubectl printed: `Ok(stdout)` when it exited 0, else `Err` with stderr then stdout.
pub type KubectlResult = Result<String, String>;

/// A running etcd + kube-apiserver. Both are killed when it is dropped.
pub struct KubeServer {
    port: u16,
    // Declared before `etcd` so that the API server goes first.
    apiserver: Process,
    etcd: Process,
    /// Certificates, keys and kubeconfigs (`pki.dir`).
    dir: TempDir,
    pki: Pki,
    admin: KubeUser,
    kubectl: PathBuf,
    startup: Duration,
}

impl std::fmt::Debug for KubeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeServer")
            .field("server_url", &self.server_url())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Starts etcd and kube-apiserver on free loopback ports and waits until `/readyz` passes.
/// Tests that can share a server should use [`shared_kube`]: starting one takes seconds.
pub async fn start_kube() -> KubeServer {
    KubeServer::start_in(&std::env::temp_dir()).await
}

/// One server for the whole test binary, started by the first test that asks. Tests sharing
/// it should use their own namespaces or object names. It is never dropped: its processes die
/// with the test binary (they run under `setpriv --pdeathsig KILL`), and its files are removed by
/// the next test binary that starts a shared server.
pub async fn shared_kube() -> &'static KubeServer {
    static SHARED: tokio::sync::OnceCell<KubeServer> = tokio::sync::OnceCell::const_new();
    SHARED
        .get_or_init(|| async {
            let parent =
                std::env::temp_dir().join(format!("{SHARED_PREFIX}{}", std::process::id()));
            remove_stale_shared_dirs();
            std::fs::create_dir_all(&parent).expect("cannot create the shared server directory");
            KubeServer::start_in(&parent).await
        })
        .await
}

const SHARED_PREFIX: &str = "sluice-kube-shared-";

/// Removes the directories of shared servers whose test binary has exited.
fn remove_stale_shared_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SHARED_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn ca(common_name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("cannot generate a CA key");
    CertifiedIssuer::self_signed(params, key).expect("cannot self-sign the test CA")
}

impl KubeServer {
    async fn start_in(parent: &Path) -> KubeServer {
        let started = Instant::now();
        let apiserver_bin = kube_binary("kube-apiserver", "SLUICE_KUBE_APISERVER");
        let etcd_bin = kube_binary("etcd", "SLUICE_ETCD");
        let kubectl = kube_binary("kubectl", "SLUICE_KUBECTL");
        let dir = tempfile::Builder::new()
            .prefix("sluice-kube-")
            .tempdir_in(parent)
            .expect("cannot create a temporary directory");
        let file = |name: &str| dir.path().join(name);

        // Separate CAs for serving and for clients, as in a real cluster: trusting the
        // server's CA must not let anyone mint client identities.
        let serving_ca = ca("sluice-test-serving-ca");
        let client_ca = ca("sluice-test-client-ca");
        let mut serving = CertificateParams::default();
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().expect("a valid DNS name")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate().expect("cannot generate a key");
        let serving_cert = serving
            .signed_by(&serving_key, &serving_ca)
            .expect("cannot sign the serving certificate");
        write(&file("serving-ca.crt"), &serving_ca.pem());
        write(&file("client-ca.crt"), &client_ca.pem());
        write(&file("apiserver.crt"), &serving_cert.pem());
        write(&file("apiserver.key"), &serving_key.serialize_pem());
        // Service-account tokens are signed with this key and verified with its public half.
        let sa_key = KeyPair::generate().expect("cannot generate a key");
        write(&file("sa.key"), &sa_key.serialize_pem());
        write(&file("sa.pub"), &sa_key.public_key_pem());

        let client_port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = new_process("etcd", etcd_bin, Vec::new(), parent);
        let data_dir = etcd.dir.path().join("data");
        etcd.args = [
            "--name=sluice-test".to_string(),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=sluice-test={peer_url}"),
            // Test data is thrown away: durability is not worth an fsync per write.
            "--unsafe-no-fsync=true".to_string(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        spawn_process(&mut etcd);

        let port = free_port();
        let path_arg = |flag: &str, name: &str| format!("--{flag}={}", file(name).display());
        let apiserver_args: Vec<OsString> = [
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", file("cert-dir").display()),
            path_arg("tls-cert-file", "apiserver.crt"),
            path_arg("tls-private-key-file", "apiserver.key"),
            path_arg("client-ca-file", "client-ca.crt"),
            format!("--etcd-servers={client_url}"),
            "--authorization-mode=RBAC".to_string(),
            path_arg("service-account-key-file", "sa.pub"),
            path_arg("service-account-signing-key-file", "sa.key"),
            format!("--service-account-issuer=https://127.0.0.1:{port}"),
            // No controller-manager creates service-account tokens for pods, and no pods run.
            "--disable-admission-plugins=ServiceAccount".to_string(),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--allow-privileged=true".to_string(),
            // The `kubernetes` Service's endpoint would be 127.0.0.1, which Endpoints reject:
            // the reconciler would log that error every few seconds.
            "--endpoint-reconciler-type=none".to_string(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        let mut apiserver = new_process("kube-apiserver", apiserver_bin, apiserver_args, parent);

        // The API server gives up if etcd does not answer soon enough, so etcd goes first.
        wait_until("etcd", &mut [&mut etcd], || etcd_healthy(client_port)).await;
        spawn_process(&mut apiserver);

        let server_url = format!("https://127.0.0.1:{port}");
        let pki = Pki {
            dir: dir.path().to_path_buf(),
            server_url: server_url.clone(),
            serving_ca: serving_ca.der().clone(),
            client_ca,
        };
        let admin = pki.cert_user("sluice-admin", Some("system:masters"));
        let mut server = KubeServer {
            port,
            apiserver,
            etcd,
            pki,
            admin,
            kubectl,
            startup: Duration::ZERO,
            dir,
        };
        let admin = server.admin.clone();
        let KubeServer {
            apiserver, etcd, ..
        } = &mut server;
        wait_until("kube-apiserver", &mut [apiserver, etcd], || {
            let admin = admin.clone();
            async move {
                match request(port, &admin, "GET", "/readyz", None).await? {
                    (200, _) => Ok(()),
                    (status, body) => Err(std::io::Error::other(format!(
                        "/readyz answered {status}: {body}"
                    ))),
                }
            }
        })
        .await;
        server.startup = started.elapsed();
        eprintln!(
            "kube-apiserver {} ready at {server_url} in {:.1?}",
            kube_version(),
            server.startup
        );
        server
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long [`start_kube`] took, certificates to `/readyz`.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The admin kubeconfig (a client certificate in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.admin.kubeconfig
    }

    /// The CA that signed the API server's certificate (PEM), for clients configured by hand.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.path().join("serving-ca.crt")
    }

    pub fn admin(&self) -> &KubeUser {
        &self.admin
    }

    /// The kubectl built for this Kubernetes release.
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }

    /// Runs kubectl as the admin.
    pub async fn kubectl(&self, args: &[&str]) -> KubectlResult {
        self.kubectl_as(&self.admin, args, None).await
    }

    /// Runs kubectl as the admin with `stdin` as its input (for `apply -f -`).
    pub async fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> KubectlResult {
        self.kubectl_as(&self.admin, args, Some(stdin)).await
    }

    /// Runs kubectl with `user`'s kubeconfig.
    pub async fn kubectl_as(
        &self,
        user: &KubeUser,
        args: &[&str],
        stdin: Option<&str>,
    ) -> KubectlResult {
        let mut cmd = tokio::process::Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&user.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()));
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .await
                .expect("cannot write to kubectl's stdin");
        }
        let out = child
            .wait_with_output()
            .await
            .expect("cannot wait for kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "kubectl {} ({}): {}{stdout}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// An HTTPS request to the API server as `user`: the status code and the body. For checks
    /// on the HTTP level (status codes) that kubectl's error text would blur.
    pub async fn request_as(
        &self,
        user: &KubeUser,
        method: &str,
        path: &str,
        json_body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        request(self.port, user, method, path, json_body).await
    }

    /// A user authenticated by a client certificate signed by the API server's client CA:
    /// `name` is the user name and `group`, if any, its one group (the certificate's O).
    /// It has no rights beyond those RBAC gives every authenticated user until a test binds
    /// a role to it.
    pub fn user(&self, name: &str, group: Option<&str>) -> KubeUser {
        self.pki.cert_user(name, group)
    }

    /// The service account `namespace/name`, created if missing, authenticated by a token
    /// from the TokenRequest API (what a pod's projected token is), valid for an hour.
    pub async fn service_account(&self, namespace: &str, name: &str) -> KubeUser {
        let created = self
            .kubectl(&["create", "serviceaccount", name, "-n", namespace])
            .await;
        if let Err(e) = created {
            // kubectl says `(AlreadyExists)` or, in newer releases, `already exists`.
            assert!(
                e.contains("AlreadyExists") || e.contains("already exists"),
                "cannot create service account {namespace}/{name}: {e}"
            );
        }
        let token = self
            .kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])
            .await
            .unwrap_or_else(|e| panic!("cannot get a token for {namespace}/{name}: {e}"))
            .trim()
            .to_string();
        self.pki
            .token_user(&format!("system:serviceaccount:{namespace}:{name}"), token)
    }
}

/// Mints identities and writes their kubeconfigs.
struct Pki {
    dir: PathBuf,
    server_url: String,
    serving_ca: CertificateDer<'static>,
    client_ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A client certificate signed by the client CA. kube-apiserver takes the user name from
    /// its CN and the groups from its O entries (rcgen writes at most one).
    fn cert_user(&self, name: &str, group: Option<&str>) -> KubeUser {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        if let Some(g) = group {
            params.distinguished_name.push(DnType::OrganizationName, g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("cannot generate a key");
        let cert = params
            .signed_by(&key, &self.client_ca)
            .expect("cannot sign a client certificate");
        let cert_path = self.user_file(name, "crt");
        let key_path = self.user_file(name, "key");
        write(&cert_path, &cert.pem());
        write(&key_path, &key.serialize_pem());
        let kubeconfig = self.user_file(name, "kubeconfig");
        self.write_kubeconfig(
            &kubeconfig,
            name,
            serde_json::json!({
                "client-certificate": cert_path,
                "client-key": key_path,
            }),
        );
        let identity = (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()),
        );
        KubeUser {
            name: name.into(),
            kubeconfig,
            tls: client_tls(&self.serving_ca, Some(identity)),
            token: None,
        }
    }

    fn token_user(&self, name: &str, token: String) -> KubeUser {
        let kubeconfig = self.user_file(name, "kubeconfig");
        self.write_kubeconfig(&kubeconfig, name, serde_json::json!({ "token": token }));
        KubeUser {
            name: name.into(),
            kubeconfig,
            tls: client_tls(&self.serving_ca, None),
            token: Some(token),
        }
    }

    /// A file for `user` in the server's directory (user names may hold `:`).
    fn user_file(&self, user: &str, ext: &str) -> PathBuf {
        let safe: String = user
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("user-{safe}.{ext}"))
    }

    /// Kubeconfig files may be JSON, which keeps paths and tokens quoted correctly.
    fn write_kubeconfig(&self, path: &Path, user: &str, credentials: serde_json::Value) {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "sluice-test",
                "cluster": {
                    "server": self.server_url,
                    "certificate-authority": self.dir.join("serving-ca.crt"),
                },
            }],
            "users": [{ "name": user, "user": credentials }],
            "contexts": [{
                "name": "sluice-test",
                "context": { "cluster": "sluice-test", "user": user },
            }],
            "current-context": "sluice-test",
        });
        write(
            path,
            &serde_json::to_string_pretty(&config).expect("a kubeconfig serializes"),
        );
    }
}

fn client_tls(
    serving_ca: &CertificateDer<'static>,
    identity: Option<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(serving_ca.clone())
        .expect("the test CA is a valid root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(vec![cert], PrivateKeyDer::Pkcs8(key))
            .expect("a valid client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One request over its own TLS connection. HTTP/1.0, so the server delimits the body by
/// closing the connection instead of chunking it.
async fn request(
    port: u16,
    user: &KubeUser,
    method: &str,
    path: &str,
    json_body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    let connector = tokio_rustls::TlsConnector::from(user.tls.clone());
    let mut tls = connector
        .connect(ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST)), tcp)
        .await?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    head.push_str("Accept: application/json\r\n");
    if let Some(token) = &user.token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = json_body.unwrap_or("");
    if json_body.is_some() {
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body.as_bytes()).await?;
    tls.flush().await?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        // A peer that closes without close_notify still sent the whole HTTP/1.0 response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header in the response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, body.to_string()))
}

/// etcd's `/health` says `"health":"true"` once it has a leader and serves requests.
async fn etcd_healthy(port: u16) -> std::io::Result<()> {
    let mut s = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut response = String::new();
    s.read_to_string(&mut response).await?;
    if response.contains("\"health\":\"true\"") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "etcd is not healthy yet: {response}"
        )))
    }
}

/// Polls `probe` until it succeeds. Fails the test, with the end of every process's log, on
/// timeout or when one of `processes` exits.
async fn wait_until<F, Fut>(what: &str, processes: &mut [&mut Process], mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let deadline = Instant::now() + KUBE_READY_TIMEOUT;
    let logs = |processes: &[&mut Process]| {
        processes
            .iter()
            .map(|p| format!("--- {} output:\n{}", p.name, p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    loop {
        if let Some(dead) = processes.iter_mut().position(|p| !p.is_running()) {
            let logs = logs(processes);
            panic!(
                "{} exited while waiting for {what} to be ready\n{logs}",
                processes[dead].name
            );
        }
        let last_err = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "probe timed out".into(),
        };
        if Instant::now() >= deadline {
            let logs = logs(processes);
            for p in processes.iter_mut() {
                p.kill();
            }
            panic!(
                "{what} did not become ready within {KUBE_READY_TIMEOUT:?} (last error: \
                 {last_err})\n{logs}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
