//! Credentials from files, reloaded on an interval: gRPC's `file_watcher`
//! certificate provider.
//!
//! The semantics are gRFC A29's `file_watcher` plugin (and grpc-go's
//! `credentials/tls/certprovider/pemfile`, which implements it), with the
//! SPIFFE bundle map of gRFC A87 (reference checklist B.4.1 to B.4.5):
//!
//! - Configuration: a certificate file (PEM chain, leaf first), a private
//!   key file, a root file, and a refresh interval (default 10 minutes, the
//!   `file_watcher` plugin's). The roots are either a CA certificate file
//!   (PEM roots, trusted for the trust domain of the workload's own SVID)
//!   or a SPIFFE trust bundle map file (JSON, every trust domain it names),
//!   which takes precedence as in A87.
//! - Every refresh reads all files and validates them together: the leaf
//!   must be an X.509-SVID and the key must match it
//!   ([`Credentials::from_pem`]), the roots must parse. Only then are the
//!   credentials and the bundle swapped into the [`CredentialStore`], in
//!   one step, and only when the bytes changed; new handshakes use them,
//!   established connections keep what they negotiated.
//! - A failed reload (a missing, unreadable or unparsable file, or a key
//!   that does not fit the certificate) keeps the previous credentials,
//!   logs a warning and counts in [`FileWatcherStats::failures`]; the next
//!   refresh tries again. A failed **first** load fails closed:
//!   [`FileWatcher::start`] returns the error and there are no credentials
//!   to serve with, never a fallback to plaintext (B.4.3).
//! - "Read atomically" (B.4.2): the files are read, then the certificate
//!   and key are read again; if a writer replaced one in between, or if
//!   what was read does not validate (most often a new certificate with the
//!   old key, read between a writer's two writes), the whole load is
//!   retried, up to three attempts 50 ms apart, before the refresh counts
//!   as failed. A writer slower than that between its two files still
//!   makes a failed reload, and the next refresh takes the finished pair.
//!   Kubernetes' projected volumes swap a `..data` symlink and are read
//!   consistently.
//!
//! The refresh task is owned by the [`FileWatcher`]: dropping it stops the
//! task (the store stays usable with the last credentials). Time comes from
//! `tokio::time`, so tests run on a paused clock; files are read on the
//! blocking pool, so a slow disk never stalls the runtime's workers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use crate::{CredentialStore, Credentials, TrustBundle};

/// Where a [`FileWatcher`] reads from, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileWatcherConfig {
    certificate_file: PathBuf,
    private_key_file: PathBuf,
    roots: Roots,
    refresh_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    /// PEM roots for the workload's own trust domain.
    CaCertificate(PathBuf),
    /// A SPIFFE trust bundle map (gRFC A87).
    SpiffeBundleMap(PathBuf),
}

impl Roots {
    fn path(&self) -> &Path {
        match self {
            Self::CaCertificate(p) | Self::SpiffeBundleMap(p) => p,
        }
    }
}

impl FileWatcherConfig {
    /// The `file_watcher` plugin's default refresh interval: 10 minutes.
    pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(600);

    /// Reads the certificate chain, its private key and the CA
    /// certificates (PEM roots of the workload's trust domain), every
    /// [`DEFAULT_REFRESH_INTERVAL`](Self::DEFAULT_REFRESH_INTERVAL).
    pub fn new(
        certificate_file: impl Into<PathBuf>,
        private_key_file: impl Into<PathBuf>,
        ca_certificate_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            certificate_file: certificate_file.into(),
            private_key_file: private_key_file.into(),
            roots: Roots::CaCertificate(ca_certificate_file.into()),
            refresh_interval: Self::DEFAULT_REFRESH_INTERVAL,
        }
    }

    /// Reads the roots from a SPIFFE trust bundle map (JSON,
    /// [`TrustBundle::from_spiffe_bundle_map`]) instead of the CA
    /// certificate file: A87's `spiffe_trust_bundle_map_file`, which takes
    /// precedence over `ca_certificate_file`.
    pub fn with_spiffe_trust_bundle_map_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.roots = Roots::SpiffeBundleMap(file.into());
        self
    }

    /// Sets the refresh interval (clamped to at least one millisecond).
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The refresh interval.
    pub fn refresh_interval(&self) -> Duration {
        self.refresh_interval
    }
}

/// Credential files that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileWatcherError {
    reason: String,
}

impl FileWatcherError {
    /// Why, naming the file.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for FileWatcherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "credential files: {}", self.reason)
    }
}

impl std::error::Error for FileWatcherError {}

fn error(reason: String) -> FileWatcherError {
    FileWatcherError { reason }
}

/// Counters of a [`FileWatcher`].
#[derive(Debug, Default)]
pub struct FileWatcherStats {
    updates: AtomicU64,
    failures: AtomicU64,
}

impl FileWatcherStats {
    /// Loads that changed the credentials or roots, the first included.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Reloads that failed and kept the previous credentials.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Keeps a [`CredentialStore`] filled from files (see the module docs).
#[derive(Debug)]
pub struct FileWatcher {
    store: Arc<CredentialStore>,
    stats: Arc<FileWatcherStats>,
    task: JoinHandle<()>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The bytes of one consistent read of the files.
#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    roots: Vec<u8>,
}

/// Attempts of one load before it counts as failed.
const LOAD_ATTEMPTS: usize = 3;
/// The pause between those attempts.
const LOAD_RETRY_PAUSE: Duration = Duration::from_millis(50);

impl FileWatcher {
    /// Loads the files once and starts refreshing them. Fails, with no
    /// credentials, when the first load fails.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime, as `tokio::spawn` does.
    pub async fn start(config: FileWatcherConfig) -> Result<Self, FileWatcherError> {
        let config = Arc::new(config);
        let Some((contents, (credentials, bundle))) = load(&config, None).await? else {
            return Err(error("nothing was read".to_owned()));
        };
        debug!(id = %credentials.id(), "credentials loaded from files");
        let store = Arc::new(CredentialStore::new(credentials, bundle));
        let stats = Arc::new(FileWatcherStats::default());
        stats.updates.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(refresh(
            Arc::clone(&config),
            contents,
            Arc::clone(&store),
            Arc::clone(&stats),
        ));
        Ok(Self { store, stats, task })
    }

    /// The store the files feed: build TLS configs from it
    /// ([`crate::tls::server_config`], [`crate::tls::client_config`]).
    pub fn store(&self) -> &Arc<CredentialStore> {
        &self.store
    }

    /// Load counters.
    pub fn stats(&self) -> &FileWatcherStats {
        &self.stats
    }
}

async fn refresh(
    config: Arc<FileWatcherConfig>,
    mut last: Contents,
    store: Arc<CredentialStore>,
    stats: Arc<FileWatcherStats>,
) {
    let period = config.refresh_interval;
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match load(&config, Some(&last)).await {
            Ok(None) => {}
            Ok(Some((contents, (credentials, bundle)))) => {
                debug!(id = %credentials.id(), "credentials reloaded from files");
                store.set(credentials, bundle);
                last = contents;
                stats.updates.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                warn!(%error, "credential reload failed; keeping the previous credentials");
            }
        }
    }
}

/// Reads and validates the files, retrying a read that changed under it
/// or did not validate (see the module docs). `None` when the bytes are
/// those of `last`.
async fn load(
    config: &Arc<FileWatcherConfig>,
    last: Option<&Contents>,
) -> Result<Option<(Contents, (Credentials, TrustBundle))>, FileWatcherError> {
    let mut attempt = 1;
    loop {
        let result = match read(config).await {
            Ok(contents) if last == Some(&contents) => return Ok(None),
            Ok(contents) => parse(config, &contents).map(|parsed| Some((contents, parsed))),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if attempt < LOAD_ATTEMPTS => {
                debug!(attempt, error = %e, "credential files not usable yet; reading again");
                attempt += 1;
                tokio::time::sleep(LOAD_RETRY_PAUSE).await;
            }
            result => return result,
        }
    }
}

/// One read of the three files; an error if the certificate or key
/// changed while being read.
async fn read(config: &Arc<FileWatcherConfig>) -> Result<Contents, FileWatcherError> {
    let config = Arc::clone(config);
    tokio::task::spawn_blocking(move || {
        let contents = Contents {
            cert: read_file(&config.certificate_file)?,
            key: read_file(&config.private_key_file)?,
            roots: read_file(config.roots.path())?,
        };
        let stable = read_file(&config.certificate_file)? == contents.cert
            && read_file(&config.private_key_file)? == contents.key;
        if !stable {
            return Err(error(
                "the certificate or key file changed while being read".to_owned(),
            ));
        }
        Ok(contents)
    })
    .await
    .map_err(|e| error(format!("the read task failed: {e}")))?
}

fn read_file(path: &Path) -> Result<Vec<u8>, FileWatcherError> {
    std::fs::read(path).map_err(|e| error(format!("reading {}: {e}", path.display())))
}

fn text<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, FileWatcherError> {
    std::str::from_utf8(bytes)
        .map_err(|_| error(format!("{} is not text (PEM or JSON)", path.display())))
}

/// Validates what was read: the SVID and its key, then the roots.
fn parse(
    config: &FileWatcherConfig,
    contents: &Contents,
) -> Result<(Credentials, TrustBundle), FileWatcherError> {
    let cert = text(&contents.cert, &config.certificate_file)?;
    let key = text(&contents.key, &config.private_key_file)?;
    let credentials = Credentials::from_pem(cert, key).map_err(|e| {
        error(format!(
            "{} with {}: {e}",
            config.certificate_file.display(),
            config.private_key_file.display()
        ))
    })?;
    let path = config.roots.path();
    let roots = text(&contents.roots, path)?;
    let bundle = match &config.roots {
        Roots::CaCertificate(_) => {
            TrustBundle::new().with_pem_roots(credentials.id().trust_domain(), roots)
        }
        Roots::SpiffeBundleMap(_) => TrustBundle::from_spiffe_bundle_map(roots),
    }
    .map_err(|e| error(format!("{}: {e}", path.display())))?;
    Ok((credentials, bundle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{IssuedLeaf, TestCa};
    use base64::Engine as _;

    const ID: &str = "spiffe://cluster.local/ns/default/sa/server";

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, contents: &str) {
            std::fs::write(self.path(name), contents).unwrap();
        }

        fn write_leaf(&self, leaf: &IssuedLeaf) {
            self.write("cert.pem", &leaf.cert_pem);
            self.write("key.pem", &leaf.key_pem);
        }

        fn config(&self) -> FileWatcherConfig {
            FileWatcherConfig::new(
                self.path("cert.pem"),
                self.path("key.pem"),
                self.path("ca.pem"),
            )
            .with_refresh_interval(Duration::from_secs(10))
        }
    }

    fn leaf_der(store: &CredentialStore) -> Vec<u8> {
        store.certified_key().unwrap().cert[0].to_vec()
    }

    fn setup() -> (TestCa, Files, IssuedLeaf) {
        let ca = TestCa::new("cluster.local").unwrap();
        let files = Files::new();
        let leaf = ca.leaf(ID).issue().unwrap();
        files.write_leaf(&leaf);
        files.write("ca.pem", ca.root_pem());
        (ca, files, leaf)
    }

    /// Waits past one refresh on the paused clock.
    async fn next_refresh() {
        tokio::time::sleep(Duration::from_secs(11)).await;
    }

    #[test]
    fn the_default_refresh_interval_is_the_file_watcher_plugins() {
        let config = FileWatcherConfig::new("c", "k", "ca");
        assert_eq!(config.refresh_interval(), Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn loads_the_files_and_picks_up_a_rotation_at_the_next_refresh() {
        let (ca, files, first) = setup();
        let watcher = FileWatcher::start(files.config()).await.unwrap();
        let store = Arc::clone(watcher.store());
        assert_eq!(store.id().unwrap().to_string(), ID);
        assert_eq!(leaf_der(&store), first.chain[0].to_vec());
        assert!(store.bundle().roots("cluster.local").is_some());

        let second = ca.leaf(ID).issue().unwrap();
        files.write_leaf(&second);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            leaf_der(&store),
            first.chain[0].to_vec(),
            "not before the refresh"
        );
        next_refresh().await;
        assert_eq!(leaf_der(&store), second.chain[0].to_vec());
        assert_eq!(
            (watcher.stats().updates(), watcher.stats().failures()),
            (2, 0)
        );

        // Unchanged files are not reloaded.
        next_refresh().await;
        assert_eq!(watcher.stats().updates(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_load_fails_closed() {
        let (ca, files, _) = setup();
        let mut missing = files.config();
        missing.certificate_file = files.path("absent.pem");
        let e = FileWatcher::start(missing).await.unwrap_err();
        assert!(e.reason().contains("absent.pem"), "{e}");

        // A key that is not the certificate's.
        let other = ca.leaf(ID).issue().unwrap();
        files.write("key.pem", &other.key_pem);
        let e = FileWatcher::start(files.config()).await.unwrap_err();
        assert!(e.reason().contains("does not fit"), "{e}");

        // Roots that are not PEM.
        let (_, files, _) = setup();
        files.write("ca.pem", "not a certificate");
        assert!(FileWatcher::start(files.config()).await.is_err());

        // A leaf that is not an SVID.
        let (ca, files, _) = setup();
        files.write_leaf(&ca.leaf("https://example.com/x").issue().unwrap());
        let e = FileWatcher::start(files.config()).await.unwrap_err();
        assert!(e.reason().contains("cert.pem"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reload_keeps_the_previous_credentials_until_the_files_are_fixed() {
        let (ca, files, first) = setup();
        let watcher = FileWatcher::start(files.config()).await.unwrap();
        let store = Arc::clone(watcher.store());

        // Caught between the two writes of a rotation: new cert, old key.
        let second = ca.leaf(ID).issue().unwrap();
        files.write("cert.pem", &second.cert_pem);
        next_refresh().await;
        assert_eq!(leaf_der(&store), first.chain[0].to_vec());
        assert_eq!(watcher.stats().failures(), 1);

        // A truncated key, then a missing one.
        files.write("key.pem", "-----BEGIN PRIVATE KEY-----\n");
        next_refresh().await;
        std::fs::remove_file(files.path("key.pem")).unwrap();
        next_refresh().await;
        assert_eq!(leaf_der(&store), first.chain[0].to_vec());
        assert_eq!(watcher.stats().failures(), 3);

        // The writer finishes: the next refresh takes the new pair.
        files.write("key.pem", &second.key_pem);
        next_refresh().await;
        assert_eq!(leaf_der(&store), second.chain[0].to_vec());
        assert_eq!(watcher.stats().updates(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_caught_between_a_writers_two_files_retries_and_succeeds() {
        let (ca, files, _) = setup();
        let watcher = FileWatcher::start(files.config()).await.unwrap();
        let second = ca.leaf(ID).issue().unwrap();
        // The certificate now; the key 20 ms after the refresh has started.
        files.write("cert.pem", &second.cert_pem);
        let key_path = files.path("key.pem");
        let key_pem = second.key_pem.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10_020)).await;
            std::fs::write(key_path, key_pem).unwrap();
        });
        next_refresh().await;
        writer.await.unwrap();
        assert_eq!(leaf_der(watcher.store()), second.chain[0].to_vec());
        assert_eq!(
            (watcher.stats().updates(), watcher.stats().failures()),
            (2, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_roots_from_a_spiffe_bundle_map() {
        let (_, files, _) = setup();
        let other = TestCa::new("other.example").unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(other.root_der());
        files.write(
            "bundle.json",
            &format!(
                r#"{{"trust_domains": {{"other.example": {{"keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{x5c}"]}}]}}}}}}"#
            ),
        );
        let config = files
            .config()
            .with_spiffe_trust_bundle_map_file(files.path("bundle.json"));
        let watcher = FileWatcher::start(config).await.unwrap();
        let bundle = watcher.store().bundle();
        assert!(bundle.roots("other.example").is_some());
        assert!(
            bundle.roots("cluster.local").is_none(),
            "the map replaces the CA file"
        );

        files.write("bundle.json", "{}");
        next_refresh().await;
        assert_eq!(
            watcher.stats().failures(),
            1,
            "a bad map is a failed reload"
        );
        assert!(watcher.store().bundle().roots("other.example").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_watcher_stops_the_refreshes() {
        let (ca, files, first) = setup();
        let watcher = FileWatcher::start(files.config()).await.unwrap();
        let store = Arc::clone(watcher.store());
        drop(watcher);
        files.write_leaf(&ca.leaf(ID).issue().unwrap());
        next_refresh().await;
        next_refresh().await;
        assert_eq!(leaf_der(&store), first.chain[0].to_vec());
    }
}
