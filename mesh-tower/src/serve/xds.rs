//! Serving from an xDS server listener (gRFC A36, feature `xds`).
//!
//! [`serve_xds`] is [`serve`](super::serve) for a server whose inbound
//! listener comes from the control plane: it watches the listener named by
//! the bootstrap's `server_listener_resource_name_template` for the bound
//! address on the mesh's subscriber, and follows it.
//!
//! - **Not serving** (rule A9.1, gRFC A36 "Serving and Not Serving"): while
//!   the listener is not published (not received yet, rejected with nothing
//!   cached, does not exist, or a client listener under that name), the
//!   port stays bound but every connection is accepted and closed at once,
//!   before a byte is written: no TLS ServerHello, no HTTP/2 SETTINGS. The
//!   port stays bound so the address is not taken by another process and a
//!   later `Serving` needs no re-bind (gRPC servers do the same).
//! - **Serving state**: every transition goes to the [`watch::Sender`] the
//!   caller passes (the equivalent of gRPC's serving-mode callback) and to
//!   the log at INFO; [`ServingState::NotServing`] carries why, in the words
//!   of the subscriber's status (resource, state, reason, node).
//! - **Listener updates drain** (A9.2): when the Listener resource changes
//!   (its bytes as received differ), connections accepted before keep
//!   running, are sent a graceful shutdown (HTTP/2 GOAWAY; HTTP/1 closes
//!   after the request in flight) and are closed after the drain grace
//!   ([`ServeConfig::with_drain_grace`], gRFC A36's default 10 minutes).
//!   New connections are served with the new listener; the port is never
//!   closed. A store change that leaves the listener's bytes alone (a route
//!   table, a cluster, endpoints, another listener) drains nothing; the
//!   route configuration a server listener names by reference is not
//!   subscribed at all (the model's server has no routes; the translator
//!   records it as ignored), so an update to it cannot drain. A deleted
//!   listener (with `fail_on_data_errors`, or never cached) makes the server
//!   not serving and drains every connection.
//! - **No sniffing** (A9.3): the transport is the [`ServeConfig`]'s mode;
//!   the listener's filter chains that match on `server_names`,
//!   `application_protocols` or a `transport_protocol` other than
//!   `raw_buffer` never match (the translator drops them, recording why).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use mesh_core::model::ListenerKind;
use mesh_xds::TypeUrl;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service;
use tracing::{debug, info};

use super::{Drain, ServeConfig, connection};
use crate::{BoxError, Mesh};

/// Whether an xDS-configured server serves (gRFC A36).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServingState {
    /// The server listener is published: connections are served.
    Serving,
    /// No usable server listener: connections are accepted and closed at
    /// once. The reason names the resource, its state and the node.
    NotServing(String),
}

impl ServingState {
    /// Whether connections are served.
    pub fn is_serving(&self) -> bool {
        matches!(self, ServingState::Serving)
    }
}

/// Serves `service` on `listener` as [`serve`](super::serve) does, while the
/// mesh's xDS subscriber has a server listener for `listener`'s address
/// (see the module docs); reports every serving-state change to `state`.
/// Runs until dropped (which closes the port and every connection).
///
/// Fails at once when the mesh has no xDS subscriber or the listener has
/// no local address.
pub async fn serve_xds<S, B>(
    listener: TcpListener,
    mesh: Mesh,
    config: ServeConfig,
    service: S,
    state: watch::Sender<ServingState>,
) -> Result<(), BoxError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Some(client) = mesh.xds().cloned() else {
        return Err("serve_xds: the mesh has no xDS subscriber (MeshBuilder::with_xds)".into());
    };
    if matches!(config.mode(), super::TransportMode::Permissive(_)) {
        // A9.3: gRPC's xDS servers never sniff (gRFC A36).
        return Err(
            "serve_xds: PERMISSIVE sniffing is not available on xDS server listeners (gRFC A36)"
                .into(),
        );
    }
    let local = listener.local_addr()?;
    let watch = client.watch_server_listener(local);
    let name = watch.name().to_owned();
    let mut changes = mesh.store().subscribe();
    let config = Arc::new(config);
    let (drain_tx, drain_rx) = watch::channel(0u64);
    let mut follower = Follower {
        mesh: &mesh,
        name: &name,
        addr: local,
        served: None,
        generation: 0,
    };
    follower.update(&state, &drain_tx);
    let mut connections = JoinSet::new();
    // The mesh holds the store, so its channel lives as long as we do.
    let mut store_alive = true;
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            changed = changes.changed(), if store_alive => {
                store_alive = changed.is_ok();
                follower.update(&state, &drain_tx);
            }
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        debug!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !follower.serving() {
                    // A9.1: accept then close, before any byte is written.
                    drop(stream);
                    follower.update(&state, &drain_tx);
                    debug!(%remote, listener = %name, "not serving: connection closed");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let config = Arc::clone(&config);
                let service = service.clone();
                let drain = Drain {
                    rx: drain_rx.clone(),
                    accepted: follower.generation,
                    grace: config.drain_grace,
                };
                connections.spawn(async move {
                    if let Err(error) = connection(stream, &config, service, Some(drain)).await {
                        debug!(%remote, %error, "connection ended with an error");
                    }
                });
            }
        }
    }
}

/// Follows one server listener through the store and the subscriber.
struct Follower<'a> {
    mesh: &'a Mesh,
    name: &'a str,
    addr: SocketAddr,
    /// The Listener resource's bytes as served; `None`: not serving.
    served: Option<Vec<u8>>,
    /// Bumped on every drain.
    generation: u64,
}

impl Follower<'_> {
    fn serving(&self) -> bool {
        self.served.is_some()
    }

    /// Re-reads the listener; drains on a change and reports the state.
    fn update(&mut self, state: &watch::Sender<ServingState>, drain: &watch::Sender<u64>) {
        let published = self
            .mesh
            .store()
            .load()
            .listener(self.name)
            .is_some_and(|l| matches!(l.kind, ListenerKind::Server(_)));
        let raw = match (published, self.mesh.xds()) {
            (true, Some(client)) => client
                .raw_resource(TypeUrl::Listener, self.name)
                .map(|a| a.value),
            _ => None,
        };
        let now = if published {
            Some(raw.unwrap_or_default())
        } else {
            None
        };
        if self.served.is_some() && self.served != now {
            // A9.2: a new or removed listener drains what was accepted
            // under the old one; the port stays open.
            self.generation += 1;
            drain.send_replace(self.generation);
            info!(listener = %self.name, addr = %self.addr, "xDS server listener changed: draining existing connections");
        }
        self.served = now;
        let next = if self.served.is_some() {
            ServingState::Serving
        } else {
            ServingState::NotServing(crate::xds::not_serving_reason(self.mesh, self.name))
        };
        state.send_if_modified(|s| {
            if *s == next {
                return false;
            }
            info!(listener = %self.name, addr = %self.addr, state = ?next, "xDS server serving state");
            *s = next.clone();
            true
        });
    }
}
