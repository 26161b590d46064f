//! gRPC's xDS bootstrap JSON, read into a [`ClientConfig`].
//!
//! A process finds its control plane the way gRPC does (gRPC
//! `doc/grpc_xds_bootstrap_format.md`, gRFC A27): the file named by
//! `GRPC_XDS_BOOTSTRAP`, else the JSON in `GRPC_XDS_BOOTSTRAP_CONFIG` (the
//! file wins when both are set; an empty variable counts as unset). Code
//! can also hand the JSON over with [`Bootstrap::parse`]. The bootstrap
//! Istio's agent writes for proxyless gRPC
//! (`pkg/istio-agent/grpcxds/grpc_bootstrap.go`) is read as is: one
//! `insecure` server at the agent's Unix socket, the node with Istio's
//! metadata, a `file_watcher` certificate provider named `default` over the
//! agent's `cert-chain.pem` / `key.pem` / `root-cert.pem`, and the inbound
//! listener template `xds.istio.io/grpc/lds/inbound/%s`.
//!
//! What is read:
//!
//! | field | becomes |
//! |---|---|
//! | `xds_servers[]` (`server_uri`, `channel_creds`, `server_features`) | [`ClientConfig::servers`], primary first (gRFC A71 fallback order) |
//! | `channel_creds` | the first supported entry: `insecure`, or `tls` (gRFC A65: `ca_certificate_file`, and `certificate_file` + `private_key_file` for mTLS); others such as `google_default` are skipped with a warning |
//! | `server_features` | `ignore_resource_deletion` (A53), `fail_on_data_errors` and `resource_timer_is_transient_error` (A88; the latter makes the does-not-exist timer 30 s), `xds_v3` (the only version spoken); and `xds_delta`, ours, to speak incremental ADS since gRPC's bootstrap has no field for it |
//! | `node` (`id`, `cluster`, `locality`, `metadata`) | [`ClientConfig::node`], metadata as a `google.protobuf.Struct` |
//! | `certificate_providers` (`file_watcher`) | [`ClientConfig::certificate_providers`] (gRFC A29), `refresh_interval` a protobuf JSON duration such as `"600s"` |
//! | `server_listener_resource_name_template` | gRFC A36 |
//! | `client_default_listener_resource_name_template`, `authorities` | gRFC A47 |
//!
//! Errors name the place and the value, as `bootstrap.json:
//! xds_servers[0].channel_creds: no supported type in ["google_default"]`.
//! Fields that are not applied are reported in [`Bootstrap::warnings`] (and
//! logged), never dropped silently; settings that would change whom the
//! client trusts and that cannot be honoured are errors: `tls` credentials
//! without `ca_certificate_file` (there is no system root store here), a
//! certificate without its key, a `file_watcher` with a SPIFFE bundle map
//! (gRFC A87), an authority with servers of its own (one ADS connection per
//! process serves every authority).

use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node, node::UserAgentVersionType};
use envoy_types::pb::google::protobuf::{ListValue, NullValue, Struct, Value, value::Kind};
use mesh_core::{FieldPath, InvalidConfig};
use serde_json::{Map, Value as Json};

use crate::config::{
    Authority, CertificatePlugin, CertificateProvider, ChannelCreds, ClientConfig, Protocol,
    ServerConfig, ServerFeatures,
};

/// The environment variable naming the bootstrap file.
pub const BOOTSTRAP_FILE_ENV: &str = "GRPC_XDS_BOOTSTRAP";
/// The environment variable holding the bootstrap JSON itself.
pub const BOOTSTRAP_CONFIG_ENV: &str = "GRPC_XDS_BOOTSTRAP_CONFIG";

/// The server feature that selects incremental (delta) ADS. gRPC's
/// bootstrap has no such field; other clients ignore unknown features, so
/// one file can serve both.
pub const DELTA_FEATURE: &str = "xds_delta";

/// The does-not-exist timer (gRFC A57, Envoy's 15 s recommendation).
const RESOURCE_TIMEOUT: Duration = Duration::from_secs(15);
/// The timer with `resource_timer_is_transient_error` (gRFC A88).
const TRANSIENT_RESOURCE_TIMEOUT: Duration = Duration::from_secs(30);
/// `file_watcher`'s default `refresh_interval` (gRFC A29).
const DEFAULT_REFRESH: Duration = Duration::from_secs(600);

/// A bootstrap that was read: the client config, and what in it is not
/// applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrap {
    /// The ADS client's config.
    pub config: ClientConfig,
    /// Fields that are set but not applied, each as `<path>: <why>` (also
    /// logged at WARN while reading).
    pub warnings: Vec<String>,
}

/// A bootstrap that cannot be used: where it came from, the place in it
/// and what is wrong.
///
/// Displays as `<origin>: <path>: <message>`, for example
/// `/etc/istio/grpc-bootstrap.json: node.metadata: expected an object, got 3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidBootstrap {
    origin: String,
    error: InvalidConfig,
}

impl InvalidBootstrap {
    fn new(origin: &str, error: InvalidConfig) -> Self {
        Self {
            origin: origin.to_owned(),
            error,
        }
    }

    /// Where the bootstrap came from: the file path, the environment
    /// variable, or the origin given to [`Bootstrap::parse`].
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The place in the JSON and the reason.
    pub fn error(&self) -> &InvalidConfig {
        &self.error
    }
}

impl std::fmt::Display for InvalidBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.origin, self.error)
    }
}

impl std::error::Error for InvalidBootstrap {}

impl Bootstrap {
    /// Reads the bootstrap from `GRPC_XDS_BOOTSTRAP` (a file path) or else
    /// `GRPC_XDS_BOOTSTRAP_CONFIG` (the JSON), as gRPC does.
    pub fn from_env() -> Result<Self, InvalidBootstrap> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the environment read through
    /// `lookup`, for tests and for programs that keep their own
    /// environment.
    pub fn from_env_with(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, InvalidBootstrap> {
        let set = |name| lookup(name).filter(|v: &String| !v.is_empty());
        if let Some(path) = set(BOOTSTRAP_FILE_ENV) {
            return Self::from_file(path);
        }
        if let Some(json) = set(BOOTSTRAP_CONFIG_ENV) {
            return Self::parse(BOOTSTRAP_CONFIG_ENV, &json);
        }
        Err(InvalidBootstrap::new(
            "xds bootstrap",
            InvalidConfig::new(
                FieldPath::root(),
                format!("neither {BOOTSTRAP_FILE_ENV} nor {BOOTSTRAP_CONFIG_ENV} is set"),
            ),
        ))
    }

    /// Reads the bootstrap file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, InvalidBootstrap> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let json = std::fs::read_to_string(path).map_err(|e| {
            InvalidBootstrap::new(
                &origin,
                InvalidConfig::new(FieldPath::root(), format!("cannot read the file: {e}")),
            )
        })?;
        Self::parse(&origin, &json)
    }

    /// Reads bootstrap `json`; `origin` names it in errors and warnings.
    pub fn parse(origin: &str, json: &str) -> Result<Self, InvalidBootstrap> {
        let value: Json = serde_json::from_str(json).map_err(|e| {
            InvalidBootstrap::new(
                origin,
                InvalidConfig::new(FieldPath::root(), format!("invalid JSON: {e}")),
            )
        })?;
        let mut reader = Reader::default();
        let config = reader
            .bootstrap(&value)
            .map_err(|e| InvalidBootstrap::new(origin, e))?;
        for w in &reader.warnings {
            tracing::warn!(origin, warning = %w, "xds bootstrap field not applied");
        }
        Ok(Self {
            config,
            warnings: reader.warnings,
        })
    }
}

// === the reader ===

type Result<T, E = InvalidConfig> = std::result::Result<T, E>;

#[derive(Default)]
struct Reader {
    warnings: Vec<String>,
}

/// A JSON value for an error message, shortened.
fn show(v: &Json) -> String {
    let mut s = v.to_string();
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn err(path: &FieldPath, message: impl Into<String>) -> InvalidConfig {
    InvalidConfig::new(path.clone(), message)
}

fn object<'a>(v: &'a Json, path: &FieldPath) -> Result<&'a Map<String, Json>> {
    v.as_object()
        .ok_or_else(|| err(path, format!("expected an object, got {}", show(v))))
}

fn string<'a>(v: &'a Json, path: &FieldPath) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| err(path, format!("expected a string, got {}", show(v))))
}

fn array<'a>(v: &'a Json, path: &FieldPath) -> Result<&'a Vec<Json>> {
    v.as_array()
        .ok_or_else(|| err(path, format!("expected a list, got {}", show(v))))
}

/// An optional string field; `null` counts as absent.
fn opt_string<'a>(
    map: &'a Map<String, Json>,
    key: &str,
    path: &FieldPath,
) -> Result<Option<&'a str>> {
    match map.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => string(v, &path.field(key)).map(Some),
    }
}

/// An optional non-empty file path.
fn opt_path(map: &Map<String, Json>, key: &str, path: &FieldPath) -> Result<Option<PathBuf>> {
    match opt_string(map, key, path)? {
        None => Ok(None),
        Some("") => Err(err(&path.field(key), "must not be empty")),
        Some(s) => Ok(Some(PathBuf::from(s))),
    }
}

/// A map's entries sorted by key, whatever order serde_json keeps.
fn sorted(map: &Map<String, Json>) -> Vec<(&String, &Json)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// A protobuf JSON duration (`"600s"`, `"1.5s"`; proto3 JSON mapping).
fn duration(v: &Json, path: &FieldPath) -> Result<Duration> {
    let s = string(v, path)?;
    let bad = || {
        err(
            path,
            format!("expected a duration such as \"600s\", got {}", show(v)),
        )
    };
    if s.starts_with('-') {
        return Err(err(path, format!("must not be negative, got {}", show(v))));
    }
    let body = s.strip_suffix('s').ok_or_else(bad)?;
    let (secs, frac) = body.split_once('.').unwrap_or((body, ""));
    if (secs.is_empty() && frac.is_empty())
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(bad());
    }
    let secs: u64 = if secs.is_empty() {
        0
    } else {
        secs.parse().map_err(|_| bad())?
    };
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(Duration::new(secs, nanos))
}

/// A JSON value as a `google.protobuf.Value`.
fn proto_value(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(NullValue::NullValue as i32),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(proto_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(proto_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// A JSON object as a `google.protobuf.Struct`.
fn proto_struct(map: &Map<String, Json>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), proto_value(v)))
            .collect(),
    }
}

impl Reader {
    fn warn(&mut self, path: &FieldPath, message: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {message}"));
    }

    /// Reports the keys of `map` that are not in `known`.
    fn unknown_fields(&mut self, map: &Map<String, Json>, path: &FieldPath, known: &[&str]) {
        for (key, _) in sorted(map) {
            if !known.contains(&key.as_str()) {
                self.warn(&path.field(key), "unknown field, ignored");
            }
        }
    }

    fn bootstrap(&mut self, v: &Json) -> Result<ClientConfig> {
        let root = FieldPath::root();
        let map = object(v, &root)?;
        self.unknown_fields(
            map,
            &root,
            &[
                "xds_servers",
                "node",
                "certificate_providers",
                "server_listener_resource_name_template",
                "client_default_listener_resource_name_template",
                "authorities",
            ],
        );
        let servers_path = root.field("xds_servers");
        let servers = match map.get("xds_servers") {
            None | Some(Json::Null) => return Err(err(&servers_path, "required")),
            Some(v) => self.servers(v, &servers_path)?,
        };
        if servers.is_empty() {
            return Err(err(&servers_path, "must list at least one server"));
        }
        let first = servers
            .first()
            .map(|s| s.features.clone())
            .unwrap_or_default();
        let mut config = ClientConfig::new("", "");
        config.resource_timeout = if first.resource_timer_is_transient_error {
            TRANSIENT_RESOURCE_TIMEOUT
        } else {
            RESOURCE_TIMEOUT
        };
        config.node = match map.get("node") {
            None | Some(Json::Null) => self.node(&Map::new(), &root.field("node"))?,
            Some(v) => self.node(object(v, &root.field("node"))?, &root.field("node"))?,
        };
        if let Some(v) = map.get("certificate_providers").filter(|v| !v.is_null()) {
            config.certificate_providers =
                self.certificate_providers(v, &root.field("certificate_providers"))?;
        }
        config.server_listener_resource_name_template =
            opt_string(map, "server_listener_resource_name_template", &root)?.map(str::to_owned);
        config.client_default_listener_resource_name_template =
            opt_string(map, "client_default_listener_resource_name_template", &root)?
                .map(str::to_owned);
        if let Some(v) = map.get("authorities").filter(|v| !v.is_null()) {
            config.authorities = self.authorities(v, &root.field("authorities"), &servers)?;
        }
        config.servers = servers;
        Ok(config)
    }

    fn servers(&mut self, v: &Json, path: &FieldPath) -> Result<Vec<ServerConfig>> {
        array(v, path)?
            .iter()
            .enumerate()
            .map(|(i, s)| self.server(s, &path.index(i)))
            .collect()
    }

    fn server(&mut self, v: &Json, path: &FieldPath) -> Result<ServerConfig> {
        let map = object(v, path)?;
        self.unknown_fields(
            map,
            path,
            &["server_uri", "channel_creds", "server_features"],
        );
        let uri = match opt_string(map, "server_uri", path)? {
            None => return Err(err(&path.field("server_uri"), "required")),
            Some("") => return Err(err(&path.field("server_uri"), "must not be empty")),
            Some(uri) => uri.to_owned(),
        };
        let creds_path = path.field("channel_creds");
        let channel_creds = match map.get("channel_creds") {
            None | Some(Json::Null) => return Err(err(&creds_path, "required")),
            Some(v) => self.channel_creds(v, &creds_path)?,
        };
        let (features, protocol) = match map.get("server_features") {
            None | Some(Json::Null) => (ServerFeatures::default(), Protocol::StateOfTheWorld),
            Some(v) => self.server_features(v, &path.field("server_features"))?,
        };
        Ok(ServerConfig {
            uri,
            channel_creds,
            features,
            protocol,
        })
    }

    /// The first supported entry; the ones before it are reported.
    fn channel_creds(&mut self, v: &Json, path: &FieldPath) -> Result<ChannelCreds> {
        let list = array(v, path)?;
        let mut unsupported = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let at = path.index(i);
            let map = object(entry, &at)?;
            self.unknown_fields(map, &at, &["type", "config"]);
            let kind =
                opt_string(map, "type", &at)?.ok_or_else(|| err(&at.field("type"), "required"))?;
            let config = map.get("config").filter(|c| !c.is_null());
            match kind {
                "insecure" => {
                    if let Some(c) = config
                        && !object(c, &at.field("config"))?.is_empty()
                    {
                        self.warn(&at.field("config"), "insecure takes no config, ignored");
                    }
                    self.skipped(&unsupported, path);
                    return Ok(ChannelCreds::Insecure);
                }
                "tls" => {
                    let empty = Map::new();
                    let c = match config {
                        Some(c) => object(c, &at.field("config"))?,
                        None => &empty,
                    };
                    let creds = self.tls_creds(c, &at.field("config"))?;
                    self.skipped(&unsupported, path);
                    return Ok(creds);
                }
                other => unsupported.push(other.to_owned()),
            }
        }
        Err(err(
            path,
            format!(
                "no supported type in {} (supported: insecure, tls)",
                Json::from(unsupported)
            ),
        ))
    }

    fn skipped(&mut self, unsupported: &[String], path: &FieldPath) {
        for kind in unsupported {
            self.warn(
                path,
                format!("channel credentials type {kind:?} is not supported, skipped"),
            );
        }
    }

    /// gRFC A65 `tls` channel credentials.
    fn tls_creds(&mut self, map: &Map<String, Json>, path: &FieldPath) -> Result<ChannelCreds> {
        self.unknown_fields(
            map,
            path,
            &[
                "ca_certificate_file",
                "certificate_file",
                "private_key_file",
                "refresh_interval",
            ],
        );
        let ca_certificate_file = opt_path(map, "ca_certificate_file", path)?.ok_or_else(|| {
            err(
                &path.field("ca_certificate_file"),
                "required: the mesh has no system root store to verify the server with",
            )
        })?;
        let certificate_file = opt_path(map, "certificate_file", path)?;
        let private_key_file = opt_path(map, "private_key_file", path)?;
        cert_and_key(&certificate_file, &private_key_file, path)?;
        if let Some(v) = map.get("refresh_interval").filter(|v| !v.is_null()) {
            duration(v, &path.field("refresh_interval"))?;
            self.warn(
                &path.field("refresh_interval"),
                "not supported for the control-plane connection, ignored",
            );
        }
        Ok(ChannelCreds::Tls {
            ca_certificate_file,
            certificate_file,
            private_key_file,
        })
    }

    fn server_features(
        &mut self,
        v: &Json,
        path: &FieldPath,
    ) -> Result<(ServerFeatures, Protocol)> {
        let mut features = ServerFeatures::default();
        let mut protocol = Protocol::StateOfTheWorld;
        for (i, f) in array(v, path)?.iter().enumerate() {
            match string(f, &path.index(i))? {
                // v3 is the only transport version spoken.
                "xds_v3" => {}
                "ignore_resource_deletion" => features.ignore_resource_deletion = true,
                "fail_on_data_errors" => features.fail_on_data_errors = true,
                "resource_timer_is_transient_error" => {
                    features.resource_timer_is_transient_error = true;
                }
                DELTA_FEATURE => protocol = Protocol::Delta,
                "trusted_xds_server" => self.warn(
                    &path.index(i),
                    "trusted_xds_server (gRFC A81 authority rewriting) is not supported, ignored",
                ),
                other => self.warn(
                    &path.index(i),
                    format!("unknown server feature {other:?}, ignored"),
                ),
            }
        }
        Ok((features, protocol))
    }

    fn node(&mut self, map: &Map<String, Json>, path: &FieldPath) -> Result<Node> {
        for (key, value) in sorted(map) {
            match key.as_str() {
                "id" | "cluster" | "locality" | "metadata" => {}
                // Go's encoding/json of Envoy's Node, as Istio's agent
                // writes it, spells out the unset oneof as null.
                "UserAgentVersionType" if value.is_null() => {}
                "user_agent_name"
                | "user_agent_version"
                | "user_agent_build_version"
                | "client_features"
                | "extensions"
                | "listening_addresses" => self.warn(
                    &path.field(key),
                    "set by the client, not by the bootstrap; ignored",
                ),
                _ => self.warn(&path.field(key), "unknown field, ignored"),
            }
        }
        let mut node = Node {
            id: opt_string(map, "id", path)?.unwrap_or_default().to_owned(),
            cluster: opt_string(map, "cluster", path)?
                .unwrap_or_default()
                .to_owned(),
            user_agent_name: "rust-mesh".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            )),
            ..Node::default()
        };
        if let Some(v) = map.get("locality").filter(|v| !v.is_null()) {
            let at = path.field("locality");
            let l = object(v, &at)?;
            let mut locality = Locality::default();
            for (key, _) in sorted(l) {
                let field = match key.as_str() {
                    "region" => &mut locality.region,
                    "zone" => &mut locality.zone,
                    // proto3 JSON accepts the field name and its lowerCamel form.
                    "sub_zone" | "subZone" => &mut locality.sub_zone,
                    _ => {
                        self.warn(&at.field(key), "unknown field, ignored");
                        continue;
                    }
                };
                *field = opt_string(l, key, &at)?.unwrap_or_default().to_owned();
            }
            node.locality = Some(locality);
        }
        if let Some(v) = map.get("metadata").filter(|v| !v.is_null()) {
            node.metadata = Some(proto_struct(object(v, &path.field("metadata"))?));
        }
        Ok(node)
    }

    fn certificate_providers(
        &mut self,
        v: &Json,
        path: &FieldPath,
    ) -> Result<Vec<CertificateProvider>> {
        let mut out = Vec::new();
        for (name, entry) in sorted(object(v, path)?) {
            let at = path.key(name);
            let map = object(entry, &at)?;
            self.unknown_fields(map, &at, &["plugin_name", "config"]);
            let plugin = opt_string(map, "plugin_name", &at)?
                .ok_or_else(|| err(&at.field("plugin_name"), "required"))?;
            if plugin != "file_watcher" {
                self.warn(
                    &at.field("plugin_name"),
                    format!(
                        "plugin {plugin:?} is not supported, instance skipped: TLS contexts \
                         that use instance {name:?} are rejected"
                    ),
                );
                continue;
            }
            let empty = Map::new();
            let config = match map.get("config").filter(|c| !c.is_null()) {
                Some(c) => object(c, &at.field("config"))?,
                None => &empty,
            };
            out.push(CertificateProvider {
                name: name.clone(),
                plugin: self.file_watcher(config, &at.field("config"))?,
            });
        }
        Ok(out)
    }

    /// gRFC A29 `file_watcher`.
    fn file_watcher(
        &mut self,
        map: &Map<String, Json>,
        path: &FieldPath,
    ) -> Result<CertificatePlugin> {
        self.unknown_fields(
            map,
            path,
            &[
                "certificate_file",
                "private_key_file",
                "ca_certificate_file",
                "refresh_interval",
                "spiffe_trust_bundle_map_file",
            ],
        );
        if map
            .get("spiffe_trust_bundle_map_file")
            .is_some_and(|v| !v.is_null())
        {
            return Err(err(
                &path.field("spiffe_trust_bundle_map_file"),
                "SPIFFE trust bundle maps (gRFC A87) are not supported here; \
                 use ca_certificate_file",
            ));
        }
        let certificate_file = opt_path(map, "certificate_file", path)?;
        let private_key_file = opt_path(map, "private_key_file", path)?;
        let ca_certificate_file = opt_path(map, "ca_certificate_file", path)?;
        cert_and_key(&certificate_file, &private_key_file, path)?;
        if certificate_file.is_none() && ca_certificate_file.is_none() {
            return Err(err(
                path,
                "at least one of certificate_file and ca_certificate_file is required",
            ));
        }
        let refresh_interval = match map.get("refresh_interval").filter(|v| !v.is_null()) {
            None => DEFAULT_REFRESH,
            Some(v) => {
                let at = path.field("refresh_interval");
                let d = duration(v, &at)?;
                if d.is_zero() {
                    return Err(err(&at, "must be positive"));
                }
                d
            }
        };
        Ok(CertificatePlugin::FileWatcher {
            certificate_file,
            private_key_file,
            ca_certificate_file,
            refresh_interval,
        })
    }

    fn authorities(
        &mut self,
        v: &Json,
        path: &FieldPath,
        top_servers: &[ServerConfig],
    ) -> Result<Vec<Authority>> {
        let mut out = Vec::new();
        for (name, entry) in sorted(object(v, path)?) {
            let at = path.key(name);
            let map = object(entry, &at)?;
            self.unknown_fields(
                map,
                &at,
                &["client_listener_resource_name_template", "xds_servers"],
            );
            let prefix = format!("xdstp://{name}/");
            let template = match opt_string(map, "client_listener_resource_name_template", &at)? {
                None => format!("{prefix}envoy.config.listener.v3.Listener/%s"),
                Some(t) if t.starts_with(&prefix) => t.to_owned(),
                Some(t) => {
                    return Err(err(
                        &at.field("client_listener_resource_name_template"),
                        format!("{t:?} must start with {prefix:?}"),
                    ));
                }
            };
            if let Some(v) = map.get("xds_servers").filter(|v| !v.is_null()) {
                let sp = at.field("xds_servers");
                let servers = self.servers(v, &sp)?;
                if !servers.is_empty() && servers != top_servers {
                    return Err(err(
                        &sp,
                        "servers of its own are not supported: one ADS connection per \
                         process serves every authority from the top-level xds_servers",
                    ));
                }
            }
            out.push(Authority {
                name: name.clone(),
                client_listener_resource_name_template: template,
            });
        }
        Ok(out)
    }
}

/// A certificate needs its key and a key its certificate.
fn cert_and_key(cert: &Option<PathBuf>, key: &Option<PathBuf>, path: &FieldPath) -> Result<()> {
    match (cert, key) {
        (Some(_), None) => Err(err(
            &path.field("private_key_file"),
            "required when certificate_file is set",
        )),
        (None, Some(_)) => Err(err(
            &path.field("certificate_file"),
            "required when private_key_file is set",
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Json {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn durations_follow_the_proto3_json_mapping() {
        let p = FieldPath::root().field("d");
        assert_eq!(
            duration(&json("\"600s\""), &p).unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            duration(&json("\"1.5s\""), &p).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            duration(&json("\".000000001s\""), &p).unwrap(),
            Duration::from_nanos(1)
        );
        for bad in [
            "\"600\"",
            "\"s\"",
            "\"1.2.3s\"",
            "\"1.0000000001s\"",
            "600",
            "\"1ms\"",
        ] {
            let e = duration(&json(bad), &p).unwrap_err().to_string();
            assert!(e.starts_with("d: expected"), "{bad}: {e}");
        }
        assert_eq!(
            duration(&json("\"-1s\""), &p).unwrap_err().to_string(),
            "d: must not be negative, got \"-1s\""
        );
    }

    #[test]
    fn metadata_becomes_a_protobuf_struct() {
        let m = json(r#"{"a": "s", "b": [1, true, null], "c": {"d": 2.5}}"#);
        let s = proto_struct(m.as_object().unwrap());
        assert_eq!(s.fields["a"].kind, Some(Kind::StringValue("s".into())));
        let Some(Kind::ListValue(l)) = &s.fields["b"].kind else {
            panic!("{:?}", s.fields["b"])
        };
        assert_eq!(l.values[0].kind, Some(Kind::NumberValue(1.0)));
        assert_eq!(l.values[1].kind, Some(Kind::BoolValue(true)));
        assert_eq!(l.values[2].kind, Some(Kind::NullValue(0)));
        let Some(Kind::StructValue(c)) = &s.fields["c"].kind else {
            panic!("{:?}", s.fields["c"])
        };
        assert_eq!(c.fields["d"].kind, Some(Kind::NumberValue(2.5)));
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = Json::String("x".repeat(200));
        let s = show(&long);
        assert_eq!(s.len(), 80);
        assert!(s.ends_with("..."));
    }
}
