//! The xDS v3 type URLs and how they map to the model's resource kinds.

use mesh_core::ResourceKind;

/// The xDS v3 resource types the mesh subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TypeUrl {
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    RouteConfiguration,
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    ClusterLoadAssignment,
    /// `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
    Secret,
}

impl TypeUrl {
    /// Every type, in the order of the LDS → RDS → CDS → EDS cascade, then
    /// SDS.
    pub const ALL: [TypeUrl; 5] = [
        Self::Listener,
        Self::RouteConfiguration,
        Self::Cluster,
        Self::ClusterLoadAssignment,
        Self::Secret,
    ];

    /// The full type URL, as sent in `DiscoveryRequest.type_url`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            Self::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    /// The type named by `url`, if the mesh knows it.
    pub fn parse(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == url)
    }

    /// The model resource this type translates into (`None` for secrets,
    /// which go to the identity store).
    pub const fn resource_kind(self) -> Option<ResourceKind> {
        match self {
            Self::Listener => Some(ResourceKind::Listener),
            Self::RouteConfiguration => Some(ResourceKind::RouteTable),
            Self::Cluster => Some(ResourceKind::Cluster),
            Self::ClusterLoadAssignment => Some(ResourceKind::EndpointSet),
            Self::Secret => None,
        }
    }

    /// The type a model resource is served as.
    pub const fn of(kind: ResourceKind) -> Self {
        match kind {
            ResourceKind::Listener => Self::Listener,
            ResourceKind::RouteTable => Self::RouteConfiguration,
            ResourceKind::Cluster => Self::Cluster,
            ResourceKind::EndpointSet => Self::ClusterLoadAssignment,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip() {
        for t in TypeUrl::ALL {
            assert_eq!(TypeUrl::parse(t.as_str()), Some(t));
            if let Some(kind) = t.resource_kind() {
                assert_eq!(TypeUrl::of(kind), t);
            }
        }
        assert_eq!(
            TypeUrl::parse("type.googleapis.com/envoy.config.cluster.v2.Cluster"),
            None,
            "v2 is not served"
        );
    }
}
