//! What one xDS resource becomes after decoding and validation: the
//! vocabulary shared by the translators ([`crate::translate`]), the ADS
//! client (which caches these per type and name and assembles complete
//! configs from them) and the status it reports.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use mesh_core::model::{Cluster, Endpoint, Listener, RouteTable, SecurityPolicies};

use crate::TypeUrl;
use crate::translate::HttpDefaults;

/// One resource of a `DiscoveryResponse`, decoded, validated and
/// translated into the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The resource name, as the control plane names it (the name watches
    /// and status use).
    pub name: String,
    /// The translated value.
    pub resource: XdsResource,
    /// Fields that were set but are not applied (gRFC A27: unknown or
    /// unsupported fields are ignored for forward compatibility), as
    /// field paths such as `common_lb_config.update_merge_window`. Reported
    /// in the resource status and logged once per resource version.
    pub ignored: Vec<String>,
}

/// A translated resource, by type.
#[derive(Clone, Debug, PartialEq)]
pub enum XdsResource {
    /// LDS.
    Listener(ListenerResource),
    /// RDS: a route table named after the `RouteConfiguration`.
    RouteConfiguration(RouteTable),
    /// CDS.
    Cluster(Box<ClusterResource>),
    /// EDS.
    Endpoints(EndpointsResource),
    /// SDS.
    Secret(SecretResource),
}

impl XdsResource {
    /// The xDS type the value came from.
    pub fn type_url(&self) -> TypeUrl {
        match self {
            Self::Listener(_) => TypeUrl::Listener,
            Self::RouteConfiguration(_) => TypeUrl::RouteConfiguration,
            Self::Cluster(_) => TypeUrl::Cluster,
            Self::Endpoints(_) => TypeUrl::ClusterLoadAssignment,
            Self::Secret(_) => TypeUrl::Secret,
        }
    }
}

/// A `Listener`.
///
/// A client (API) listener becomes a [`Listener`] of kind `Client` whose
/// route table is either the RDS `route_config_name` (then
/// `inline_route` is `None` and the client watches that
/// `RouteConfiguration`) or a table carried inline in the listener.
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerResource {
    /// The model listener.
    pub listener: Listener,
    /// The route table of an inline `route_config`; its name is the
    /// listener's route table name.
    pub inline_route: Option<RouteTable>,
    /// Server-side security the listener carries (mTLS mode from the
    /// filter chains' `DownstreamTlsContext`, RBAC as authorization
    /// policies), contributed to the snapshot's [`SecurityPolicies`].
    pub security: SecurityPolicies,
    /// What the listener's HTTP connection manager contributes to its
    /// routes (fault filter, `max_stream_duration`). When it is not
    /// [`HttpDefaults::default`], the `RouteConfiguration` this listener
    /// names must be translated with it
    /// ([`route_configuration`](crate::translate::route_configuration))
    /// rather than taken from the RDS cache as is.
    pub http: HttpDefaults,
}

impl ListenerResource {
    /// The `RouteConfiguration` this listener needs from RDS, if its routes
    /// are not inline.
    pub fn rds_name(&self) -> Option<&str> {
        match &self.inline_route {
            Some(_) => None,
            None => self.listener.route_table().map(|n| n.as_str()),
        }
    }
}

/// A `Cluster`.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterResource {
    /// The model cluster, named as the control plane names it.
    pub cluster: Cluster,
    /// Where its endpoints come from.
    pub endpoints: ClusterEndpoints,
}

/// Where a cluster's endpoints come from.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterEndpoints {
    /// EDS: the `ClusterLoadAssignment` with this name (the cluster's
    /// `eds_cluster_config.service_name`, or the cluster name when that is
    /// empty).
    Eds(String),
    /// A `STATIC` or `LOGICAL_DNS` cluster's own `load_assignment`.
    Inline(Vec<Endpoint>),
}

impl ClusterResource {
    /// The `ClusterLoadAssignment` this cluster needs from EDS, if any.
    pub fn eds_name(&self) -> Option<&str> {
        match &self.endpoints {
            ClusterEndpoints::Eds(name) => Some(name),
            ClusterEndpoints::Inline(_) => None,
        }
    }
}

/// A `ClusterLoadAssignment`: the endpoints of every locality and priority,
/// flattened (each [`Endpoint`] carries its locality, priority and
/// effective weight). The client keys them by the cluster that names this
/// assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointsResource {
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// An SDS `Secret`, as PEM text for the identity store.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretResource {
    /// `tls_certificate`: the workload's certificate chain and key.
    TlsCertificate {
        /// The chain, leaf first (PEM).
        certificate_chain: Arc<str>,
        /// The private key (PEM).
        private_key: Arc<str>,
    },
    /// `validation_context`: the trusted roots.
    ValidationContext {
        /// The CA certificates (PEM).
        trusted_ca: Arc<str>,
    },
}

impl fmt::Debug for SecretResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TlsCertificate {
                certificate_chain, ..
            } => f
                .debug_struct("TlsCertificate")
                .field("certificate_chain", &certificate_chain.len())
                .field("private_key", &"<redacted>")
                .finish(),
            Self::ValidationContext { trusted_ca } => f
                .debug_struct("ValidationContext")
                .field("trusted_ca", &trusted_ca.len())
                .finish(),
        }
    }
}

/// Why a resource was rejected (the reason of a NACK).
///
/// The name is known whenever the resource decoded far enough to read it;
/// then only that resource is rejected and the other resources of the
/// response still apply (gRFC A46). Without a name the whole response is
/// rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The resource's name, when it could be read.
    pub name: Option<String>,
    /// The field path and the problem, such as
    /// `route_config.virtual_hosts[0].routes[2].route.weighted_clusters:
    /// weights sum to 0`.
    pub reason: String,
}

impl DecodeError {
    /// An error for the resource `name` (when known).
    pub fn new(name: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            name: name.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for DecodeError {}

/// What a translator needs to know beyond the resource itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeContext {
    /// The certificate-provider instance names of the bootstrap
    /// (`certificate_providers`). A TLS context naming any other instance
    /// is rejected (it cannot be honoured: gRFC A29).
    pub certificate_providers: BTreeSet<String>,
    /// The SDS secret pairs the process subscribes into its identity store
    /// ([`XdsClient::watch_identity`](crate::XdsClient::watch_identity)).
    /// A TLS context may reference these secrets by name (they then mean
    /// the process identity and its roots); a reference to any other
    /// secret is rejected (rules A2.7: it cannot be resolved).
    pub sds_identities: BTreeSet<crate::config::SdsIdentity>,
}
