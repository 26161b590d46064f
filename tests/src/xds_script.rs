//! A scripted ADS server for the xDS conformance suite: it runs tonic's
//! generated ADS service over in-memory pipes (`tokio::io::duplex`), hands
//! every stream to the test, records every request, and lets the test send
//! responses, close streams and refuse or blackhole connections. Nothing
//! touches a socket, so the tests run on paused time without flaking.
//!
//! Also: builders of the real Envoy v3 resources the suite serves (decoded
//! by the real translators of `mesh_xds::translate`), including invalid
//! ones every xDS client rejects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use hyper_util::rt::TokioIo;
use mesh_xds::TypeUrl;
use mesh_xds::client::{ConnectError, Connector};
use mesh_xds::config::{ClientConfig, Protocol};
use mesh_xds::pb::envoy::config::cluster::v3 as cds;
use mesh_xds::pb::envoy::config::core::v3 as core;
use mesh_xds::pb::envoy::config::endpoint::v3 as eds;
use mesh_xds::pb::envoy::config::listener::v3 as lds;
use mesh_xds::pb::envoy::config::route::v3 as rds;
use mesh_xds::pb::envoy::extensions::filters::http::router::v3::Router;
use mesh_xds::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use mesh_xds::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use mesh_xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use mesh_xds::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Endpoint as TonicEndpoint, Server, Uri};
use tonic::{Request, Response, Status, Streaming};

/// How the scripted server treats new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Accept them.
    Accept,
    /// Refuse them at once (connection refused).
    Refuse,
    /// Never answer (a blackholed server).
    Blackhole,
}

/// One stream as the server sees it.
pub struct ScriptStream<Req, Resp> {
    requests: mpsc::Receiver<Req>,
    responses: Option<mpsc::Sender<Result<Resp, Status>>>,
}

/// A SotW stream.
pub type SotwStream = ScriptStream<DiscoveryRequest, DiscoveryResponse>;
/// A delta stream.
pub type DeltaStream = ScriptStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl<Req: std::fmt::Debug, Resp> ScriptStream<Req, Resp> {
    /// The next request the client sent (fails the test after 60 s of
    /// paused time).
    pub async fn recv(&mut self) -> Req {
        match tokio::time::timeout(Duration::from_secs(60), self.requests.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("the client closed the stream"),
            Err(_) => panic!("no request from the client within 60s"),
        }
    }

    /// The next request, if one comes within `d`.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Req> {
        tokio::time::timeout(d, self.requests.recv())
            .await
            .ok()
            .flatten()
    }

    /// Asserts that the client sends nothing within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Some(r) = self.try_recv(d).await {
            panic!("unexpected request: {r:?}");
        }
    }

    /// Asserts that the client closes the stream within `d`, sending
    /// nothing more.
    pub async fn expect_closed(&mut self, d: Duration) {
        match tokio::time::timeout(d, self.requests.recv()).await {
            Ok(None) => {}
            Ok(Some(r)) => panic!("unexpected request: {r:?}"),
            Err(_) => panic!("the stream is still open after {d:?}"),
        }
    }

    /// Sends a response.
    pub async fn send(&self, resp: Resp) {
        self.responses
            .as_ref()
            .expect("stream closed")
            .send(Ok(resp))
            .await
            .expect("client gone");
    }

    /// Ends the stream with status OK (the server closed it).
    pub fn close(&mut self) {
        self.responses = None;
    }

    /// Ends the stream with an error status.
    pub async fn fail(&mut self, status: Status) {
        if let Some(tx) = self.responses.take() {
            let _ = tx.send(Err(status)).await;
        }
    }
}

struct Svc {
    sotw: mpsc::Sender<SotwStream>,
    delta: mpsc::Sender<DeltaStream>,
}

fn pump<T: Send + 'static>(mut inbound: Streaming<T>) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        while let Ok(Some(m)) = inbound.message().await {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    });
    rx
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Svc {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let requests = pump(request.into_inner());
        let (tx, rx) = mpsc::channel(4096);
        let _ = self
            .sotw
            .send(ScriptStream {
                requests,
                responses: Some(tx),
            })
            .await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let requests = pump(request.into_inner());
        let (tx, rx) = mpsc::channel(4096);
        let _ = self
            .delta
            .send(ScriptStream {
                requests,
                responses: Some(tx),
            })
            .await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The scripted server.
pub struct ScriptedAds {
    sotw: tokio::sync::Mutex<mpsc::Receiver<SotwStream>>,
    delta: tokio::sync::Mutex<mpsc::Receiver<DeltaStream>>,
    conns: mpsc::Sender<tokio::io::DuplexStream>,
    mode: AtomicU8,
    connects: AtomicUsize,
    connect_times: Mutex<Vec<tokio::time::Instant>>,
}

impl ScriptedAds {
    /// Starts a server (on the current runtime).
    pub fn start() -> Arc<Self> {
        let (sotw_tx, sotw_rx) = mpsc::channel(64);
        let (delta_tx, delta_rx) = mpsc::channel(64);
        let (conn_tx, conn_rx) = mpsc::channel::<tokio::io::DuplexStream>(64);
        let svc = Svc {
            sotw: sotw_tx,
            delta: delta_tx,
        };
        tokio::spawn(async move {
            let incoming = ReceiverStream::new(conn_rx).map(Ok::<_, std::io::Error>);
            let _ = Server::builder()
                .add_service(
                    AggregatedDiscoveryServiceServer::new(svc)
                        .max_decoding_message_size(usize::MAX),
                )
                .serve_with_incoming(incoming)
                .await;
        });
        Arc::new(Self {
            sotw: tokio::sync::Mutex::new(sotw_rx),
            delta: tokio::sync::Mutex::new(delta_rx),
            conns: conn_tx,
            mode: AtomicU8::new(0),
            connects: AtomicUsize::new(0),
            connect_times: Mutex::new(Vec::new()),
        })
    }

    /// Also serves on a Unix socket at `path` (real I/O: for tests of the
    /// `unix:` transport, not on paused time).
    pub fn serve_unix(&self, path: &std::path::Path) {
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix socket");
        let conns = self.conns.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Bridge the socket to an in-memory pipe the server reads.
                let (a, b) = tokio::io::duplex(1 << 16);
                if conns.send(b).await.is_err() {
                    break;
                }
                tokio::spawn(async move {
                    let (mut s, mut a) = (stream, a);
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut a).await;
                });
            }
        });
    }

    /// Sets how new connections are treated.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Accept,
            1 => Mode::Refuse,
            _ => Mode::Blackhole,
        }
    }

    /// How many connection attempts reached the server.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// The next SotW stream a client opens (fails the test after 60 s of
    /// paused time).
    pub async fn sotw_stream(&self) -> SotwStream {
        let mut rx = self.sotw.lock().await;
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(s)) => s,
            _ => panic!("no SotW stream within 60s"),
        }
    }

    /// The next SotW stream, if one opens within `d`.
    pub async fn try_sotw_stream(&self, d: Duration) -> Option<SotwStream> {
        let mut rx = self.sotw.lock().await;
        tokio::time::timeout(d, rx.recv()).await.ok().flatten()
    }

    /// The next delta stream.
    pub async fn delta_stream(&self) -> DeltaStream {
        let mut rx = self.delta.lock().await;
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(s)) => s,
            _ => panic!("no delta stream within 60s"),
        }
    }

    /// When each connection attempt reached the server (paused-time
    /// instants).
    pub fn connect_times(&self) -> Vec<tokio::time::Instant> {
        self.connect_times.lock().unwrap().clone()
    }

    async fn connect(self: Arc<Self>) -> Result<tonic::transport::Channel, ConnectError> {
        self.connects.fetch_add(1, Ordering::SeqCst);
        self.connect_times
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        match self.mode() {
            Mode::Refuse => return Err("connection refused (scripted)".into()),
            Mode::Blackhole => std::future::pending::<()>().await,
            Mode::Accept => {}
        }
        let conns = self.conns.clone();
        let slot = Arc::new(Mutex::new(Some(())));
        let channel = TonicEndpoint::from_static("http://xds.test")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let conns = conns.clone();
                let slot = Arc::clone(&slot);
                async move {
                    // One connection per channel: the client makes a new
                    // channel for every stream.
                    if slot.lock().unwrap().take().is_none() {
                        return Err(std::io::Error::other("reconnect not scripted"));
                    }
                    let (client, server) = tokio::io::duplex(1 << 16);
                    conns
                        .send(server)
                        .await
                        .map_err(|_| std::io::Error::other("server gone"))?;
                    Ok::<_, std::io::Error>(TokioIo::new(client))
                }
            }))
            .await?;
        Ok(channel)
    }
}

/// A connector that reaches `servers[i]` for the config's server `i`.
pub fn connector(servers: Vec<Arc<ScriptedAds>>) -> Connector {
    Arc::new(move |i, _cfg| {
        let s = servers.get(i).cloned();
        Box::pin(async move {
            match s {
                Some(s) => s.connect().await,
                None => Err("no such scripted server".into()),
            }
        })
    })
}

/// A client config for `n` scripted servers speaking `protocol`, node
/// `node-1`, the default timers.
pub fn config(n: usize, protocol: Protocol) -> ClientConfig {
    let mut c = ClientConfig::new("xds-0.test:15010", "node-1");
    let first = c.servers[0].clone();
    c.servers = (0..n)
        .map(|i| {
            let mut s = first.clone();
            s.uri = format!("xds-{i}.test:15010");
            s.protocol = protocol;
            s
        })
        .collect();
    c
}

// === resources ===

/// `m` as an `Any` of type `t`.
pub fn any<M: Message>(t: TypeUrl, m: &M) -> Any {
    Any {
        type_url: t.as_str().to_owned(),
        value: m.encode_to_vec(),
    }
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn hcm_any(route: hcm::http_connection_manager::RouteSpecifier, filters: bool) -> Any {
    let router = Any {
        type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router".into(),
        value: Router::default().encode_to_vec(),
    };
    let m = hcm::HttpConnectionManager {
        route_specifier: Some(route),
        http_filters: if filters {
            vec![hcm::HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(router)),
                ..Default::default()
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    Any {
        type_url: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager".into(),
        value: m.encode_to_vec(),
    }
}

/// An API listener `name` whose routes come from RDS `route`.
pub fn listener(name: &str, route: &str) -> Any {
    listener_with(name, route, true)
}

/// An API listener that every xDS client rejects: its HCM has no HTTP
/// filters (gRFC A39; istio/istio#36150).
pub fn invalid_listener(name: &str, route: &str) -> Any {
    listener_with(name, route, false)
}

fn listener_with(name: &str, route: &str, filters: bool) -> Any {
    let l = lds::Listener {
        name: name.into(),
        api_listener: Some(lds::ApiListener {
            api_listener: Some(hcm_any(
                hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
                    config_source: Some(ads()),
                    route_config_name: route.into(),
                }),
                filters,
            )),
        }),
        ..Default::default()
    };
    any(TypeUrl::Listener, &l)
}

/// An API listener with its route config inline, sending everything to
/// `cluster`.
pub fn listener_inline(name: &str, cluster: &str) -> Any {
    let l = lds::Listener {
        name: name.into(),
        api_listener: Some(lds::ApiListener {
            api_listener: Some(hcm_any(
                hcm::http_connection_manager::RouteSpecifier::RouteConfig(route_proto(
                    &format!("{name}-inline"),
                    &[cluster],
                )),
                true,
            )),
        }),
        ..Default::default()
    };
    any(TypeUrl::Listener, &l)
}

/// The `RouteConfiguration` behind [`route`], to modify before
/// [`any`].
pub fn route_proto(name: &str, clusters: &[&str]) -> rds::RouteConfiguration {
    rds::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![rds::VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes: clusters
                .iter()
                .enumerate()
                .map(|(i, c)| rds::Route {
                    r#match: Some(rds::RouteMatch {
                        path_specifier: Some(if i + 1 == clusters.len() {
                            rds::route_match::PathSpecifier::Prefix("/".into())
                        } else {
                            rds::route_match::PathSpecifier::Prefix(format!("/{c}/"))
                        }),
                        ..Default::default()
                    }),
                    action: Some(rds::route::Action::Route(rds::RouteAction {
                        cluster_specifier: Some(rds::route_action::ClusterSpecifier::Cluster(
                            (*c).into(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route configuration `name` routing to `clusters` (the last one takes
/// `/`, each other one `/<cluster>/`).
pub fn route(name: &str, clusters: &[&str]) -> Any {
    any(TypeUrl::RouteConfiguration, &route_proto(name, clusters))
}

/// An EDS cluster whose endpoints are the assignment `eds`.
pub fn cluster(name: &str, eds: &str) -> Any {
    any(TypeUrl::Cluster, &cluster_proto(name, eds, None))
}

/// A route configuration `name` sending everything to `cluster`, hashed by
/// the request header `header` (Envoy `RouteAction.hash_policy`).
pub fn route_hashed(name: &str, cluster: &str, header: &str) -> Any {
    let mut rc = route_proto(name, &[cluster]);
    if let Some(rds::route::Action::Route(a)) = &mut rc.virtual_hosts[0].routes[0].action {
        a.hash_policy = vec![rds::route_action::HashPolicy {
            policy_specifier: Some(rds::route_action::hash_policy::PolicySpecifier::Header(
                rds::route_action::hash_policy::Header {
                    header_name: header.into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }];
    }
    any(TypeUrl::RouteConfiguration, &rc)
}

/// An EDS cluster balanced by `RING_HASH`.
pub fn ring_hash_cluster(name: &str, eds: &str) -> Any {
    let mut c = cluster_proto(name, eds, None);
    c.lb_policy = cds::cluster::LbPolicy::RingHash as i32;
    any(TypeUrl::Cluster, &c)
}

/// A cluster every xDS client rejects: least-request with
/// `choice_count` 1 (grpc-go `unmarshal_cds.go`, A2.9).
pub fn invalid_cluster(name: &str) -> Any {
    any(TypeUrl::Cluster, &cluster_proto(name, name, Some(1)))
}

/// The `Cluster` behind [`cluster`] (round robin), or a least-request
/// one with `choice_count`, to modify before [`any`].
pub fn cluster_proto(name: &str, eds: &str, choice_count: Option<u32>) -> cds::Cluster {
    cds::Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cds::cluster::ClusterDiscoveryType::Type(
            cds::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cds::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: eds.into(),
        }),
        lb_policy: if choice_count.is_some() {
            cds::cluster::LbPolicy::LeastRequest as i32
        } else {
            cds::cluster::LbPolicy::RoundRobin as i32
        },
        lb_config: choice_count.map(|n| {
            cds::cluster::LbConfig::LeastRequestLbConfig(cds::cluster::LeastRequestLbConfig {
                choice_count: Some(mesh_xds::pb::google::protobuf::UInt32Value { value: n }),
                ..Default::default()
            })
        }),
        ..Default::default()
    }
}

/// A cluster load assignment `name` with `addrs`, weight 1 each.
pub fn endpoints(name: &str, addrs: &[&str]) -> Any {
    any(TypeUrl::ClusterLoadAssignment, &cla(name, addrs, 1))
}

/// An assignment every xDS client rejects: an endpoint weight of 0
/// (A2.8).
pub fn invalid_endpoints(name: &str, addr: &str) -> Any {
    any(TypeUrl::ClusterLoadAssignment, &cla(name, &[addr], 0))
}

/// The `ClusterLoadAssignment` behind [`endpoints`], every endpoint of
/// weight `weight`.
pub fn cla(name: &str, addrs: &[&str], weight: u32) -> eds::ClusterLoadAssignment {
    eds::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![eds::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "r".into(),
                zone: "z".into(),
                sub_zone: String::new(),
            }),
            load_balancing_weight: Some(mesh_xds::pb::google::protobuf::UInt32Value { value: 1 }),
            lb_endpoints: addrs
                .iter()
                .map(|a| {
                    let sa: SocketAddr = a.parse().expect("socket address");
                    eds::LbEndpoint {
                        host_identifier: Some(eds::lb_endpoint::HostIdentifier::Endpoint(
                            eds::Endpoint {
                                address: Some(core::Address {
                                    address: Some(core::address::Address::SocketAddress(
                                        core::SocketAddress {
                                            address: sa.ip().to_string(),
                                            port_specifier: Some(
                                                core::socket_address::PortSpecifier::PortValue(
                                                    u32::from(sa.port()),
                                                ),
                                            ),
                                            ..Default::default()
                                        },
                                    )),
                                }),
                                ..Default::default()
                            },
                        )),
                        load_balancing_weight: Some(mesh_xds::pb::google::protobuf::UInt32Value {
                            value: weight,
                        }),
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A SotW response of type `t`.
pub fn response(t: TypeUrl, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: t.as_str().into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

/// A delta response of type `t`; each resource named by its decoded name
/// and given `version`.
pub fn delta_response(
    t: TypeUrl,
    nonce: &str,
    resources: Vec<(&str, &str, Any)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: nonce.into(),
        resources: resources
            .into_iter()
            .map(|(name, version, a)| Resource {
                name: name.into(),
                version: version.into(),
                resource: Some(a),
                ..Default::default()
            })
            .collect(),
        type_url: t.as_str().into(),
        removed_resources: removed.iter().map(|s| (*s).to_owned()).collect(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

/// The type URL of Envoy's `Resource` wrapper.
pub const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// `body` wrapped in an Envoy `Resource` named `name` with `ttl` (A5.3),
/// for a SotW response; without a body it is a TTL heartbeat.
pub fn wrapped(name: &str, body: Option<Any>, ttl: Option<Duration>) -> Any {
    Any {
        type_url: RESOURCE_WRAPPER.into(),
        value: ttl_resource(name, "", body, ttl).encode_to_vec(),
    }
}

/// An Envoy `Resource` (delta responses carry these) with a TTL; without
/// a body it is a heartbeat.
pub fn ttl_resource(
    name: &str,
    version: &str,
    body: Option<Any>,
    ttl: Option<Duration>,
) -> Resource {
    Resource {
        name: name.into(),
        version: version.into(),
        resource: body,
        ttl: ttl.map(|d| mesh_xds::pb::google::protobuf::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
        ..Default::default()
    }
}
