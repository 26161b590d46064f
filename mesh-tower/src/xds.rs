//! The mesh's xDS integration (feature `xds`): one ADS subscriber per
//! process shared by every client and server of the [`Mesh`].
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_core::ConfigStore;
//! use mesh_xds::{Bootstrap, XdsClient};
//!
//! let store = ConfigStore::new();
//! let bootstrap = Bootstrap::from_env()?; // GRPC_XDS_BOOTSTRAP, as Istio's agent sets it
//! let xds = XdsClient::start(bootstrap.config, store.clone());
//! let mesh = mesh_tower::Mesh::builder(store).with_xds(xds).build();
//! // Watches the listener `reviews.default.svc.cluster.local:9080` while the client lives.
//! let reviews = mesh.client_for("xds:///reviews.default.svc.cluster.local:9080")?;
//! # Ok(()) }
//! ```
//!
//! - **One subscriber** (rule A4.8): the [`XdsClient`] given to
//!   [`MeshBuilder::with_xds`](crate::MeshBuilder::with_xds) is the only ADS
//!   stream of the process. A client made by
//!   [`Mesh::client_for`]`("xds:///<name>")` holds a watch of the listener
//!   `<name>` (gRFC A27: the target path is the listener name, the default
//!   `client_default_listener_resource_name_template` `%s`) for as long as
//!   it or a clone lives; dropping the last one unsubscribes it and what only
//!   it needed (A8.5). [`Mesh::watch_server_listener`] does the same for a
//!   server's inbound listener (gRFC A36).
//! - **Errors caused by xDS state** (A3.14, gRFC A88 "Propagating Status to
//!   Data Plane RPCs"): a call through an `xds:///` target whose listener is
//!   not (yet) published, or whose cluster has no endpoints, fails with
//!   503 / `UNAVAILABLE` and a message naming the resource, its state and
//!   the node ID, for example `xds: listener "echo:7070" does not exist
//!   (DOES_NOT_EXIST; node "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local")`.
//!   Never `NOT_FOUND`.
//! - **File and xDS in one store**: both publish into the one
//!   [`ConfigStore`](mesh_core::ConfigStore) as separate sources (`file:…`
//!   and `xds`). A resource name belongs to one source: an update that
//!   defines a name another source already defines is rejected whole, and
//!   the earlier source keeps it (first come, first kept; the store's rule
//!   for every source pair). The rejected source's last good config stays
//!   in use and the rejection is in its `SourceStatus`, which `/xds_status`
//!   shows beside the per-resource status.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_xds::{ResourceState, ResourceStatus, TypeUrl, Watch, XdsClient};

use crate::Mesh;
use crate::error::Error;

/// What a mesh client of an `xds:///<listener>` target holds.
pub(crate) struct XdsTarget {
    client: XdsClient,
    watch: Watch,
    mesh: Mesh,
}

impl XdsTarget {
    /// The watch of `listener` on the mesh's subscriber, if it has one.
    pub(crate) fn watch(mesh: &Mesh, listener: &str) -> Option<Arc<Self>> {
        let client = mesh.xds()?.clone();
        let watch = client.watch_listener(listener);
        Some(Arc::new(Self {
            client,
            watch,
            mesh: mesh.clone(),
        }))
    }

    /// `e`, or the `UNAVAILABLE` error naming the xDS resource and node
    /// when the failure comes from xDS state (A3.14).
    pub(crate) fn explain(&self, e: Error) -> Error {
        let listener = self.watch.name();
        if e.is_no_route() {
            // A listener that is published routes; the error is then the
            // route table's own (no virtual host or route), not xDS state.
            if self.mesh.store().load().listener(listener).is_some() {
                return e;
            }
            let statuses = self.client.status();
            return Error::xds_unavailable(listener_message(
                &statuses,
                &self.client.node().id,
                listener,
            ));
        }
        if let Some(cluster) = e.no_endpoints_cluster() {
            let statuses = self.client.status();
            return Error::xds_unavailable(cluster_message(
                &statuses,
                &self.client.node().id,
                cluster,
            ));
        }
        e
    }
}

impl Mesh {
    /// The process's ADS subscriber, when the mesh was built
    /// [`with_xds`](crate::MeshBuilder::with_xds).
    pub fn xds(&self) -> Option<&XdsClient> {
        self.xds_client()
    }

    /// Watches the inbound listener of a server listening on `addr`
    /// (named by the bootstrap's `server_listener_resource_name_template`,
    /// gRFC A36) on the mesh's subscriber; keep the watch while serving.
    /// `None` without a subscriber.
    pub fn watch_server_listener(&self, addr: SocketAddr) -> Option<Watch> {
        Some(self.xds()?.watch_server_listener(addr))
    }

    /// The subscriber's status as JSON (see `mesh_xds::csds::status_json`),
    /// with the store's view of the `xds` source (when its last update was
    /// accepted, and the last rejection, such as a name another source
    /// defines). `None` without a subscriber.
    pub fn xds_status_json(&self) -> Option<serde_json::Value> {
        let client = self.xds()?;
        let mut json = mesh_xds::csds::status_json(client.node(), &client.status());
        let source = self
            .store()
            .source_status(&mesh_core::SourceId::new(mesh_xds::client::SOURCE));
        json["store"] = match source {
            None => serde_json::Value::Null,
            Some(s) => serde_json::json!({
                "source": s.source.as_str(),
                "accepted_version": s.accepted_version.map(|v| v.0),
                "accepted_at": s.accepted_at.map(mesh_xds::csds::rfc3339),
                "last_rejection": s.last_rejection.map(|r| serde_json::json!({
                    "at": mesh_xds::csds::rfc3339(r.at),
                    "reason": r.reason,
                })),
            }),
        };
        Some(json)
    }
}

/// Why the server listener `name` does not serve (gRFC A36), in the words
/// of [`listener_message`]; a client listener under that name says so.
pub(crate) fn not_serving_reason(mesh: &Mesh, name: &str) -> String {
    let Some(client) = mesh.xds() else {
        return "no xDS subscriber".to_owned();
    };
    if mesh
        .store()
        .load()
        .listener(name)
        .is_some_and(|l| !matches!(l.kind, mesh_core::model::ListenerKind::Server(_)))
    {
        return format!(
            "xds: listener {name:?} is not a server listener (it has an api_listener; node {:?})",
            client.node().id
        );
    }
    listener_message(&client.status(), &client.node().id, name)
}

/// Why a listener is not routable, from the subscriber's status.
fn listener_message(statuses: &[ResourceStatus], node: &str, listener: &str) -> String {
    let own = statuses
        .iter()
        .find(|s| s.type_url == TypeUrl::Listener && s.name == listener);
    let mut msg = format!("xds: listener {listener:?} ");
    match own {
        None => msg.push_str("is not subscribed yet (REQUESTED"),
        Some(s) if s.state == ResourceState::Acked || s.cached => {
            // The listener arrived; something it needs did not.
            msg.push_str("is waiting for");
            let pending: Vec<String> = statuses
                .iter()
                .filter(|d| d.type_url != TypeUrl::Listener && !d.cached)
                .take(3)
                .map(|d| format!(" {} {:?} ({})", short(d.type_url), d.name, state(d.state)))
                .collect();
            if pending.is_empty() {
                msg.push_str(" its dependencies");
            } else {
                msg.push_str(&pending.join(","));
            }
            msg.push_str(" (");
            msg.push_str(state(s.state));
        }
        Some(s) => {
            msg.push_str(describe(s.state));
            // The does-not-exist reason only repeats the state.
            if let Some(e) = s
                .error
                .as_ref()
                .filter(|_| s.state != ResourceState::DoesNotExist)
            {
                msg.push_str(": ");
                msg.push_str(e);
            }
            msg.push_str(" (");
            msg.push_str(state(s.state));
        }
    }
    msg.push_str(&format!("; node {node:?})"));
    msg
}

/// Why a cluster has no endpoints, from the subscriber's status.
fn cluster_message(statuses: &[ResourceStatus], node: &str, cluster: &str) -> String {
    let find = |t| {
        statuses
            .iter()
            .find(|s| s.type_url == t && s.name == cluster)
    };
    let mut msg = format!("xds: no endpoints in cluster {cluster:?}");
    for (t, s) in [
        (TypeUrl::Cluster, find(TypeUrl::Cluster)),
        (
            TypeUrl::ClusterLoadAssignment,
            find(TypeUrl::ClusterLoadAssignment),
        ),
    ] {
        if let Some(s) = s {
            msg.push_str(&format!("; {} {:?} {}", short(t), s.name, state(s.state)));
            if let Some(e) = &s.error {
                msg.push_str(": ");
                msg.push_str(e);
            }
        }
    }
    msg.push_str(&format!(" (node {node:?})"));
    msg
}

fn short(t: TypeUrl) -> &'static str {
    match t {
        TypeUrl::Listener => "listener",
        TypeUrl::RouteConfiguration => "route configuration",
        TypeUrl::Cluster => "cluster",
        TypeUrl::ClusterLoadAssignment => "endpoints",
        TypeUrl::Secret => "secret",
    }
}

fn state(s: ResourceState) -> &'static str {
    mesh_xds::csds::client_resource_status(s).as_str_name()
}

fn describe(s: ResourceState) -> &'static str {
    match s {
        ResourceState::Requested => "has not been received yet",
        ResourceState::Acked => "is in use",
        ResourceState::Nacked => "was rejected",
        ResourceState::DoesNotExist => "does not exist",
        ResourceState::Timeout => "timed out",
        ResourceState::ReceivedError => "has an error from the control plane",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(t: TypeUrl, name: &str, state: ResourceState) -> ResourceStatus {
        ResourceStatus {
            type_url: t,
            name: name.into(),
            state,
            version: None,
            last_updated: None,
            cached: state == ResourceState::Acked,
            error: None,
            error_at: None,
            error_version: None,
            ignored_fields: Vec::new(),
        }
    }

    #[test]
    fn listener_errors_name_the_resource_its_state_and_the_node() {
        let node = "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local";
        let gone = [st(
            TypeUrl::Listener,
            "echo:7070",
            ResourceState::DoesNotExist,
        )];
        assert_eq!(
            listener_message(&gone, node, "echo:7070"),
            "xds: listener \"echo:7070\" does not exist (DOES_NOT_EXIST; node \"sidecar~10.0.0.1~a.ns~ns.svc.cluster.local\")"
        );
        assert_eq!(
            listener_message(&[], "n", "l"),
            "xds: listener \"l\" is not subscribed yet (REQUESTED; node \"n\")"
        );
        let mut nacked = st(TypeUrl::Listener, "l", ResourceState::Nacked);
        nacked.error = Some("http_filters: empty".into());
        assert_eq!(
            listener_message(&[nacked], "n", "l"),
            "xds: listener \"l\" was rejected: http_filters: empty (NACKED; node \"n\")"
        );
        let waiting = [
            st(TypeUrl::Listener, "l", ResourceState::Acked),
            st(TypeUrl::RouteConfiguration, "r", ResourceState::Acked),
            st(TypeUrl::Cluster, "c", ResourceState::Requested),
        ];
        assert_eq!(
            listener_message(&waiting, "n", "l"),
            "xds: listener \"l\" is waiting for cluster \"c\" (REQUESTED) (ACKED; node \"n\")"
        );
    }

    #[test]
    fn cluster_errors_name_the_cluster_and_its_endpoints() {
        let mut eds = st(
            TypeUrl::ClusterLoadAssignment,
            "c",
            ResourceState::DoesNotExist,
        );
        eds.error = None;
        let statuses = [st(TypeUrl::Cluster, "c", ResourceState::Acked), eds];
        assert_eq!(
            cluster_message(&statuses, "n", "c"),
            "xds: no endpoints in cluster \"c\"; cluster \"c\" ACKED; endpoints \"c\" DOES_NOT_EXIST (node \"n\")"
        );
    }
}
