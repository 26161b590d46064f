//! gRPC's xDS bootstrap JSON into `ClientConfig`: the file Istio's agent
//! writes for proxyless gRPC, every field of the format, the environment
//! variables and the error messages.

use std::path::PathBuf;
use std::time::Duration;

use mesh_xds::bootstrap::{BOOTSTRAP_CONFIG_ENV, BOOTSTRAP_FILE_ENV};
use mesh_xds::config::{Authority, CertificatePlugin, ChannelCreds, Protocol, ServerFeatures};
use mesh_xds::pb::envoy::config::core::v3::node::UserAgentVersionType;
use mesh_xds::pb::google::protobuf::value::Kind;
use mesh_xds::{Bootstrap, ClientConfig};

const ISTIO: &str = include_str!("../fixtures/xds/istio-agent-grpc-bootstrap.json");

fn parse(json: &str) -> Bootstrap {
    Bootstrap::parse("bootstrap.json", json).unwrap_or_else(|e| panic!("{e}"))
}

fn error(json: &str) -> String {
    Bootstrap::parse("bootstrap.json", json)
        .map(|b| panic!("accepted: {:?}", b.config))
        .unwrap_err()
        .to_string()
}

fn string(kind: &Option<Kind>) -> &str {
    match kind {
        Some(Kind::StringValue(s)) => s,
        other => panic!("not a string: {other:?}"),
    }
}

/// Every field `pkg/istio-agent/grpcxds/grpc_bootstrap.go` writes.
#[test]
fn istio_agent_bootstrap_parses_as_is() {
    let b = parse(ISTIO);
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    let c = &b.config;

    assert_eq!(c.servers.len(), 1);
    let s = &c.servers[0];
    assert_eq!(s.uri, "unix:///etc/istio/proxy/XDS");
    assert_eq!(s.channel_creds, ChannelCreds::Insecure);
    assert_eq!(s.features, ServerFeatures::default());
    assert_eq!(s.protocol, Protocol::StateOfTheWorld);
    assert_eq!(c.resource_timeout, Duration::from_secs(15));

    assert_eq!(
        c.node.id,
        "sidecar~10.244.1.17~echo-v1-7d9c6b6f8-x2x9q.echo~echo.svc.cluster.local"
    );
    assert_eq!(c.node.cluster, "");
    assert_eq!(c.node.user_agent_name, "rust-mesh");
    assert!(matches!(
        &c.node.user_agent_version_type,
        Some(UserAgentVersionType::UserAgentVersion(v)) if !v.is_empty()
    ));
    let l = c.node.locality.as_ref().unwrap();
    assert_eq!(
        (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()),
        ("us-central1", "us-central1-a", "rack-7")
    );
    let m = &c.node.metadata.as_ref().unwrap().fields;
    let raw: serde_json::Value = serde_json::from_str(ISTIO).unwrap();
    let mut want: Vec<_> = raw["node"]["metadata"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    let mut got: Vec<_> = m.keys().collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(m.len(), 17);
    assert_eq!(string(&m["GENERATOR"].kind), "grpc");
    assert_eq!(string(&m["ISTIO_VERSION"].kind), "1.24.2");
    assert_eq!(string(&m["NAMESPACE"].kind), "echo");
    assert_eq!(
        m["ENVOY_STATUS_PORT"].kind,
        Some(Kind::NumberValue(15021.0))
    );
    let Some(Kind::ListValue(sans)) = &m["PILOT_SAN"].kind else {
        panic!("{:?}", m["PILOT_SAN"])
    };
    assert_eq!(string(&sans.values[0].kind), "istiod.istio-system.svc");
    let Some(Kind::StructValue(labels)) = &m["LABELS"].kind else {
        panic!("{:?}", m["LABELS"])
    };
    assert_eq!(string(&labels.fields["version"].kind), "v1");

    assert_eq!(c.certificate_providers.len(), 1);
    let p = &c.certificate_providers[0];
    assert_eq!(p.name, "default");
    assert_eq!(
        p.plugin,
        CertificatePlugin::FileWatcher {
            certificate_file: Some(PathBuf::from("/var/lib/istio/data/cert-chain.pem")),
            private_key_file: Some(PathBuf::from("/var/lib/istio/data/key.pem")),
            ca_certificate_file: Some(PathBuf::from("/var/lib/istio/data/root-cert.pem")),
            refresh_interval: Duration::from_secs(900),
        }
    );

    assert_eq!(
        c.server_listener_resource_name_template.as_deref(),
        Some("xds.istio.io/grpc/lds/inbound/%s")
    );
    assert_eq!(
        c.server_listener_name("0.0.0.0:8080").as_deref(),
        Some("xds.istio.io/grpc/lds/inbound/0.0.0.0:8080")
    );
    // istiod names client listeners `<fqdn>:<port>`, the target itself.
    assert_eq!(c.client_default_listener_resource_name_template, None);
    assert_eq!(
        c.client_listener_name("", "echo.echo.svc.cluster.local:7070")
            .unwrap(),
        "echo.echo.svc.cluster.local:7070"
    );
    assert!(c.authorities.is_empty());
}

/// The older agent output (Istio's own test data) has an empty locality.
#[test]
fn empty_locality_and_no_metadata_are_fine() {
    let b = parse(
        r#"{"xds_servers": [{"server_uri": "unix:///etc/istio/XDS",
             "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
            "node": {"id": "sidecar~127.0.0.1~pod1.ns~ns.svc.cluster.local",
                     "locality": {}, "UserAgentVersionType": null}}"#,
    );
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    assert_eq!(b.config.node.locality, Some(Default::default()));
    assert_eq!(b.config.node.metadata, None);
    assert!(b.config.certificate_providers.is_empty());
}

#[test]
fn every_field_of_the_grpc_format() {
    let b = parse(
        r#"{
        "xds_servers": [
          {"server_uri": "istiod.istio-system.svc:15012",
           "channel_creds": [{"type": "google_default"},
                             {"type": "tls", "config": {"ca_certificate_file": "/ca.pem",
                               "certificate_file": "/c.pem", "private_key_file": "/k.pem"}}],
           "server_features": ["xds_v3", "ignore_resource_deletion", "fail_on_data_errors",
                               "resource_timer_is_transient_error", "xds_delta"]},
          {"server_uri": "fallback:15010", "channel_creds": [{"type": "insecure"}]}
        ],
        "node": {"id": "n1", "cluster": "c1",
                 "locality": {"region": "r", "zone": "z", "subZone": "s"},
                 "metadata": {"k": "v"}},
        "certificate_providers": {
          "roots-only": {"plugin_name": "file_watcher",
                         "config": {"ca_certificate_file": "/roots.pem"}},
          "mesh": {"plugin_name": "file_watcher",
                   "config": {"certificate_file": "/c", "private_key_file": "/k",
                              "refresh_interval": "1.5s"}}
        },
        "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%s",
        "client_default_listener_resource_name_template": "xdstp://td/envoy.config.listener.v3.Listener/%s",
        "authorities": {
          "td": {},
          "other": {"client_listener_resource_name_template": "xdstp://other/L/%s",
                    "xds_servers": []}
        }
      }"#,
    );
    let c = &b.config;
    assert_eq!(
        b.warnings,
        [
            r#"xds_servers[0].channel_creds: channel credentials type "google_default" is not supported, skipped"#
        ]
    );
    assert_eq!(c.servers.len(), 2);
    assert_eq!(c.servers[0].uri, "istiod.istio-system.svc:15012");
    assert_eq!(
        c.servers[0].channel_creds,
        ChannelCreds::Tls {
            ca_certificate_file: "/ca.pem".into(),
            certificate_file: Some("/c.pem".into()),
            private_key_file: Some("/k.pem".into()),
        }
    );
    assert_eq!(
        c.servers[0].features,
        ServerFeatures {
            ignore_resource_deletion: true,
            fail_on_data_errors: true,
            resource_timer_is_transient_error: true,
        }
    );
    assert_eq!(c.servers[0].protocol, Protocol::Delta);
    assert_eq!(c.servers[1].protocol, Protocol::StateOfTheWorld);
    assert_eq!(c.servers[1].channel_creds, ChannelCreds::Insecure);
    // gRFC A88: the transient-error timer is 30 s.
    assert_eq!(c.resource_timeout, Duration::from_secs(30));

    assert_eq!((c.node.id.as_str(), c.node.cluster.as_str()), ("n1", "c1"));
    assert_eq!(c.node.locality.as_ref().unwrap().sub_zone, "s");
    assert_eq!(
        string(&c.node.metadata.as_ref().unwrap().fields["k"].kind),
        "v"
    );

    let names: Vec<_> = c
        .certificate_providers
        .iter()
        .map(|p| &p.name[..])
        .collect();
    assert_eq!(names, ["mesh", "roots-only"]);
    assert_eq!(
        c.certificate_providers[0].plugin,
        CertificatePlugin::FileWatcher {
            certificate_file: Some("/c".into()),
            private_key_file: Some("/k".into()),
            ca_certificate_file: None,
            refresh_interval: Duration::from_millis(1500),
        }
    );
    let CertificatePlugin::FileWatcher {
        refresh_interval, ..
    } = &c.certificate_providers[1].plugin;
    assert_eq!(
        *refresh_interval,
        Duration::from_secs(600),
        "gRFC A29 default"
    );

    assert_eq!(
        c.server_listener_name("[::]:50051").unwrap(),
        "grpc/server?xds.resource.listening_address=[::]:50051"
    );
    assert_eq!(
        c.authorities,
        [
            Authority {
                name: "other".into(),
                client_listener_resource_name_template: "xdstp://other/L/%s".into(),
            },
            Authority {
                name: "td".into(),
                client_listener_resource_name_template:
                    "xdstp://td/envoy.config.listener.v3.Listener/%s".into(),
            },
        ]
    );
    assert_eq!(
        c.client_listener_name("", "svc.ns:80").unwrap(),
        "xdstp://td/envoy.config.listener.v3.Listener/svc.ns:80"
    );
    assert_eq!(
        c.client_listener_name("other", "a b").unwrap(),
        "xdstp://other/L/a%20b"
    );
    assert!(c.client_listener_name("nope", "x").is_err());
}

#[test]
fn fields_that_are_not_applied_are_reported() {
    let b = parse(
        r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}],
             "server_features": ["trusted_xds_server", "future_feature"], "extra": 1}],
            "node": {"id": "n", "user_agent_name": "me", "mystery": 2},
            "certificate_providers": {"spire": {"plugin_name": "spiffe_workload_api"}},
            "cluster_name": "old"}"#,
    );
    assert_eq!(
        b.warnings,
        [
            "cluster_name: unknown field, ignored",
            "xds_servers[0].extra: unknown field, ignored",
            "xds_servers[0].server_features[0]: trusted_xds_server (gRFC A81 authority rewriting) is not supported, ignored",
            r#"xds_servers[0].server_features[1]: unknown server feature "future_feature", ignored"#,
            "node.mystery: unknown field, ignored",
            "node.user_agent_name: set by the client, not by the bootstrap; ignored",
            r#"certificate_providers["spire"].plugin_name: plugin "spiffe_workload_api" is not supported, instance skipped: TLS contexts that use instance "spire" are rejected"#,
        ]
    );
    assert!(b.config.certificate_providers.is_empty());
    assert_eq!(b.config.node.user_agent_name, "rust-mesh");
}

#[test]
fn errors_name_the_place_and_the_value() {
    let server = |creds: &str| {
        format!(r#"{{"xds_servers": [{{"server_uri": "x:1", "channel_creds": {creds}}}]}}"#)
    };
    let cases: Vec<(String, &str)> = vec![
        ("[]".into(), "bootstrap.json: expected an object, got []"),
        ("{".into(), "bootstrap.json: invalid JSON: EOF while parsing an object at line 1 column 1"),
        ("{}".into(), "bootstrap.json: xds_servers: required"),
        (r#"{"xds_servers": []}"#.into(), "bootstrap.json: xds_servers: must list at least one server"),
        (
            r#"{"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}"#.into(),
            "bootstrap.json: xds_servers[0].server_uri: required",
        ),
        (
            r#"{"xds_servers": [{"server_uri": "x:1"}]}"#.into(),
            "bootstrap.json: xds_servers[0].channel_creds: required",
        ),
        (
            server(r#"[{"type": "google_default"}]"#),
            r#"bootstrap.json: xds_servers[0].channel_creds: no supported type in ["google_default"] (supported: insecure, tls)"#,
        ),
        (
            server("[]"),
            "bootstrap.json: xds_servers[0].channel_creds: no supported type in [] (supported: insecure, tls)",
        ),
        (
            server(r#"[{"type": "tls"}]"#),
            "bootstrap.json: xds_servers[0].channel_creds[0].config.ca_certificate_file: required: the mesh has no system root store to verify the server with",
        ),
        (
            server(r#"[{"type": "tls", "config": {"ca_certificate_file": "/ca", "certificate_file": "/c"}}]"#),
            "bootstrap.json: xds_servers[0].channel_creds[0].config.private_key_file: required when certificate_file is set",
        ),
        (
            server(r#"[{"type": 7}]"#),
            "bootstrap.json: xds_servers[0].channel_creds[0].type: expected a string, got 7",
        ),
        (
            r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}], "node": {"metadata": 3}}"#.into(),
            "bootstrap.json: node.metadata: expected an object, got 3",
        ),
        (
            r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}],
                "certificate_providers": {"d": {"plugin_name": "file_watcher", "config": {"ca_certificate_file": "/r", "refresh_interval": "15m"}}}}"#.into(),
            r#"bootstrap.json: certificate_providers["d"].config.refresh_interval: expected a duration such as "600s", got "15m""#,
        ),
        (
            r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}],
                "certificate_providers": {"d": {"plugin_name": "file_watcher", "config": {}}}}"#.into(),
            r#"bootstrap.json: certificate_providers["d"].config: at least one of certificate_file and ca_certificate_file is required"#,
        ),
        (
            r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}],
                "certificate_providers": {"d": {"plugin_name": "file_watcher", "config": {"ca_certificate_file": "/r", "spiffe_trust_bundle_map_file": "/b.json"}}}}"#.into(),
            r#"bootstrap.json: certificate_providers["d"].config.spiffe_trust_bundle_map_file: SPIFFE trust bundle maps (gRFC A87) are not supported here; use ca_certificate_file"#,
        ),
        (
            r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}],
                "authorities": {"a": {"client_listener_resource_name_template": "xdstp://b/L/%s"}}}"#.into(),
            r#"bootstrap.json: authorities["a"].client_listener_resource_name_template: "xdstp://b/L/%s" must start with "xdstp://a/""#,
        ),
        (
            r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}],
                "authorities": {"a": {"xds_servers": [{"server_uri": "y:1", "channel_creds": [{"type": "insecure"}]}]}}}"#.into(),
            r#"bootstrap.json: authorities["a"].xds_servers: servers of its own are not supported: one ADS connection per process serves every authority from the top-level xds_servers"#,
        ),
    ];
    for (json, want) in cases {
        assert_eq!(error(&json), want, "for {json}");
    }
}

#[test]
fn an_authority_listing_the_top_level_servers_is_accepted() {
    let b = parse(
        r#"{"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}],
            "authorities": {"a": {"xds_servers": [{"server_uri": "x:1", "channel_creds": [{"type": "insecure"}]}]}}}"#,
    );
    assert_eq!(b.config.authorities.len(), 1);
}

#[test]
fn the_file_variable_wins_over_the_inline_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, ISTIO).unwrap();
    let file_str = file.to_str().unwrap().to_owned();
    let inline =
        r#"{"xds_servers": [{"server_uri": "inline:1", "channel_creds": [{"type": "insecure"}]}]}"#;

    let both = Bootstrap::from_env_with(|k| match k {
        BOOTSTRAP_FILE_ENV => Some(file_str.clone()),
        BOOTSTRAP_CONFIG_ENV => Some(inline.to_owned()),
        _ => None,
    })
    .unwrap();
    assert_eq!(both.config.servers[0].uri, "unix:///etc/istio/proxy/XDS");

    // An empty variable counts as unset, as in gRPC.
    let inline_only = Bootstrap::from_env_with(|k| match k {
        BOOTSTRAP_FILE_ENV => Some(String::new()),
        BOOTSTRAP_CONFIG_ENV => Some(inline.to_owned()),
        _ => None,
    })
    .unwrap();
    assert_eq!(inline_only.config.servers[0].uri, "inline:1");

    let e = Bootstrap::from_env_with(|_| None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "xds bootstrap: neither GRPC_XDS_BOOTSTRAP nor GRPC_XDS_BOOTSTRAP_CONFIG is set"
    );

    let e = Bootstrap::from_env_with(|k| (k == BOOTSTRAP_CONFIG_ENV).then(|| "{}".to_owned()))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "GRPC_XDS_BOOTSTRAP_CONFIG: xds_servers: required"
    );
    assert_eq!(e.origin(), "GRPC_XDS_BOOTSTRAP_CONFIG");
    assert_eq!(e.error().path().as_str(), "xds_servers");

    let missing = dir.path().join("missing.json");
    let e = Bootstrap::from_file(&missing).unwrap_err();
    assert_eq!(e.origin(), missing.display().to_string());
    assert!(e.to_string().contains(": cannot read the file: "), "{e}");
}

/// A bootstrap and code agree: `ClientConfig::new` is the one-server,
/// insecure, SotW config a minimal bootstrap describes, apart from the
/// node's user agent version.
#[test]
fn a_minimal_bootstrap_is_client_config_new() {
    let b = parse(
        r#"{"xds_servers": [{"server_uri": "127.0.0.1:18000", "channel_creds": [{"type": "insecure"}]}],
            "node": {"id": "n"}}"#,
    );
    let mut code = ClientConfig::new("127.0.0.1:18000", "n");
    code.node.user_agent_version_type = b.config.node.user_agent_version_type.clone();
    assert_eq!(b.config, code);
}
