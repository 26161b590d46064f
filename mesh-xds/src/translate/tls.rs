//! A cluster's `transport_socket` (`UpstreamTlsContext`) → [`UpstreamTls`].
//!
//! Two shapes are understood:
//!
//! - **Certificate providers** (gRFC A29), what istiod sends proxyless gRPC
//!   for `ISTIO_MUTUAL` (`pilot/pkg/networking/grpcgen`): the workload
//!   certificate from `tls_certificate_provider_instance` (or the deprecated
//!   `tls_certificate_certificate_provider_instance`), the roots from
//!   `ca_certificate_provider_instance` (or the deprecated
//!   `validation_context_certificate_provider_instance`), SAN matchers in
//!   the (combined) validation context. Both instances must be instances of
//!   the bootstrap and the same one (the process has one workload identity);
//!   the result is [`UpstreamTls::IstioMutual`] with the exact SPIFFE IDs
//!   as the accepted server identities.
//! - **Inline PEM** (an Envoy-style control plane): `trusted_ca` (and
//!   `crl`) in the validation context, optionally one `tls_certificates`
//!   entry → [`UpstreamTls::Simple`] or [`UpstreamTls::Mutual`].
//! - **SDS secret references** (what istiod sends Envoy for
//!   `ISTIO_MUTUAL`: `tls_certificate_sds_secret_configs` `default`,
//!   `validation_context_sds_secret_config` `ROOTCA`), fetched over ADS:
//!   accepted when the names are the certificate and roots of one identity
//!   the process subscribes into its identity store
//!   ([`DecodeContext::sds_identities`],
//!   [`XdsClient::watch_identity`](crate::XdsClient::watch_identity)).
//!   They then mean the process identity and its roots, exactly as the
//!   certificate-provider shape: [`UpstreamTls::IstioMutual`]. Any other
//!   name, a secret from another config source than ADS, or a static
//!   secret is a reference the process cannot resolve: rejected (rules
//!   A2.7, fail closed).
//!
//! Everything that would verify the server less strictly than the control
//! plane asked is rejected, never ignored (rules A2.7, gRFC A29; grpc-go
//! `unmarshal_cds.go`): SPKI/hash pinning, CRLs with provider roots, custom
//! validators, signed certificate timestamps, expired or untrusted chains,
//! verify depth, unresolvable SDS secret references, TLS parameters, key logging, and
//! SAN matchers other than exact ones (the model compares SANs by
//! equality). An empty SAN matcher list means no SAN check beyond the
//! model's trust-domain check for `ISTIO_MUTUAL` (B3.1).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::certificate_validation_context::TrustChainVerification;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, TlsCertificate,
    UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use mesh_core::model::{
    IstioMutualTls, PemFile, ServerVerification, TlsOrigination, UpstreamTls,
};
use prost::{Message, Name};

use super::values::{Doc, inline_text, join, require_pem};
use crate::config::SdsIdentity;
use crate::resource::{DecodeContext, DecodeError};

/// Where the roots or the certificate come from.
enum Source {
    /// A bootstrap certificate-provider instance, by name (with the path
    /// of the field that named it).
    Provider(String, String),
    /// Inline PEM, with the path of its field.
    Inline(String, String),
    /// An inline certificate chain and key, with the path of their entry.
    InlinePair {
        chain: String,
        key: String,
        path: String,
    },
    /// An SDS secret, by name (with the path of its `SdsSecretConfig`).
    Sds(String, String),
}

impl Source {
    /// The path of the field that set it.
    fn path(&self) -> &str {
        match self {
            Self::Provider(_, p) | Self::Inline(_, p) | Self::Sds(_, p) => p,
            Self::InlinePair { path, .. } => path,
        }
    }
}

/// One accepted SAN: exact value, and the SAN type when typed.
struct San {
    path: String,
    kind: Option<SanType>,
    value: String,
}

/// The cluster's TLS, `None` for plaintext (no transport socket, or
/// `raw_buffer`).
pub(super) fn upstream_tls(
    doc: &mut Doc<'_>,
    ctx: &DecodeContext,
    ts: &TransportSocket,
) -> Result<Option<UpstreamTls>, DecodeError> {
    let any = match &ts.config_type {
        Some(ConfigType::TypedConfig(any)) => any,
        None if ts.name.is_empty() || ts.name == "envoy.transport_sockets.raw_buffer" => {
            return Ok(None);
        }
        None => {
            return Err(doc.err(
                "transport_socket.typed_config",
                format!("unset for transport socket {:?}", ts.name),
            ));
        }
    };
    if any.type_url == RawBuffer::type_url() {
        return Ok(None);
    }
    let path = "transport_socket.typed_config";
    if any.type_url != UpstreamTlsContext::type_url() {
        return Err(doc.err(
            path,
            format!("unsupported transport socket type {:?}", any.type_url),
        ));
    }
    let utc = UpstreamTlsContext::decode(any.value.as_slice())
        .map_err(|e| doc.err(path, format!("undecodable UpstreamTlsContext: {e}")))?;
    upstream_tls_context(doc, ctx, path, &utc).map(Some)
}

fn upstream_tls_context(
    doc: &mut Doc<'_>,
    ctx: &DecodeContext,
    path: &str,
    utc: &UpstreamTlsContext,
) -> Result<UpstreamTls, DecodeError> {
    doc.ignore_if(utc.auto_host_sni, &join(path, "auto_host_sni"));
    doc.ignore_if(utc.allow_renegotiation, &join(path, "allow_renegotiation"));
    doc.ignore_if(
        utc.max_session_keys.is_some(),
        &join(path, "max_session_keys"),
    );
    doc.ignore_if(
        utc.enforce_rsa_key_usage.is_some(),
        &join(path, "enforce_rsa_key_usage"),
    );
    let sni: Option<Arc<str>> = (!utc.sni.is_empty()).then(|| utc.sni.as_str().into());
    let cpath = join(path, "common_tls_context");
    let Some(common) = &utc.common_tls_context else {
        return Err(doc.err(
            &cpath,
            "unset: the server cannot be verified without root certificates (gRFC A29)",
        ));
    };
    let (cert, ca, crl, sans) = common_tls_context(doc, &cpath, common)?;

    let provider = |doc: &Doc<'_>, name: &str, field: &str| -> Result<(), DecodeError> {
        if ctx.certificate_providers.contains(name) {
            Ok(())
        } else {
            Err(doc.err(
                field,
                format!(
                    "unknown certificate provider instance {name:?} (the bootstrap has [{}]; gRFC A29)",
                    ctx.certificate_providers
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    };

    match (ca, cert) {
        (None, _) => Err(doc.err(
            &cpath,
            "no root certificates: set a validation context with ca_certificate_provider_instance or trusted_ca (gRFC A29)",
        )),
        (Some(Source::Provider(ca, ca_field)), Some(Source::Provider(cert, cert_field))) => {
            provider(doc, &ca, &ca_field)?;
            provider(doc, &cert, &cert_field)?;
            if ca != cert {
                return Err(doc.err(
                    &cert_field,
                    format!(
                        "instance {cert:?} differs from the roots' instance {ca:?}: the process has one workload identity"
                    ),
                ));
            }
            mesh_tls(doc, utc, path, sni, crl, sans, "certificate-provider")
        }
        (Some(Source::Sds(ca, ca_field)), Some(Source::Sds(cert, cert_field))) => {
            sds_identity(ctx, (&cert, &cert_field), (&ca, &ca_field))
                .map_err(|(p, reason)| doc.err(&p, reason))?;
            mesh_tls(doc, utc, path, sni, crl, sans, "SDS")
        }
        (Some(Source::Sds(_, ca_field)), None) => Err(doc.err(
            &ca_field,
            "SDS roots without an SDS client certificate are not supported: SDS-backed TLS is the mesh's mutual TLS",
        )),
        (Some(Source::Sds(_, ca_field)), Some(_)) => Err(doc.err(
            &ca_field,
            "SDS roots with a client certificate from another source: the process has one workload identity",
        )),
        (Some(_), Some(Source::Sds(_, cert_field))) => Err(doc.err(
            &cert_field,
            "an SDS client certificate with roots from another source: the process has one workload identity",
        )),
        (Some(Source::Provider(_, ca_field)), None) => Err(doc.err(
            &ca_field,
            "certificate-provider roots without a certificate-provider client certificate are not supported: provider-backed TLS is the mesh's mutual TLS",
        )),
        (
            Some(Source::Provider(..)),
            Some(Source::Inline(_, cert_field) | Source::InlinePair { path: cert_field, .. }),
        ) => Err(doc.err(
            &cert_field,
            "an inline certificate with certificate-provider roots is not supported",
        )),
        (Some(Source::Inline(..)), Some(Source::Provider(_, cert_field))) => Err(doc.err(
            &cert_field,
            "a certificate-provider certificate with inline roots is not supported",
        )),
        (Some(Source::InlinePair { path, .. }), _) => {
            Err(doc.err(&path, "not a source of root certificates"))
        }
        (Some(Source::Inline(ca_pem, ca_field)), cert) => {
            require_pem(doc, &ca_field, &ca_pem, "CERTIFICATE")?;
            let origin = |field: &str| format!("xds:{}:{field}", doc.name);
            let mut names = Vec::with_capacity(sans.len());
            for san in sans {
                match san.kind {
                    None | Some(SanType::Dns | SanType::Uri) => names.push(Arc::from(san.value)),
                    Some(other) => {
                        return Err(doc.err(
                            &san.path,
                            format!(
                                "{} SANs cannot be checked (DNS and URI SANs only)",
                                other.as_str_name()
                            ),
                        ));
                    }
                }
            }
            doc.reject_if(
                utc.auto_sni_san_validation && !names.is_empty(),
                &join(path, "auto_sni_san_validation"),
                "cannot be combined with SAN matchers (the model checks one or the other)",
            )?;
            let ca_crl = match crl {
                Some((field, pem)) => {
                    require_pem(doc, &field, &pem, "X509 CRL")?;
                    Some(PemFile::new(origin(&field), pem.into_bytes()))
                }
                None => None,
            };
            let origination = TlsOrigination {
                verify: ServerVerification::Verify {
                    ca_certificates: PemFile::new(origin(&ca_field), ca_pem.into_bytes()),
                    subject_alt_names: names.into(),
                    ca_crl,
                },
                sni,
            };
            match cert {
                None => Ok(UpstreamTls::Simple(origination)),
                Some(Source::InlinePair {
                    chain,
                    key,
                    path: cert_field,
                }) => {
                    require_pem(
                        doc,
                        &join(&cert_field, "certificate_chain"),
                        &chain,
                        "CERTIFICATE",
                    )?;
                    require_pem(doc, &join(&cert_field, "private_key"), &key, "PRIVATE KEY")?;
                    Ok(UpstreamTls::Mutual {
                        origination,
                        certificate: PemFile::new(
                            origin(&join(&cert_field, "certificate_chain")),
                            chain.into_bytes(),
                        ),
                        private_key: PemFile::new(
                            origin(&join(&cert_field, "private_key")),
                            key.into_bytes(),
                        ),
                    })
                }
                Some(Source::Provider(..) | Source::Inline(..) | Source::Sds(..)) => {
                    Err(doc.err(&cpath, "unsupported certificate source"))
                }
            }
        }
    }
}

/// The mesh's mutual TLS (`ISTIO_MUTUAL`) with the process identity and
/// roots, whether named by certificate-provider instances or by SDS
/// secrets (`kind`, for the messages): exact SPIFFE SAN matchers only, no
/// CRL.
fn mesh_tls(
    doc: &mut Doc<'_>,
    utc: &UpstreamTlsContext,
    path: &str,
    sni: Option<Arc<str>>,
    crl: Option<(String, String)>,
    sans: Vec<San>,
    kind: &str,
) -> Result<UpstreamTls, DecodeError> {
    if let Some((crl_field, _)) = crl {
        return Err(doc.err(
            &crl_field,
            format!("not supported with {kind} roots (rules A2.7)"),
        ));
    }
    doc.reject_if(
        utc.auto_sni_san_validation,
        &join(path, "auto_sni_san_validation"),
        &format!("not supported for mesh ({kind}) TLS"),
    )?;
    let mut ids = Vec::with_capacity(sans.len());
    for san in sans {
        match san.kind {
            Some(SanType::Uri) | None if san.value.starts_with("spiffe://") => {
                ids.push(Arc::from(san.value))
            }
            _ => {
                return Err(doc.err(
                    &san.path,
                    format!(
                        "{:?}: mesh TLS verifies the server's SPIFFE ID (a URI SAN spiffe://…); other SANs cannot be checked",
                        san.value
                    ),
                ));
            }
        }
    }
    Ok(UpstreamTls::IstioMutual(IstioMutualTls {
        sni,
        subject_alt_names: ids.into(),
        service_subject_alt_names: Arc::from([]),
        service_accounts: Arc::from([]),
    }))
}

// === SDS secret references ===

/// The name of an `SdsSecretConfig` the process can resolve: a named
/// secret fetched over ADS (`ads`, or `self` on the ADS stream), or the
/// path of the offending field and why not.
pub(super) fn sds_secret_name<'a>(
    c: &'a SdsSecretConfig,
    path: &str,
) -> Result<&'a str, (String, String)> {
    if c.name.is_empty() {
        return Err((join(path, "name"), "empty".to_owned()));
    }
    match c.sds_config.as_ref().and_then(|s| s.config_source_specifier.as_ref()) {
        Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::Self_(_)) => Ok(&c.name),
        None => Err((
            join(path, "sds_config"),
            "unset: static secrets (Envoy's bootstrap static_resources) are not supported; the identity's secrets come over ADS".to_owned(),
        )),
        Some(_) => Err((
            join(path, "sds_config"),
            "only ads or self is supported: the process fetches its secrets over its one ADS stream".to_owned(),
        )),
    }
}

/// The watched identity whose certificate is `cert` and whose roots are
/// `roots` (each with the path of its `SdsSecretConfig`), or the path and
/// why the pair cannot be resolved.
pub(super) fn sds_identity<'a>(
    ctx: &'a DecodeContext,
    cert: (&str, &str),
    roots: (&str, &str),
) -> Result<&'a SdsIdentity, (String, String)> {
    let watched = if ctx.sds_identities.is_empty() {
        "none is watched (XdsClient::watch_identity)".to_owned()
    } else {
        format!(
            "watched: {}",
            ctx.sds_identities
                .iter()
                .map(|i| format!("{:?} with roots {:?}", i.certificate, i.validation))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut of_cert = ctx
        .sds_identities
        .iter()
        .filter(|i| i.certificate == cert.0)
        .peekable();
    if of_cert.peek().is_none() {
        return Err((
            join(cert.1, "name"),
            format!(
                "SDS secret {:?} is not the certificate of an identity this process subscribes into its identity store ({watched}); a reference the process cannot resolve fails closed (rules A2.7)",
                cert.0
            ),
        ));
    }
    of_cert.find(|i| i.validation == roots.0).ok_or_else(|| {
        (
            join(roots.1, "name"),
            format!(
                "SDS secret {:?} is not the roots of the identity whose certificate is {:?} ({watched}); a reference the process cannot resolve fails closed (rules A2.7)",
                roots.0, cert.0
            ),
        )
    })
}

/// A server's (`DownstreamTlsContext`) certificate and client roots named
/// by SDS secrets: one certificate secret and one root secret of the same
/// watched identity (see [`sds_identity`]), nothing else naming where the
/// identity comes from, and no extra client checks in a default validation
/// context (clients are verified against the identity's roots; who may call
/// is authorization's business). Errors are `path: reason`.
pub(super) fn downstream_sds(
    c: &CommonTlsContext,
    cp: &str,
    ctx: &DecodeContext,
) -> Result<(), String> {
    let err = |(p, r): (String, String)| format!("{p}: {r}");
    if c.tls_certificate_provider_instance.is_some() {
        return Err(format!(
            "{cp}.tls_certificate_provider_instance: set together with tls_certificate_sds_secret_configs: the process has one workload identity"
        ));
    }
    let [one] = c.tls_certificate_sds_secret_configs.as_slice() else {
        return Err(format!(
            "{cp}.tls_certificate_sds_secret_configs: {} secrets: one is supported (the process has one workload identity)",
            c.tls_certificate_sds_secret_configs.len()
        ));
    };
    let cert_path = join(cp, "tls_certificate_sds_secret_configs[0]");
    let cert = sds_secret_name(one, &cert_path).map_err(err)?;
    let (roots_config, roots_path) = match &c.validation_context_type {
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let cvp = join(cp, "combined_validation_context");
            if cv
                .validation_context_certificate_provider_instance
                .is_some()
                || cv.validation_context_certificate_provider.is_some()
            {
                return Err(format!(
                    "{cvp}.validation_context_certificate_provider_instance: set with an SDS certificate: the process has one workload identity"
                ));
            }
            if cv
                .default_validation_context
                .as_ref()
                .is_some_and(|v| *v != CertificateValidationContext::default())
            {
                return Err(format!(
                    "{cvp}.default_validation_context: not supported with SDS roots on a server (clients are verified against the identity's roots; authorization decides who may call)"
                ));
            }
            match &cv.validation_context_sds_secret_config {
                Some(s) => (s, join(&cvp, "validation_context_sds_secret_config")),
                None => {
                    return Err(format!(
                        "{cvp}.validation_context_sds_secret_config: required with an SDS certificate (the identity's roots)"
                    ));
                }
            }
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            (s, join(cp, "validation_context_sds_secret_config"))
        }
        _ => {
            return Err(format!(
                "{cp}: an SDS certificate requires validation_context_sds_secret_config (the identity's roots) to verify client certificates"
            ));
        }
    };
    let roots = sds_secret_name(roots_config, &roots_path).map_err(err)?;
    sds_identity(ctx, (cert, &cert_path), (roots, &roots_path)).map_err(err)?;
    Ok(())
}

/// What a `CommonTlsContext` provides: the client certificate, the roots,
/// an inline CRL (field path and PEM) and the SAN matchers.
type Common = (
    Option<Source>,
    Option<Source>,
    Option<(String, String)>,
    Vec<San>,
);

fn common_tls_context(
    doc: &mut Doc<'_>,
    path: &str,
    c: &CommonTlsContext,
) -> Result<Common, DecodeError> {
    let unsupported = "cannot be honoured (rules A2.7)";
    doc.reject_if(
        c.tls_params.as_ref().is_some_and(|p| *p != Default::default()),
        &join(path, "tls_params"),
        "not supported: versions, ciphers and curves are rustls' defaults (TLS 1.2 and 1.3), so a restriction cannot be honoured",
    )?;
    let sds_cert = match c.tls_certificate_sds_secret_configs.as_slice() {
        [] => None,
        [one] => {
            let p = join(path, "tls_certificate_sds_secret_configs[0]");
            let name = sds_secret_name(one, &p).map_err(|(p, r)| doc.err(&p, r))?;
            Some(Source::Sds(name.to_owned(), p))
        }
        more => {
            return Err(doc.err(
                &join(path, "tls_certificate_sds_secret_configs"),
                format!(
                    "{} secrets: one is supported (the process has one workload identity)",
                    more.len()
                ),
            ));
        }
    };
    doc.reject_if(
        c.tls_certificate_certificate_provider.is_some(),
        &join(path, "tls_certificate_certificate_provider"),
        unsupported,
    )?;
    doc.reject_if(
        c.custom_tls_certificate_selector.is_some(),
        &join(path, "custom_tls_certificate_selector"),
        unsupported,
    )?;
    doc.reject_if(
        c.custom_handshaker.is_some(),
        &join(path, "custom_handshaker"),
        unsupported,
    )?;
    doc.reject_if(
        c.key_log.is_some(),
        &join(path, "key_log"),
        "key logging is not supported",
    )?;
    doc.ignore_if(!c.alpn_protocols.is_empty(), &join(path, "alpn_protocols"));

    // The client certificate.
    let current = c
        .tls_certificate_provider_instance
        .as_ref()
        .map(|i| i.instance_name.as_str());
    let deprecated = c
        .tls_certificate_certificate_provider_instance
        .as_ref()
        .map(|i| i.instance_name.as_str());
    let provider_cert = one_instance(
        doc,
        (join(path, "tls_certificate_provider_instance"), current),
        (
            join(path, "tls_certificate_certificate_provider_instance"),
            deprecated,
        ),
    )?;
    let cert = match (provider_cert, c.tls_certificates.as_slice()) {
        (Some(p), []) => Some(p),
        (None, []) => None,
        (None, [t]) => {
            let tpath = join(path, "tls_certificates[0]");
            let (chain, key) = inline_certificate(doc, &tpath, t, unsupported)?;
            Some(Source::InlinePair {
                chain,
                key,
                path: tpath,
            })
        }
        (Some(_), [_, ..]) => {
            return Err(doc.err(
                &join(path, "tls_certificates"),
                "set together with a certificate provider instance",
            ));
        }
        (None, [_, _, ..]) => {
            return Err(doc.err(
                &join(path, "tls_certificates"),
                format!(
                    "{} certificates: at most one is supported",
                    c.tls_certificates.len()
                ),
            ));
        }
    };
    let cert = match (sds_cert, cert) {
        (Some(sds), None) => Some(sds),
        (Some(sds), Some(other)) => {
            return Err(doc.err(
                sds.path(),
                format!(
                    "set together with {}: the process has one workload identity",
                    other.path()
                ),
            ));
        }
        (None, other) => other,
    };

    // The roots and the SAN matchers.
    let vpath;
    let mut sds_ca = None;
    let (validation, deprecated_ca) = match &c.validation_context_type {
        None => {
            vpath = String::new();
            (None, None)
        }
        Some(ValidationContextType::ValidationContext(v)) => {
            vpath = join(path, "validation_context");
            (Some(v), None)
        }
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            let cvpath = join(path, "combined_validation_context");
            if let Some(sds) = &cv.validation_context_sds_secret_config {
                let p = join(&cvpath, "validation_context_sds_secret_config");
                let name = sds_secret_name(sds, &p).map_err(|(p, r)| doc.err(&p, r))?;
                sds_ca = Some(Source::Sds(name.to_owned(), p));
            }
            doc.reject_if(
                cv.validation_context_certificate_provider.is_some(),
                &join(&cvpath, "validation_context_certificate_provider"),
                unsupported,
            )?;
            vpath = join(&cvpath, "default_validation_context");
            (
                cv.default_validation_context.as_ref(),
                cv.validation_context_certificate_provider_instance
                    .as_ref()
                    .map(|i| {
                        (
                            join(&cvpath, "validation_context_certificate_provider_instance"),
                            i.instance_name.as_str(),
                        )
                    }),
            )
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(i)) => {
            vpath = String::new();
            (
                None,
                Some((
                    join(path, "validation_context_certificate_provider_instance"),
                    i.instance_name.as_str(),
                )),
            )
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
            vpath = String::new();
            let p = join(path, "validation_context_sds_secret_config");
            let name = sds_secret_name(sds, &p).map_err(|(p, r)| doc.err(&p, r))?;
            sds_ca = Some(Source::Sds(name.to_owned(), p));
            (None, None)
        }
        Some(ValidationContextType::ValidationContextCertificateProvider(_)) => {
            return Err(doc.err(
                &join(path, "validation_context_certificate_provider"),
                unsupported,
            ));
        }
    };
    let (mut ca, crl, sans) = match validation {
        Some(v) => validation_context(doc, &vpath, v)?,
        None => (None, None, Vec::new()),
    };
    let (dep_path, dep_name) = match &deprecated_ca {
        Some((p, n)) => (p.clone(), Some(*n)),
        None => (String::new(), None),
    };
    let current_ca = match &ca {
        Some(Source::Provider(n, p)) => Some((p.clone(), n.clone())),
        _ => None,
    };
    if let Some(dep) = dep_name {
        match (&ca, &current_ca) {
            (Some(Source::Inline(_, p) | Source::InlinePair { path: p, .. }), _) => {
                return Err(doc.err(
                    p,
                    "set together with a certificate provider instance for the roots",
                ));
            }
            (_, Some((cur_path, cur))) => {
                one_instance(
                    doc,
                    (cur_path.clone(), Some(cur.as_str())),
                    (dep_path.clone(), Some(dep)),
                )?;
            }
            _ => ca = Some(Source::Provider(dep.to_owned(), dep_path)),
        }
    }
    if let Some(sds) = sds_ca {
        if let Some(other) = &ca {
            return Err(doc.err(
                other.path(),
                format!("set together with {} for the roots", sds.path()),
            ));
        }
        ca = Some(sds);
    }
    Ok((cert, ca, crl, sans))
}

/// The instance named by a current field and its deprecated twin (istiod
/// sends both since 1.27 for older clients); they must agree.
fn one_instance(
    doc: &Doc<'_>,
    current: (String, Option<&str>),
    deprecated: (String, Option<&str>),
) -> Result<Option<Source>, DecodeError> {
    match (current.1, deprecated.1) {
        (Some(a), Some(b)) if a != b => Err(doc.err(
            &deprecated.0,
            format!("instance {b:?} differs from {:?} in {}", a, current.0),
        )),
        (Some(a), _) => Ok(Some(Source::Provider(a.to_owned(), current.0))),
        (None, Some(b)) => Ok(Some(Source::Provider(b.to_owned(), deprecated.0))),
        (None, None) => Ok(None),
    }
}

type Validation = (Option<Source>, Option<(String, String)>, Vec<San>);

fn validation_context(
    doc: &mut Doc<'_>,
    path: &str,
    v: &CertificateValidationContext,
) -> Result<Validation, DecodeError> {
    let a27 = "cannot be honoured (rules A2.7)";
    doc.reject_if(
        !v.verify_certificate_spki.is_empty(),
        &join(path, "verify_certificate_spki"),
        a27,
    )?;
    doc.reject_if(
        !v.verify_certificate_hash.is_empty(),
        &join(path, "verify_certificate_hash"),
        a27,
    )?;
    doc.reject_if(
        v.require_signed_certificate_timestamp
            .as_ref()
            .is_some_and(|b| b.value),
        &join(path, "require_signed_certificate_timestamp"),
        a27,
    )?;
    doc.reject_if(
        v.custom_validator_config.is_some(),
        &join(path, "custom_validator_config"),
        a27,
    )?;
    doc.reject_if(
        v.allow_expired_certificate,
        &join(path, "allow_expired_certificate"),
        "expired certificates are never accepted",
    )?;
    doc.reject_if(
        v.trust_chain_verification == TrustChainVerification::AcceptUntrusted as i32,
        &join(path, "trust_chain_verification"),
        "ACCEPT_UNTRUSTED: untrusted chains are never accepted",
    )?;
    doc.reject_if(
        v.max_verify_depth.is_some(),
        &join(path, "max_verify_depth"),
        a27,
    )?;
    doc.reject_if(
        v.system_root_certs.is_some(),
        &join(path, "system_root_certs"),
        "there is no system root store; name the roots",
    )?;
    doc.reject_if(
        v.watched_directory.is_some(),
        &join(path, "watched_directory"),
        a27,
    )?;
    doc.ignore_if(
        v.only_verify_leaf_cert_crl,
        &join(
            path,
            "only_verify_leaf_cert_crl (every certificate of the chain is checked)",
        ),
    );
    doc.ignore_if(
        v.suppress_client_ca_list,
        &join(path, "suppress_client_ca_list"),
    );

    let provider = v.ca_certificate_provider_instance.as_ref().map(|i| {
        Source::Provider(
            i.instance_name.clone(),
            join(path, "ca_certificate_provider_instance"),
        )
    });
    let inline = match &v.trusted_ca {
        Some(ds) => {
            let p = join(path, "trusted_ca");
            Some(Source::Inline(inline_text(doc, &p, ds)?, p))
        }
        None => None,
    };
    let ca = match (provider, inline) {
        (Some(_), Some(_)) => {
            return Err(doc.err(
                &join(path, "trusted_ca"),
                "set together with ca_certificate_provider_instance",
            ));
        }
        (p, i) => p.or(i),
    };
    let crl = match &v.crl {
        Some(ds) => {
            let p = join(path, "crl");
            Some((p.clone(), inline_text(doc, &p, ds)?))
        }
        None => None,
    };

    let mut sans = Vec::new();
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        let p = format!("{path}.match_subject_alt_names[{i}]");
        sans.push(exact_san(doc, p, None, m)?);
    }
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let p = format!("{path}.match_typed_subject_alt_names[{i}]");
        let kind = SanType::try_from(m.san_type)
            .ok()
            .filter(|k| *k != SanType::Unspecified)
            .ok_or_else(|| doc.err(&join(&p, "san_type"), format!("invalid {}", m.san_type)))?;
        let matcher = m
            .matcher
            .as_ref()
            .ok_or_else(|| doc.err(&join(&p, "matcher"), "unset"))?;
        sans.push(exact_san(doc, join(&p, "matcher"), Some(kind), matcher)?);
    }
    Ok((ca, crl, sans))
}

/// A SAN matcher the model can honour: exact, case-sensitive, non-empty.
fn exact_san(
    doc: &Doc<'_>,
    path: String,
    kind: Option<SanType>,
    m: &StringMatcher,
) -> Result<San, DecodeError> {
    doc.reject_if(
        m.ignore_case,
        &join(&path, "ignore_case"),
        "case-insensitive SAN matching cannot be honoured (SANs are compared exactly)",
    )?;
    match &m.match_pattern {
        Some(MatchPattern::Exact(v)) if !v.is_empty() => Ok(San {
            path: join(&path, "exact"),
            kind,
            value: v.clone(),
        }),
        Some(MatchPattern::Exact(_)) => Err(doc.err(
            &join(&path, "exact"),
            "empty: an empty SAN never matches (gRFC A29)",
        )),
        Some(other) => {
            let (field, value) = match other {
                MatchPattern::Prefix(v) => ("prefix", format!("{v:?}")),
                MatchPattern::Suffix(v) => ("suffix", format!("{v:?}")),
                MatchPattern::Contains(v) => ("contains", format!("{v:?}")),
                MatchPattern::SafeRegex(r) => ("safe_regex", format!("{:?}", r.regex)),
                MatchPattern::Custom(c) => ("custom", format!("{:?}", c.name)),
                MatchPattern::Exact(_) => ("exact", String::new()),
            };
            Err(doc.err(
                &join(&path, field),
                format!(
                    "{value}: only exact SAN matchers can be honoured (the model compares SANs by equality)"
                ),
            ))
        }
        None => Err(doc.err(&path, "no match pattern")),
    }
}

/// Reads an inline `TlsCertificate` at `path` (an SDS secret's or a TLS
/// context's `tls_certificates[0]`) as PEM chain and key text. Fields that
/// would change how the key is used or protected are rejected with
/// `unsupported`; stapled data the mesh does not serve is recorded as
/// ignored.
pub(super) fn inline_certificate(
    doc: &mut Doc<'_>,
    path: &str,
    t: &TlsCertificate,
    unsupported: &str,
) -> Result<(String, String), DecodeError> {
    doc.reject_if(t.pkcs12.is_some(), &join(path, "pkcs12"), unsupported)?;
    doc.reject_if(t.password.is_some(), &join(path, "password"), unsupported)?;
    doc.reject_if(
        t.private_key_provider.is_some(),
        &join(path, "private_key_provider"),
        unsupported,
    )?;
    doc.reject_if(
        t.watched_directory.is_some(),
        &join(path, "watched_directory"),
        unsupported,
    )?;
    doc.ignore_if(t.ocsp_staple.is_some(), &join(path, "ocsp_staple"));
    doc.ignore_if(
        !t.signed_certificate_timestamp.is_empty(),
        &join(path, "signed_certificate_timestamp"),
    );
    doc.ignore_if(t.tls_params.is_some(), &join(path, "tls_params"));
    let read = |field: &str, data: Option<&DataSource>| {
        let at = join(path, field);
        let data = data.ok_or_else(|| doc.err(&at, "unset"))?;
        inline_text(doc, &at, data)
    };
    let chain = read("certificate_chain", t.certificate_chain.as_ref())?;
    let key = read("private_key", t.private_key.as_ref())?;
    Ok((chain, key))
}

#[cfg(test)]
#[path = "tls_sds_tests.rs"]
mod sds_tests;
