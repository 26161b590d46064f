//! What the ADS client is configured with: the servers in priority order,
//! the node it identifies as, and its timers.
//!
//! [`ClientConfig`] is what gRPC's bootstrap file describes (gRFC A27,
//! A71); the `bootstrap` module reads that file into it, code can build one
//! directly.

use std::path::PathBuf;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;

/// How the ADS client connects and behaves.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// The management servers in priority order: the first is the primary,
    /// the others are fallbacks (gRFC A71).
    pub servers: Vec<ServerConfig>,
    /// The node the client identifies as; sent in the first request of
    /// every stream (A1.1).
    pub node: Node,
    /// How long a requested resource may stay unanswered on a connected
    /// stream before it is declared not to exist: 15 s (gRFC A57, Envoy's
    /// recommendation), 30 s with `resource_timer_is_transient_error`
    /// (gRFC A88).
    pub resource_timeout: Duration,
    /// Connect timeout of a management-server connection (a blackholed
    /// server must not stall startup silently).
    pub connect_timeout: Duration,
    /// Reconnection backoff.
    pub backoff: BackoffConfig,
    /// The listener names the process needs from the start (the
    /// `xds:///<name>` targets it calls); more can be watched later.
    pub listeners: Vec<String>,
    /// The template of the server-side listener resource name, with `%s`
    /// replaced by `<ip>:<port>` (bootstrap
    /// `server_listener_resource_name_template`; Istio's agent writes
    /// `xds.istio.io/grpc/lds/inbound/%s`).
    pub server_listener_resource_name_template: Option<String>,
    /// The bootstrap's certificate-provider instances (name → config).
    pub certificate_providers: Vec<CertificateProvider>,
    /// The template of the listener resource name of an `xds:///<target>`
    /// client (bootstrap `client_default_listener_resource_name_template`,
    /// gRFC A47): `%s` is replaced by the target, percent-encoded when the
    /// template is an `xdstp://` name. `None` means `%s`: the listener is
    /// named as the target, which is what istiod serves.
    pub client_default_listener_resource_name_template: Option<String>,
    /// The bootstrap's `authorities` (gRFC A47), for `xds://<authority>/…`
    /// targets. They share the top-level servers: one ADS connection per
    /// process.
    pub authorities: Vec<Authority>,
    /// The bound on the rate of requests sent to the management server
    /// (rule A1.14; Envoy's `ApiConfigSource.rate_limit_settings`). On by
    /// default ([`RateLimitSettings::default`]); `None` sends without a
    /// bound.
    pub request_rate_limit: Option<RateLimitSettings>,
}

/// A token bucket on the requests the ADS client sends (Envoy's
/// `envoy.config.core.v3.RateLimitSettings`): the bucket holds at most
/// `max_tokens`, refills at `fill_rate` tokens per second, and each request
/// takes one. Requests that find it empty wait, one per type (a newer
/// request of a type replaces the waiting one: it carries the latest
/// version, nonce and names), and go as tokens return.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitSettings {
    /// The burst size (Envoy's default: 100).
    pub max_tokens: u32,
    /// Tokens per second (Envoy's default: 10).
    pub fill_rate: f64,
}

impl RateLimitSettings {
    /// Envoy's values for an empty `rate_limit_settings`: 100 tokens, 10
    /// per second.
    pub fn envoy() -> Self {
        Self {
            max_tokens: 100,
            fill_rate: 10.0,
        }
    }
}

impl Default for RateLimitSettings {
    /// 100 tokens, 100 per second. Envoy's burst; a higher rate than
    /// Envoy's 10/s because the bound is here to stop runaway exchanges (a
    /// server answering every request with a new response), not to pace a
    /// healthy one: istiod pushes at most every 100 ms by default
    /// (`PILOT_DEBOUNCE_AFTER`), and one push of a whole cascade costs up to
    /// 4 ACKs and 4 subscription changes, 80 requests a second.
    fn default() -> Self {
        Self {
            max_tokens: 100,
            fill_rate: 100.0,
        }
    }
}

/// An authority of the bootstrap (gRFC A47): where the listener of an
/// `xds://<name>/<target>` client is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// The authority name, as in the target URI.
    pub name: String,
    /// `client_listener_resource_name_template`; starts with
    /// `xdstp://<name>/` (default
    /// `xdstp://<name>/envoy.config.listener.v3.Listener/%s`).
    pub client_listener_resource_name_template: String,
}

/// A target that names no listener the bootstrap can resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownAuthority(pub String);

impl std::fmt::Display for UnknownAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "xds target authority {:?} is not in the bootstrap's authorities",
            self.0
        )
    }
}

impl std::error::Error for UnknownAuthority {}

/// One management server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// `server_uri`, such as `istiod.istio-system.svc:15010` or
    /// `unix:///etc/istio/proxy/XDS` (a scheme-less authority means
    /// `http://` or `https://` per the credentials).
    pub uri: String,
    /// The channel credentials, the first supported of the bootstrap's
    /// `channel_creds` list.
    pub channel_creds: ChannelCreds,
    /// `server_features`.
    pub features: ServerFeatures,
    /// Which xDS variant to speak.
    pub protocol: Protocol,
}

/// Channel credentials for a management server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelCreds {
    /// `insecure`: plaintext.
    Insecure,
    /// `tls`: TLS with the given roots, and a client certificate for mTLS
    /// when both `certificate_file` and `private_key_file` are set.
    Tls {
        /// `ca_certificate_file`; `None` is not supported (there is no
        /// system root store here) and is rejected by the bootstrap reader.
        ca_certificate_file: PathBuf,
        /// `certificate_file`.
        certificate_file: Option<PathBuf>,
        /// `private_key_file`.
        private_key_file: Option<PathBuf>,
    },
}

/// The bootstrap's `server_features` that change client behaviour.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerFeatures {
    /// `ignore_resource_deletion` (gRFC A53).
    pub ignore_resource_deletion: bool,
    /// `fail_on_data_errors` (gRFC A88): data errors drop cached values.
    pub fail_on_data_errors: bool,
    /// `resource_timer_is_transient_error` (gRFC A88).
    pub resource_timer_is_transient_error: bool,
}

/// State-of-the-World or incremental ADS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// `StreamAggregatedResources`.
    #[default]
    StateOfTheWorld,
    /// `DeltaAggregatedResources` (bootstrap server feature `xds_delta`
    /// here, since gRPC's bootstrap has no field for it).
    Delta,
}

/// Exponential backoff with jitter between stream attempts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// First delay.
    pub base: Duration,
    /// Growth factor per failed attempt.
    pub multiplier: f64,
    /// Relative jitter, ± this fraction.
    pub jitter: f64,
    /// Upper bound.
    pub max: Duration,
}

impl Default for BackoffConfig {
    /// gRPC's connection backoff (grpc-go `backoff.DefaultConfig`): 1 s,
    /// ×1.6, ±20 %, at most 120 s.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
        }
    }
}

/// A certificate-provider instance of the bootstrap (gRFC A29).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateProvider {
    /// The instance name TLS contexts refer to.
    pub name: String,
    /// The plugin config.
    pub plugin: CertificatePlugin,
}

/// The certificate-provider plugins the mesh runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificatePlugin {
    /// `file_watcher`: PEM files re-read every `refresh_interval`.
    FileWatcher {
        /// `certificate_file`.
        certificate_file: Option<PathBuf>,
        /// `private_key_file`.
        private_key_file: Option<PathBuf>,
        /// `ca_certificate_file`.
        ca_certificate_file: Option<PathBuf>,
        /// `refresh_interval` (default 10 minutes).
        refresh_interval: Duration,
    },
}

/// The SDS secrets that carry the process's workload identity, as the
/// ADS client subscribes them into a
/// [`CredentialStore`](mesh_identity::CredentialStore)
/// ([`XdsClient::watch_identity`](crate::XdsClient::watch_identity)).
///
/// Istio's names are those istio-agent serves Envoy over SDS
/// (`pkg/security`: `WorkloadKeyCertResourceName` = `default`,
/// `RootCertReqResourceName` = `ROOTCA`): [`SdsIdentity::istio`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SdsIdentity {
    /// The `tls_certificate` secret: the workload's X.509-SVID chain and
    /// key.
    pub certificate: String,
    /// The `validation_context` secret: the roots of the trust domain.
    pub validation: String,
    /// The trust domain the roots are for; the certificate's SPIFFE ID must
    /// be in it.
    pub trust_domain: String,
}

impl SdsIdentity {
    /// The name of the workload certificate secret Istio serves: `default`.
    pub const ISTIO_CERTIFICATE: &'static str = "default";
    /// The name of the root secret Istio serves: `ROOTCA`.
    pub const ISTIO_ROOTS: &'static str = "ROOTCA";

    /// The secrets `certificate` and `validation`, the roots being those of
    /// `trust_domain`.
    pub fn new(
        certificate: impl Into<String>,
        validation: impl Into<String>,
        trust_domain: impl Into<String>,
    ) -> Self {
        Self {
            certificate: certificate.into(),
            validation: validation.into(),
            trust_domain: trust_domain.into(),
        }
    }

    /// Istio's secrets (`default` and `ROOTCA`) for `trust_domain`
    /// (`cluster.local` unless the mesh sets another).
    pub fn istio(trust_domain: impl Into<String>) -> Self {
        Self::new(Self::ISTIO_CERTIFICATE, Self::ISTIO_ROOTS, trust_domain)
    }
}

impl ClientConfig {
    /// A config for one plaintext SotW server at `uri`, identifying as
    /// `node_id`, with the default timers.
    pub fn new(uri: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            servers: vec![ServerConfig {
                uri: uri.into(),
                channel_creds: ChannelCreds::Insecure,
                features: ServerFeatures::default(),
                protocol: Protocol::StateOfTheWorld,
            }],
            node: Node {
                id: node_id.into(),
                user_agent_name: "rust-mesh".into(),
                ..Node::default()
            },
            resource_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            backoff: BackoffConfig::default(),
            listeners: Vec::new(),
            server_listener_resource_name_template: None,
            certificate_providers: Vec::new(),
            client_default_listener_resource_name_template: None,
            authorities: Vec::new(),
            request_rate_limit: Some(RateLimitSettings::default()),
        }
    }

    /// The listener resource name of the client target
    /// `xds://<authority>/<target>` (gRFC A47): an empty `authority`
    /// (`xds:///<target>`) uses
    /// [`client_default_listener_resource_name_template`](Self::client_default_listener_resource_name_template),
    /// a named one the template of that [`Authority`]. `%s` is replaced by
    /// `target`, percent-encoded (all but `/` and RFC 3986 path characters)
    /// when the template is an `xdstp:` name, as gRPC does.
    pub fn client_listener_name(
        &self,
        authority: &str,
        target: &str,
    ) -> Result<String, UnknownAuthority> {
        let template = if authority.is_empty() {
            self.client_default_listener_resource_name_template
                .as_deref()
                .unwrap_or("%s")
        } else {
            self.authorities
                .iter()
                .find(|a| a.name == authority)
                .map(|a| a.client_listener_resource_name_template.as_str())
                .ok_or_else(|| UnknownAuthority(authority.to_owned()))?
        };
        Ok(fill_template(template, target))
    }

    /// The listener resource name of a server listening on `addr`
    /// (`<ip>:<port>`, `[<ipv6>]:<port>`), from
    /// [`server_listener_resource_name_template`](Self::server_listener_resource_name_template)
    /// (gRFC A36); `None` without a template (gRPC then refuses to start an
    /// xDS server).
    pub fn server_listener_name(&self, addr: &str) -> Option<String> {
        self.server_listener_resource_name_template
            .as_deref()
            .map(|t| fill_template(t, addr))
    }
}

/// `template` with every `%s` replaced by `value`, percent-encoded for an
/// `xdstp:` template (gRFC A47 "xDS resource names in bootstrap").
fn fill_template(template: &str, value: &str) -> String {
    if template.starts_with("xdstp:") {
        template.replace("%s", &percent_encode_path(value))
    } else {
        template.replace("%s", value)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, the path
/// sub-delimiters gRPC leaves alone (`$ & + = : @`) and `/`.
fn percent_encode_path(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~$&+=:@/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_listener_names_follow_the_templates() {
        let mut c = ClientConfig::new("127.0.0.1:1", "n");
        assert_eq!(
            c.client_listener_name("", "reviews.default.svc.cluster.local:9080")
                .unwrap(),
            "reviews.default.svc.cluster.local:9080"
        );
        c.client_default_listener_resource_name_template =
            Some("xdstp://a/envoy.config.listener.v3.Listener/%s".into());
        assert_eq!(
            c.client_listener_name("", "svc a/b?c").unwrap(),
            "xdstp://a/envoy.config.listener.v3.Listener/svc%20a/b%3Fc"
        );
        c.authorities.push(Authority {
            name: "td".into(),
            client_listener_resource_name_template: "xdstp://td/L/%s".into(),
        });
        assert_eq!(
            c.client_listener_name("td", "x:1").unwrap(),
            "xdstp://td/L/x:1"
        );
        assert_eq!(
            c.client_listener_name("other", "x")
                .unwrap_err()
                .to_string(),
            "xds target authority \"other\" is not in the bootstrap's authorities"
        );
        assert_eq!(c.server_listener_name("0.0.0.0:8080"), None);
        c.server_listener_resource_name_template = Some("xds.istio.io/grpc/lds/inbound/%s".into());
        assert_eq!(
            c.server_listener_name("[::]:8080").unwrap(),
            "xds.istio.io/grpc/lds/inbound/[::]:8080"
        );
    }
}
