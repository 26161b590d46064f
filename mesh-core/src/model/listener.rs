//! Listeners: the entry points that bind a port (or a target name) to a
//! route table.

use crate::model::endpoint::Labels;
use crate::model::policy::TokenBucket;
use crate::name::{ListenerName, RouteTableName};

/// What a listener does.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerKind {
    /// Outbound: requests this process sends to `port` are routed by the
    /// route table. This is Istio's sidecar outbound listener
    /// (`0.0.0.0_<port>` with RDS route config `<port>`), and the API
    /// listener that proxyless gRPC resolves `xds:///<name>` to.
    Client {
        /// The route table that routes the listener's requests.
        route_table: RouteTableName,
    },
    /// Inbound: policies for requests this process serves on `port` (a
    /// sidecar's inbound listener `inbound|<port>`).
    Server(ServerPolicy),
}

/// What a server listener enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerPolicy {
    /// A local rate limit on every request to the port.
    pub rate_limit: Option<TokenBucket>,
    /// The workloads the policy applies to: those whose labels include
    /// these (Istio's `workloadSelector`); empty selects every workload.
    pub workload_selector: Labels,
}

/// A listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The listener name.
    pub name: ListenerName,
    /// The port requests are addressed to.
    pub port: u16,
    /// What the listener does.
    pub kind: ListenerKind,
}

impl Listener {
    /// A server listener for `port` (0: every port) with `policy`.
    pub fn server(name: impl Into<ListenerName>, port: u16, policy: ServerPolicy) -> Self {
        Self {
            name: name.into(),
            port,
            kind: ListenerKind::Server(policy),
        }
    }

    /// An outbound listener for `port`, named as Istio names them
    /// (`0.0.0.0_<port>`).
    pub fn client(port: u16, route_table: impl Into<RouteTableName>) -> Self {
        Self {
            name: ListenerName::new(format!("0.0.0.0_{port}")),
            port,
            kind: ListenerKind::Client {
                route_table: route_table.into(),
            },
        }
    }

    /// Whether this is a client listener that routes every request sent to
    /// its port ([`Snapshot::route`](crate::Snapshot::route)): one named
    /// `0.0.0.0_<port>`, as [`Listener::client`] and Istio's sidecar
    /// outbound listeners are. Other client listeners, such as proxyless
    /// gRPC's `<fqdn>:<port>` API listeners, are reached by name only.
    pub fn claims_port(&self) -> bool {
        matches!(self.kind, ListenerKind::Client { .. })
            && self
                .name
                .as_str()
                .strip_prefix("0.0.0.0_")
                .and_then(|p| p.parse::<u16>().ok())
                == Some(self.port)
    }

    /// The route table of a client listener.
    pub fn route_table(&self) -> Option<&RouteTableName> {
        match &self.kind {
            ListenerKind::Client { route_table } => Some(route_table),
            ListenerKind::Server(_) => None,
        }
    }
}
