//! The protocol state machine, free of I/O: per-type subscriptions, the
//! cache, versions and nonces, ACK/NACK, deletion and the does-not-exist
//! timers. The client task feeds it responses and timer ticks and sends
//! the requests it returns; everything here is synchronous so it can run
//! on the task without awaiting anything (A1.13, A4.9).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as ResourceWrapper,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::time::Instant;

use super::Decoder;
use super::cache::Entry;
use super::metrics::Metrics;
use crate::TypeUrl;
use crate::config::{ClientConfig, Protocol, SdsIdentity};
use crate::resource::{DecodeContext, XdsResource};
use crate::status::{ResourceState, ResourceStatus};

/// The longest `error_detail.message` sent to a server (A1.6, Envoy's
/// `GrpcMuxImplTest.RpcErrorMessageTruncated`); the full text is logged.
pub(crate) const MAX_ERROR_DETAIL: usize = 4096;

/// The does-not-exist timer with `resource_timer_is_transient_error`
/// (gRFC A88).
pub(crate) const TRANSIENT_RESOURCE_TIMEOUT: Duration = Duration::from_secs(30);

/// The type URL of Envoy's `Resource` wrapper, which SotW responses use to
/// give a resource a TTL (A5.3, xds_protocol.rst "TTL").
pub(crate) const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// One resource of a response before decoding: its name when the response
/// says it (delta, or a SotW `Resource` wrapper), its body (none: a TTL
/// heartbeat, A5.3) and its TTL.
pub(crate) struct Item {
    name: Option<String>,
    body: Option<Any>,
    ttl: Option<Duration>,
}

impl Item {
    fn plain(any: Any) -> Self {
        Self {
            name: None,
            body: Some(any),
            ttl: None,
        }
    }

    /// An Envoy `Resource`; a negative TTL is an error of that resource.
    fn wrapped(r: ResourceWrapper) -> Result<Self, (String, String)> {
        let ttl = match r.ttl {
            None => None,
            Some(d) if d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos) => {
                Some(Duration::new(d.seconds as u64, d.nanos as u32))
            }
            Some(d) => {
                return Err((
                    r.name,
                    format!("ttl: {}s {}ns is not a valid TTL", d.seconds, d.nanos),
                ));
            }
        };
        Ok(Self {
            name: Some(r.name),
            body: r.resource,
            ttl,
        })
    }
}

/// A resource of a response that passed validation: its value (`None`
/// for a TTL heartbeat) and its TTL.
type Received = (Option<(crate::Decoded, Any)>, Option<Duration>);

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's
/// `error_detail` (what grpc-go and Envoy send).
const INVALID_ARGUMENT: i32 = 3;

/// The position of a type in per-type arrays ([`TypeUrl::ALL`] order).
pub(crate) fn type_index(t: TypeUrl) -> usize {
    match t {
        TypeUrl::Listener => 0,
        TypeUrl::RouteConfiguration => 1,
        TypeUrl::Cluster => 2,
        TypeUrl::ClusterLoadAssignment => 3,
        TypeUrl::Secret => 4,
    }
}

/// A request to send on the current stream.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Request {
    /// State of the World.
    Sotw(DiscoveryRequest),
    /// Incremental.
    Delta(DeltaDiscoveryRequest),
}

/// A response received on the current stream.
#[derive(Clone, Debug)]
pub(crate) enum Response {
    /// State of the World.
    Sotw(DiscoveryResponse),
    /// Incremental.
    Delta(DeltaDiscoveryResponse),
}

/// Per type: what is wanted, what is cached, and the per-stream nonce and
/// subscription.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// Every watched resource and every resource still cached, by name.
    pub(crate) entries: BTreeMap<String, Entry>,
    /// The names the cascade needs now.
    pub(crate) wanted: BTreeSet<String>,
    /// The nonce of the last response of this type on the current stream
    /// (A1.4: per stream, reset on reconnect).
    nonce: String,
    /// The names sent on the current stream; `None` when nothing was sent
    /// for this type on it.
    sent: Option<BTreeSet<String>>,
    /// The delta `system_version_info` of the last response (status only).
    pub(crate) system_version: Option<String>,
}

/// The protocol state of one client.
pub(crate) struct State {
    pub(crate) config: ClientConfig,
    decoder: Decoder,
    ctx: DecodeContext,
    /// The listener names the handles watch, with their counts.
    pub(crate) interest: BTreeMap<String, usize>,
    /// Per type, in [`TypeUrl::ALL`] order.
    pub(crate) types: [TypeState; 5],
    /// The last accepted SotW `version_info` per server and type (A1.4:
    /// survives reconnects, never reset by a stream break).
    versions: HashMap<(usize, TypeUrl), String>,
    /// The server of the current stream.
    pub(crate) server: usize,
    /// Whether the node was sent on the current stream (A1.1).
    node_sent: bool,
    /// Whether the current stream is connected (timers run only then).
    connected: bool,
}

/// The outcome of applying one response.
pub(crate) struct Applied {
    /// The ACK or NACK to send.
    pub(crate) ack: Request,
    /// Whether any value in use or state changed.
    pub(crate) changed: bool,
}

impl State {
    pub(crate) fn new(config: ClientConfig, decoder: Decoder) -> Self {
        let ctx = DecodeContext {
            certificate_providers: config
                .certificate_providers
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            sds_identities: BTreeSet::new(),
        };
        Self {
            config,
            decoder,
            ctx,
            interest: BTreeMap::new(),
            types: Default::default(),
            versions: HashMap::new(),
            server: 0,
            node_sent: false,
            connected: false,
        }
    }

    fn ts(&self, t: TypeUrl) -> &TypeState {
        &self.types[type_index(t)]
    }

    fn ts_mut(&mut self, t: TypeUrl) -> &mut TypeState {
        &mut self.types[type_index(t)]
    }

    fn protocol(&self) -> Protocol {
        self.config
            .servers
            .get(self.server)
            .map(|s| s.protocol)
            .unwrap_or_default()
    }

    fn fail_on_data_errors(&self) -> bool {
        self.config
            .servers
            .get(self.server)
            .is_some_and(|s| s.features.fail_on_data_errors)
    }

    fn ignore_resource_deletion(&self) -> bool {
        self.config
            .servers
            .get(self.server)
            .is_some_and(|s| s.features.ignore_resource_deletion)
    }

    /// The does-not-exist timeout: 15 s (gRFC A57), or 30 s and TIMEOUT
    /// with `resource_timer_is_transient_error` (gRFC A88, A3.11).
    fn resource_timeout(&self) -> (Duration, ResourceState) {
        let transient = self
            .config
            .servers
            .get(self.server)
            .is_some_and(|s| s.features.resource_timer_is_transient_error);
        if transient {
            (
                TRANSIENT_RESOURCE_TIMEOUT.max(self.config.resource_timeout),
                ResourceState::Timeout,
            )
        } else {
            (self.config.resource_timeout, ResourceState::DoesNotExist)
        }
    }

    // === stream lifecycle ===

    /// Starts a stream to `server`: nonces and the per-stream
    /// subscriptions are forgotten (A1.4, A7.6), versions are kept, and
    /// running timers stop (A3.3).
    pub(crate) fn stream_started(&mut self, server: usize) {
        self.server = server;
        self.node_sent = false;
        self.connected = false;
        for ts in &mut self.types {
            ts.nonce.clear();
            ts.sent = None;
            for e in ts.entries.values_mut() {
                e.timer = None;
            }
        }
    }

    /// The stream is established: the requests sent so far are on the
    /// wire, the timers of uncached resources may start (A3.1).
    pub(crate) fn stream_connected(&mut self, now: Instant) {
        self.connected = true;
        self.start_timers(now);
    }

    /// The stream ended: timers stop (A3.3).
    pub(crate) fn stream_ended(&mut self) {
        self.connected = false;
        for ts in &mut self.types {
            for e in ts.entries.values_mut() {
                e.timer = None;
            }
        }
    }

    /// Starts the timer of every subscribed, uncached, still-requested
    /// resource that has none (A3.1, A3.3: after a reconnect only the
    /// uncached ones restart).
    pub(crate) fn start_timers(&mut self, now: Instant) {
        if !self.connected {
            return;
        }
        let (timeout, _) = self.resource_timeout();
        for ts in &mut self.types {
            let Some(sent) = &ts.sent else { continue };
            for name in sent {
                if let Some(e) = ts.entries.get_mut(name)
                    && e.pending()
                    && e.timer.is_none()
                {
                    e.timer = Some(now + timeout);
                }
            }
        }
    }

    /// The earliest running timer: does-not-exist timers (running only on
    /// a connected stream) and TTLs (running always, A5.3).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.types
            .iter()
            .flat_map(|ts| ts.entries.values().flat_map(|e| [e.timer, e.ttl]))
            .flatten()
            .min()
    }

    /// Fires every timer due at `now`: does-not-exist timers (A3.2) and
    /// TTLs (A5.3). Returns whether any fired.
    pub(crate) fn fire_timers(&mut self, now: Instant) -> bool {
        let (timeout, state) = self.resource_timeout();
        let sys = SystemTime::now();
        let mut fired = false;
        for (i, ts) in self.types.iter_mut().enumerate() {
            for (name, e) in &mut ts.entries {
                if e.ttl.is_some_and(|t| t <= now) {
                    fired |= e.expire(TypeUrl::ALL[i], name, sys);
                }
                if e.timer.is_some_and(|t| t <= now) {
                    e.timer = None;
                    e.state = state;
                    e.error = Some(format!(
                        "{} {name:?} not received within {}s of the request{}",
                        TypeUrl::ALL[i].as_str(),
                        timeout.as_secs(),
                        if state == ResourceState::Timeout {
                            " (timeout)"
                        } else {
                            ": does not exist"
                        }
                    ));
                    e.error_at = Some(sys);
                    tracing::warn!(resource = %name, type_url = TypeUrl::ALL[i].as_str(), "xDS resource not received: does-not-exist timer fired");
                    fired = true;
                }
            }
        }
        fired
    }

    /// Whether a watched resource is neither cached nor known not to exist
    /// (gRFC A71: the condition for falling back).
    pub(crate) fn has_unsettled(&self) -> bool {
        self.types.iter().any(|ts| {
            ts.wanted
                .iter()
                .any(|n| ts.entries.get(n).is_none_or(|e| !e.settled()))
        })
    }

    /// Whether nothing of any type is wanted (A1.12: then no stream is
    /// kept open).
    pub(crate) fn idle(&self) -> bool {
        self.types.iter().all(|ts| ts.wanted.is_empty())
    }

    /// Forgets the accepted versions: nothing is cached any more, so the
    /// next stream starts with empty versions (A1.12; a server must not
    /// take an old version as "the client has it").
    pub(crate) fn forget_versions(&mut self) {
        self.versions.clear();
    }

    // === subscriptions ===

    /// Sets the SDS identities the process watches: what the translators
    /// accept as secret references and check secrets against, and the
    /// secret names subscribed. Returns whether the names changed.
    pub(crate) fn set_sds_identities(&mut self, identities: BTreeSet<SdsIdentity>) -> bool {
        let names = identities
            .iter()
            .flat_map(|i| [i.certificate.clone(), i.validation.clone()])
            .collect();
        self.ctx.sds_identities = identities;
        self.set_wanted(TypeUrl::Secret, names)
    }

    /// Sets the wanted names of `t`, adding entries for new names and
    /// dropping the entries of names no longer wanted (A5.5). Returns
    /// whether the set changed.
    pub(crate) fn set_wanted(&mut self, t: TypeUrl, wanted: BTreeSet<String>) -> bool {
        let ts = self.ts_mut(t);
        if ts.wanted == wanted {
            return false;
        }
        // A5.5: an entry nobody wants is dropped (no request is made for
        // that), noting an ignored deletion still pending (gRFC A53).
        ts.entries.retain(|name, e| {
            let keep = wanted.contains(name);
            if !keep && e.deletion_ignored {
                tracing::info!(resource = %name, type_url = t.as_str(), "xDS resource no longer watched; its ignored deletion is dropped with it");
            }
            keep
        });
        for name in &wanted {
            ts.entries
                .entry(name.clone())
                .or_insert_with(Entry::requested);
        }
        ts.wanted = wanted;
        true
    }

    /// The subscription requests the current stream still needs: for each
    /// type whose wanted names differ from what was sent on this stream.
    /// The first request of a stream carries the node (A1.1).
    pub(crate) fn subscription_requests(&mut self) -> Vec<Request> {
        let mut out = Vec::new();
        for t in TypeUrl::ALL {
            let ts = self.ts(t);
            let differs = match &ts.sent {
                None => !ts.wanted.is_empty(),
                Some(sent) => *sent != ts.wanted,
            };
            if !differs {
                continue;
            }
            let req = match self.protocol() {
                Protocol::StateOfTheWorld => Request::Sotw(self.sotw_request(t, None)),
                Protocol::Delta => Request::Delta(self.delta_subscription(t)),
            };
            out.push(req);
        }
        out
    }

    /// The opening requests of a stream to `server` made alongside the
    /// current one (the fallback probe of the primary, gRFC A71): every
    /// wanted name, that server's versions, empty nonces, the node first.
    pub(crate) fn opening_requests(&self, server: usize) -> Vec<Request> {
        let protocol = self
            .config
            .servers
            .get(server)
            .map(|s| s.protocol)
            .unwrap_or_default();
        let mut out = Vec::new();
        for t in TypeUrl::ALL {
            let ts = self.ts(t);
            if ts.wanted.is_empty() {
                continue;
            }
            let node = out.is_empty().then(|| self.config.node.clone());
            out.push(match protocol {
                Protocol::StateOfTheWorld => Request::Sotw(DiscoveryRequest {
                    version_info: self.versions.get(&(server, t)).cloned().unwrap_or_default(),
                    node,
                    resource_names: ts.wanted.iter().cloned().collect(),
                    type_url: t.as_str().to_owned(),
                    ..Default::default()
                }),
                Protocol::Delta => Request::Delta(DeltaDiscoveryRequest {
                    node,
                    type_url: t.as_str().to_owned(),
                    resource_names_subscribe: ts.wanted.iter().cloned().collect(),
                    initial_resource_versions: ts
                        .wanted
                        .iter()
                        .filter_map(|n| {
                            let e = ts.entries.get(n)?;
                            e.value.as_ref()?;
                            Some((n.clone(), e.version.clone()?))
                        })
                        .collect(),
                    ..Default::default()
                }),
            });
        }
        out
    }

    /// Adopts a stream opened with `opening` (made by
    /// [`opening_requests`](Self::opening_requests), possibly before the
    /// wanted names last changed) as the current one: what it subscribed
    /// is what `opening` carried, so the next
    /// [`subscription_requests`](Self::subscription_requests) sends the
    /// difference.
    pub(crate) fn adopt_stream(&mut self, server: usize, opening: &[Request]) {
        self.stream_started(server);
        self.node_sent = true;
        for r in opening {
            let (type_url, names): (&str, &[String]) = match r {
                Request::Sotw(r) => (&r.type_url, &r.resource_names),
                Request::Delta(r) => (&r.type_url, &r.resource_names_subscribe),
            };
            if let Some(t) = TypeUrl::parse(type_url) {
                self.ts_mut(t).sent = Some(names.iter().cloned().collect());
            }
        }
    }

    fn node(&mut self) -> Option<Node> {
        if self.node_sent {
            None
        } else {
            self.node_sent = true;
            Some(self.config.node.clone())
        }
    }

    /// A SotW request for `t` with the wanted names, the last accepted
    /// version of this server and the stream's nonce; a NACK when `error`
    /// is set (A1.3, A1.5).
    fn sotw_request(&mut self, t: TypeUrl, error: Option<String>) -> DiscoveryRequest {
        let node = self.node();
        let version = self
            .versions
            .get(&(self.server, t))
            .cloned()
            .unwrap_or_default();
        let ts = self.ts_mut(t);
        ts.sent = Some(ts.wanted.clone());
        DiscoveryRequest {
            version_info: version,
            node,
            resource_names: ts.wanted.iter().cloned().collect(),
            type_url: t.as_str().to_owned(),
            response_nonce: ts.nonce.clone(),
            error_detail: error.map(error_detail),
            ..Default::default()
        }
    }

    /// A delta subscription change for `t`: the names to add and to drop
    /// since the last request of this stream, and on a new stream every
    /// name with the versions held (A7.6). No nonce: it is spontaneous
    /// (A7.5).
    fn delta_subscription(&mut self, t: TypeUrl) -> DeltaDiscoveryRequest {
        let node = self.node();
        let ts = self.ts_mut(t);
        let new_stream = ts.sent.is_none();
        let sent = ts.sent.take().unwrap_or_default();
        let subscribe: Vec<String> = ts.wanted.difference(&sent).cloned().collect();
        let unsubscribe: Vec<String> = sent.difference(&ts.wanted).cloned().collect();
        let initial_resource_versions = if new_stream {
            ts.wanted
                .iter()
                .filter_map(|n| {
                    let e = ts.entries.get(n)?;
                    e.value.as_ref()?;
                    Some((n.clone(), e.version.clone()?))
                })
                .collect()
        } else {
            HashMap::new()
        };
        ts.sent = Some(ts.wanted.clone());
        DeltaDiscoveryRequest {
            node,
            type_url: t.as_str().to_owned(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions,
            ..Default::default()
        }
    }

    // === responses ===

    /// Applies one response and returns the ACK or NACK for it.
    pub(crate) fn apply(&mut self, response: Response, metrics: &Metrics) -> Applied {
        match response {
            Response::Sotw(r) => self.apply_sotw(r, metrics),
            Response::Delta(r) => self.apply_delta(r, metrics),
        }
    }

    fn apply_sotw(&mut self, resp: DiscoveryResponse, metrics: &Metrics) -> Applied {
        let sys = SystemTime::now();
        let Some(t) = TypeUrl::parse(&resp.type_url) else {
            // A1.8: a type the client does not know is NACKed; no state
            // of any other type is touched.
            let node = self.node();
            return Applied {
                ack: Request::Sotw(DiscoveryRequest {
                    node,
                    type_url: resp.type_url.clone(),
                    response_nonce: resp.nonce,
                    error_detail: Some(error_detail(format!(
                        "type {:?} is not a resource type this client subscribes to",
                        resp.type_url
                    ))),
                    ..Default::default()
                }),
                changed: false,
            };
        };
        self.ts_mut(t).nonce = resp.nonce.clone();
        if self.ts(t).sent.is_none() && self.ts(t).wanted.is_empty() {
            // A1.8: an unwatched type; resources in it are rejected, an
            // empty response is acknowledged.
            let error = (!resp.resources.is_empty()).then(|| {
                format!(
                    "{} resources for {}, which is not watched",
                    resp.resources.len(),
                    t.as_str()
                )
            });
            if error.is_none() {
                self.versions.insert((self.server, t), resp.version_info);
            }
            let ack = self.sotw_request(t, error);
            return Applied {
                ack: Request::Sotw(ack),
                changed: false,
            };
        }
        let mut items = Vec::with_capacity(resp.resources.len());
        let mut wrapper_errors = Vec::new();
        for a in resp.resources {
            if a.type_url != RESOURCE_WRAPPER {
                items.push(Ok(Item::plain(a)));
                continue;
            }
            // A5.3: a resource wrapped in `Resource` (for its TTL).
            match ResourceWrapper::decode(a.value.as_slice()) {
                Ok(r) => items.push(Item::wrapped(r)),
                Err(e) => {
                    metrics.invalid(t);
                    wrapper_errors.push(format!("undecodable Resource wrapper: {e}"));
                }
            }
        }
        let (mut errors, changed) =
            self.apply_resources(t, items, &resp.version_info, true, sys, metrics);
        errors.extend(wrapper_errors);
        if errors.is_empty() {
            self.versions.insert((self.server, t), resp.version_info);
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if let Some(e) = &error {
            tracing::warn!(type_url = t.as_str(), nonce = %resp.nonce, error = %e, "xDS response rejected (NACK)");
        }
        Applied {
            ack: Request::Sotw(self.sotw_request(t, error)),
            changed,
        }
    }

    fn apply_delta(&mut self, resp: DeltaDiscoveryResponse, metrics: &Metrics) -> Applied {
        let sys = SystemTime::now();
        let nack = |type_url: String, nonce: String, msg: String| DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail: Some(error_detail(msg)),
            ..Default::default()
        };
        let Some(t) = TypeUrl::parse(&resp.type_url) else {
            let msg = format!(
                "type {:?} is not a resource type this client subscribes to",
                resp.type_url
            );
            return Applied {
                ack: Request::Delta(nack(resp.type_url, resp.nonce, msg)),
                changed: false,
            };
        };
        self.ts_mut(t).nonce = resp.nonce.clone();
        self.ts_mut(t).system_version = Some(resp.system_version_info.clone());
        if self.ts(t).sent.is_none() && self.ts(t).wanted.is_empty() && !resp.resources.is_empty() {
            let msg = format!(
                "{} resources for {}, which is not watched",
                resp.resources.len(),
                t.as_str()
            );
            return Applied {
                ack: Request::Delta(nack(resp.type_url, resp.nonce, msg)),
                changed: false,
            };
        }
        let mut errors = Vec::new();
        let mut changed = false;
        // Delta carries a version per resource: apply them one by one.
        let mut seen = BTreeSet::new();
        for r in resp.resources {
            if !seen.insert(r.name.clone()) {
                errors.push(format!(
                    "{}: duplicate resource name in the response",
                    r.name
                ));
                continue;
            }
            let version = r.version.clone();
            let (errs, ch) =
                self.apply_resources(t, vec![Item::wrapped(r)], &version, false, sys, metrics);
            errors.extend(errs);
            changed |= ch;
        }
        let fail = self.fail_on_data_errors();
        let ignore_deletion =
            self.ignore_resource_deletion() && matches!(t, TypeUrl::Listener | TypeUrl::Cluster);
        let ts = self.ts_mut(t);
        for name in resp.removed_resources {
            let Some(e) = ts.entries.get_mut(&name) else {
                continue;
            };
            changed |= delete(&name, t, e, ignore_deletion, fail, sys, true);
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if let Some(e) = &error {
            tracing::warn!(type_url = t.as_str(), nonce = %resp.nonce, error = %e, "xDS response rejected (NACK)");
        }
        Applied {
            ack: Request::Delta(DeltaDiscoveryRequest {
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                error_detail: error.map(error_detail),
                ..Default::default()
            }),
            changed,
        }
    }

    /// Decodes and applies resources of type `t`. `sotw` enables the
    /// SotW rules: duplicate names (A1.9) and LDS/CDS deletion by omission
    /// (A3.4). Returns the NACK reasons and whether a value in use changed.
    fn apply_resources(
        &mut self,
        t: TypeUrl,
        items: Vec<Result<Item, (String, String)>>,
        version: &str,
        sotw: bool,
        sys: SystemTime,
        metrics: &Metrics,
    ) -> (Vec<String>, bool) {
        let fail = self.fail_on_data_errors();
        let ignore_deletion =
            self.ignore_resource_deletion() && matches!(t, TypeUrl::Listener | TypeUrl::Cluster);
        let now = Instant::now();
        let mut errors = Vec::new();
        // name → the decoded value (or a heartbeat) with its TTL, or the
        // rejection reason.
        let mut by_name: BTreeMap<String, Result<Received, String>> = BTreeMap::new();
        let mut duplicates = BTreeSet::new();
        for item in items {
            let Item {
                name: expected,
                body,
                ttl,
            } = match item {
                Ok(item) => item,
                Err((name, reason)) => {
                    if by_name.contains_key(&name) {
                        duplicates.insert(name.clone());
                    }
                    by_name.insert(name, Err(reason));
                    continue;
                }
            };
            let Some(any) = body else {
                // A5.3: a `Resource` without a body is a TTL heartbeat; it
                // has a name (a wrapper always has one).
                let name = expected.unwrap_or_default();
                if by_name.contains_key(&name) {
                    duplicates.insert(name.clone());
                }
                by_name.insert(name, Ok((None, ttl)));
                continue;
            };
            let result =
                (self.decoder)(t, &any, &self.ctx).and_then(|d| super::sds::check(&self.ctx, t, d));
            let (name, result) = match result {
                Ok(d) => {
                    if let Some(n) = &expected
                        && *n != d.name
                    {
                        // A1.10: a returned resource has exactly its name.
                        (
                            n.clone(),
                            Err(format!("the resource is named {:?}", d.name)),
                        )
                    } else {
                        (d.name.clone(), Ok((Some((d, any)), ttl)))
                    }
                }
                Err(e) => match e.name.clone().or(expected) {
                    Some(n) => (n, Err(e.reason)),
                    None => {
                        // Not attributable to a resource: the response is
                        // NACKed, the other resources still apply (A2.2).
                        metrics.invalid(t);
                        errors.push(e.reason);
                        continue;
                    }
                },
            };
            if by_name.contains_key(&name) {
                duplicates.insert(name.clone());
            }
            by_name.insert(name, result);
        }
        for name in &duplicates {
            // A1.9: a name listed twice is NACKed.
            by_name.insert(
                name.clone(),
                Err("duplicate resource name in the response".to_owned()),
            );
        }
        let mut changed = false;
        let ts = &mut self.types[type_index(t)];
        for (name, result) in &mut by_name {
            let requested = ts.wanted.contains(name);
            match std::mem::replace(result, Err(String::new())) {
                Ok((Some((decoded, raw)), ttl)) => {
                    metrics.valid(t);
                    // A1.10: resources that were not requested are ignored.
                    if let Some(e) = ts.entries.get_mut(name)
                        && requested
                    {
                        changed |= e.accept(decoded, raw, version, sys);
                        // A5.3: the TTL is the one of this update, or none.
                        e.ttl = ttl.map(|d| now + d);
                    }
                }
                Ok((None, ttl)) => {
                    if let Some(e) = ts.entries.get_mut(name)
                        && requested
                    {
                        if e.value.is_some() && e.version.as_deref() == Some(version) {
                            // A5.3: a heartbeat refreshes the TTL of the
                            // cached version; it is not an update.
                            e.ttl = ttl.map(|d| now + d);
                        } else {
                            let reason = format!(
                                "a Resource without a body is a TTL heartbeat, but version {version:?} is not the cached one"
                            );
                            metrics.invalid(t);
                            errors.push(format!("{name}: {reason}"));
                            let had = e.value.is_some();
                            e.data_error(ResourceState::Nacked, reason, Some(version), fail, sys);
                            changed |= had != e.value.is_some() || !had;
                        }
                    }
                }
                Err(reason) => {
                    metrics.invalid(t);
                    errors.push(format!("{name}: {reason}"));
                    *result = Err(reason.clone());
                    if let Some(e) = ts.entries.get_mut(name)
                        && requested
                    {
                        // A2.3/A2.4: the cached value (if any) stays in use
                        // unless fail_on_data_errors (gRFC A88); a NACK is
                        // not "does not exist" (A2.5).
                        let had = e.value.is_some();
                        e.data_error(ResourceState::Nacked, reason, Some(version), fail, sys);
                        changed |= had != e.value.is_some() || !had;
                    }
                }
            }
        }
        if sotw && matches!(t, TypeUrl::Listener | TypeUrl::Cluster) {
            // A3.4: an LDS/CDS response is the whole set; a previously
            // seen resource missing from it is deleted. A3.5: a never-seen
            // one waits for its timer.
            for (name, e) in &mut ts.entries {
                if by_name.contains_key(name) || !ts.wanted.contains(name) || !e.seen() {
                    continue;
                }
                changed |= delete(name, t, e, ignore_deletion, fail, sys, false);
            }
        }
        (errors, changed)
    }

    // === status ===

    /// The status of every entry.
    pub(crate) fn statuses(&self) -> Vec<ResourceStatus> {
        TypeUrl::ALL
            .iter()
            .zip(&self.types)
            .flat_map(|(t, ts)| ts.entries.iter().map(|(n, e)| e.status(*t, n)))
            .collect()
    }

    /// Every entry with its raw value.
    pub(crate) fn raw(&self) -> Vec<(TypeUrl, String, Option<Arc<Any>>)> {
        TypeUrl::ALL
            .iter()
            .zip(&self.types)
            .flat_map(|(t, ts)| {
                ts.entries.iter().map(|(n, e)| {
                    let raw = e.value.as_ref().map(|c| match t {
                        // Never dump key material.
                        TypeUrl::Secret => super::sds::redacted(&c.raw),
                        _ => Arc::clone(&c.raw),
                    });
                    (*t, n.clone(), raw)
                })
            })
            .collect()
    }

    /// The cached value of `name` of type `t`.
    pub(crate) fn value(&self, t: TypeUrl, name: &str) -> Option<&XdsResource> {
        self.ts(t)
            .entries
            .get(name)
            .and_then(|e| e.value.as_ref())
            .map(|c| &c.decoded.resource)
    }

    /// What the translators are given.
    pub(crate) fn decode_context(&self) -> &DecodeContext {
        &self.ctx
    }

    /// The entry of `name` of type `t`.
    pub(crate) fn entry(&self, t: TypeUrl, name: &str) -> Option<&Entry> {
        self.ts(t).entries.get(name)
    }
}

/// Applies a deletion (SotW omission from LDS/CDS, delta
/// `removed_resources`). A3.6: reported once. A53: ignored for LDS/CDS
/// with `ignore_resource_deletion`, logged once. gRFC A88: the cached
/// value stays unless `fail_on_data_errors`. Returns whether the value in
/// use or the state changed.
fn delete(
    name: &str,
    t: TypeUrl,
    e: &mut Entry,
    ignore_deletion: bool,
    fail: bool,
    sys: SystemTime,
    explicit: bool,
) -> bool {
    if e.state == ResourceState::DoesNotExist && e.error.is_some() {
        return false;
    }
    if ignore_deletion && e.value.is_some() {
        if !e.deletion_ignored {
            tracing::warn!(resource = %name, type_url = t.as_str(), "xDS resource deleted by the server; deletion ignored (ignore_resource_deletion)");
            e.deletion_ignored = true;
        }
        return false;
    }
    let had = e.value.is_some();
    let reason = if explicit {
        "removed by the server (removed_resources)"
    } else {
        "deleted by the server (missing from the response)"
    };
    e.data_error(
        ResourceState::DoesNotExist,
        reason.to_owned(),
        None,
        fail,
        sys,
    );
    tracing::warn!(resource = %name, type_url = t.as_str(), kept = e.value.is_some(), "xDS resource deleted");
    had != e.value.is_some() || !had
}

/// The `error_detail` of a NACK, with the message capped at
/// [`MAX_ERROR_DETAIL`] bytes plus `...(truncated)` (A1.6).
pub(crate) fn error_detail(message: String) -> RpcStatus {
    RpcStatus {
        code: INVALID_ARGUMENT,
        message: truncate(message),
        details: Vec::new(),
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_ERROR_DETAIL {
        let mut cut = MAX_ERROR_DETAIL;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...(truncated)");
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_detail_is_capped_at_4096_bytes() {
        let d = error_detail("é".repeat(3000));
        assert!(d.message.ends_with("...(truncated)"));
        assert!(d.message.len() <= MAX_ERROR_DETAIL + "...(truncated)".len());
        assert_eq!(error_detail("short".into()).message, "short");
    }
}
