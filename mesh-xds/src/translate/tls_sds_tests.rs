//! SDS secret references in server TLS contexts (client contexts:
//! `tests/tests/xds_sds.rs`).

#![allow(clippy::unwrap_used)]

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tlspb;
use mesh_core::model::security::MtlsMode;

use crate::TypeUrl;
use crate::config::SdsIdentity;
use crate::resource::{DecodeContext, XdsResource};
use crate::translate::listener::tests::{istio_downstream_tls, istio_inbound};
use crate::translate::route::tests::any;

fn ads() -> Option<core::ConfigSource> {
    Some(core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            Default::default(),
        )),
        ..Default::default()
    })
}

fn sds(name: &str) -> tlspb::SdsSecretConfig {
    tlspb::SdsSecretConfig {
        name: name.into(),
        sds_config: ads(),
    }
}

/// What istiod sends an Envoy sidecar for an inbound mTLS port: the
/// workload certificate `default` and the roots `ROOTCA` by SDS.
fn sds_downstream(cert: &str, roots: &str) -> tlspb::DownstreamTlsContext {
    let mut tls = istio_downstream_tls();
    let c = tls.common_tls_context.as_mut().unwrap();
    c.tls_certificate_provider_instance = None;
    c.tls_certificate_sds_secret_configs = vec![sds(cert)];
    c.validation_context_type = Some(
        tlspb::common_tls_context::ValidationContextType::CombinedValidationContext(
            tlspb::common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: Some(Default::default()),
                validation_context_sds_secret_config: Some(sds(roots)),
                ..Default::default()
            },
        ),
    );
    tls
}

fn decode(tls: tlspb::DownstreamTlsContext, watched: bool) -> Result<MtlsMode, String> {
    let l = istio_inbound(Some(tls), vec![]);
    let ctx = DecodeContext {
        sds_identities: if watched {
            [SdsIdentity::istio("cluster.local")].into()
        } else {
            Default::default()
        },
        ..Default::default()
    };
    let d = super::super::decode(
        TypeUrl::Listener,
        &any(TypeUrl::Listener.as_str(), &l),
        &ctx,
    )
    .map_err(|e| e.reason)?;
    let XdsResource::Listener(r) = d.resource else {
        panic!("not a listener")
    };
    Ok(r.security.peer_authentications[0].mode)
}

const CP: &str = "filter_chains[0].transport_socket.typed_config.common_tls_context";

#[test]
fn a_server_naming_the_identity_secrets_is_strict_mtls() {
    assert_eq!(
        decode(sds_downstream("default", "ROOTCA"), true).unwrap(),
        MtlsMode::Strict
    );
    // The plain validation_context_sds_secret_config form too.
    let mut tls = sds_downstream("default", "ROOTCA");
    tls.common_tls_context
        .as_mut()
        .unwrap()
        .validation_context_type = Some(
        tlspb::common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
            "ROOTCA",
        )),
    );
    assert_eq!(decode(tls, true).unwrap(), MtlsMode::Strict);
}

#[test]
fn a_server_naming_secrets_the_process_does_not_watch_is_rejected() {
    let e = decode(sds_downstream("default", "ROOTCA"), false).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "{CP}.tls_certificate_sds_secret_configs[0].name: SDS secret \"default\" is not the certificate of an identity this process subscribes into its identity store (none is watched"
        )),
        "{e}"
    );
    let e = decode(sds_downstream("default", "other"), true).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "{CP}.combined_validation_context.validation_context_sds_secret_config.name: SDS secret \"other\" is not the roots of the identity whose certificate is \"default\""
        )),
        "{e}"
    );
}

#[test]
fn a_server_with_unresolvable_or_extra_sds_settings_is_rejected() {
    // A secret from another config source (Envoy's sds-grpc cluster).
    let mut tls = sds_downstream("default", "ROOTCA");
    tls.common_tls_context
        .as_mut()
        .unwrap()
        .tls_certificate_sds_secret_configs[0]
        .sds_config = Some(core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::ApiConfigSource(
            Default::default(),
        )),
        ..Default::default()
    });
    assert_eq!(
        decode(tls, true).unwrap_err(),
        format!(
            "{CP}.tls_certificate_sds_secret_configs[0].sds_config: only ads or self is supported: the process fetches its secrets over its one ADS stream"
        )
    );
    // A static secret.
    let mut tls = sds_downstream("default", "ROOTCA");
    tls.common_tls_context
        .as_mut()
        .unwrap()
        .tls_certificate_sds_secret_configs[0]
        .sds_config = None;
    assert!(decode(tls, true).unwrap_err().starts_with(&format!(
        "{CP}.tls_certificate_sds_secret_configs[0].sds_config: unset"
    )),);
    // Client checks the server cannot honour beside the SDS roots.
    let mut tls = sds_downstream("default", "ROOTCA");
    if let Some(tlspb::common_tls_context::ValidationContextType::CombinedValidationContext(cv)) =
        &mut tls
            .common_tls_context
            .as_mut()
            .unwrap()
            .validation_context_type
    {
        cv.default_validation_context = Some(tlspb::CertificateValidationContext {
            verify_certificate_spki: vec!["pin".into()],
            ..Default::default()
        });
    }
    assert!(decode(tls, true).unwrap_err().starts_with(&format!(
        "{CP}.combined_validation_context.default_validation_context: not supported with SDS roots"
    )));
    // No roots at all.
    let mut tls = sds_downstream("default", "ROOTCA");
    tls.common_tls_context
        .as_mut()
        .unwrap()
        .validation_context_type = None;
    assert!(decode(tls, true).unwrap_err().starts_with(&format!(
        "{CP}: an SDS certificate requires validation_context_sds_secret_config"
    )));
}
