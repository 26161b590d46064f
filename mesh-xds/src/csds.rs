//! The subscriber's per-resource status for tools: the Client Status
//! Discovery Service (`envoy.service.status.v3`, gRFC A40) and the same as
//! JSON for the admin endpoint.
//!
//! CSDS is how existing tooling reads an xDS client (`grpcdebug <addr> xds
//! status`, `istioctl x internal-debug`, Traffic Director's dashboard): one
//! `ClientConfig` for the node, listing every resource the client watches
//! as a `GenericXdsConfig` with its client-side status (gRFC A88 cache
//! entry states: REQUESTED, ACKED, NACKED, DOES_NOT_EXIST, TIMEOUT,
//! RECEIVED_ERROR), the version of the value in use, when it arrived, the
//! raw resource, and for a rejected update the reason, the rejected version
//! and when (`error_state`).
//!
//! The mapping is a pure function of `ResourceStatus` ([`client_config`],
//! [`status_json`]); [`CsdsService`] serves it for any [`StatusSource`]
//! (the ADS client [`XdsClient`](crate::XdsClient) is one:
//! `csds::server(Arc::new(client.clone()))`) over `FetchClientStatus` and
//! `StreamClientStatus` (one response per request, so a slow reader holds
//! nothing but its own stream).
//!
//! `config_status` is left UNKNOWN: the proto reserves it for management
//! servers ("will not be present if the CSDS server is an xDS client"),
//! and gRPC's own CSDS servers leave it unset too; `client_status` carries
//! the state.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig as CsdsClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use futures::{Stream, StreamExt};
use serde_json::{Value as Json, json};

use crate::{ResourceState, ResourceStatus, TypeUrl};

/// What a CSDS server reports: the node, the status of every watched
/// resource and the raw resources in use.
pub trait StatusSource: Send + Sync + 'static {
    /// The node the client identifies as.
    fn node(&self) -> Node;
    /// The status of every watched resource.
    fn status(&self) -> Vec<ResourceStatus>;
    /// The raw resources, as received: `None` for a watched resource with
    /// no value in use.
    fn raw_resources(&self) -> Vec<(TypeUrl, String, Option<Any>)>;
}

/// The process's ADS client reports what it watches.
impl StatusSource for crate::XdsClient {
    fn node(&self) -> Node {
        crate::XdsClient::node(self).clone()
    }

    fn status(&self) -> Vec<ResourceStatus> {
        crate::XdsClient::status(self)
    }

    fn raw_resources(&self) -> Vec<(TypeUrl, String, Option<Any>)> {
        crate::XdsClient::raw_resources(self)
    }
}

/// The CSDS `client_status` of a cache entry state.
pub fn client_resource_status(state: ResourceState) -> ClientResourceStatus {
    match state {
        ResourceState::Requested => ClientResourceStatus::Requested,
        ResourceState::Acked => ClientResourceStatus::Acked,
        ResourceState::Nacked => ClientResourceStatus::Nacked,
        ResourceState::DoesNotExist => ClientResourceStatus::DoesNotExist,
        ResourceState::Timeout => ClientResourceStatus::Timeout,
        ResourceState::ReceivedError => ClientResourceStatus::ReceivedError,
    }
}

/// A `SystemTime` as a protobuf `Timestamp` (times before 1970 clamp to
/// the epoch: the client never records one).
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// One resource as CSDS reports it; `raw` is the resource in use, if any.
pub fn generic_xds_config(status: &ResourceStatus, raw: Option<Any>) -> GenericXdsConfig {
    let error_state = status.error.as_ref().map(|details| UpdateFailureState {
        failed_configuration: None,
        last_update_attempt: status.error_at.map(timestamp),
        details: details.clone(),
        version_info: status.error_version.clone().unwrap_or_default(),
    });
    GenericXdsConfig {
        type_url: status.type_url.as_str().to_owned(),
        name: status.name.clone(),
        version_info: status.version.clone().unwrap_or_default(),
        xds_config: raw.filter(|_| status.cached),
        last_updated: status.last_updated.map(timestamp),
        config_status: ConfigStatus::Unknown as i32,
        client_status: client_resource_status(status.state) as i32,
        error_state,
        is_static_resource: false,
    }
}

/// The CSDS `ClientConfig` of a node: every resource of `statuses`, in
/// cascade order (LDS, RDS, CDS, EDS, SDS) then by name, each with its raw
/// value from `raw` when `include_contents`.
pub fn client_config(
    node: Node,
    statuses: &[ResourceStatus],
    raw: Vec<(TypeUrl, String, Option<Any>)>,
    include_contents: bool,
) -> CsdsClientConfig {
    let mut raw: std::collections::HashMap<(TypeUrl, String), Any> = raw
        .into_iter()
        .filter_map(|(t, name, any)| Some(((t, name), any?)))
        .collect();
    let mut sorted: Vec<&ResourceStatus> = statuses.iter().collect();
    sorted
        .sort_by(|a, b| (type_order(a.type_url), &a.name).cmp(&(type_order(b.type_url), &b.name)));
    let generic_xds_configs = sorted
        .into_iter()
        .map(|s| {
            let any = if include_contents {
                raw.remove(&(s.type_url, s.name.clone()))
            } else {
                None
            };
            generic_xds_config(s, any)
        })
        .collect();
    #[allow(deprecated)]
    CsdsClientConfig {
        node: Some(node),
        xds_config: Vec::new(),
        generic_xds_configs,
        client_scope: String::new(),
    }
}

fn type_order(t: TypeUrl) -> usize {
    TypeUrl::ALL
        .iter()
        .position(|x| *x == t)
        .unwrap_or(usize::MAX)
}

/// The short name of a type for JSON (`Listener`, `Cluster`, …).
fn type_name(t: TypeUrl) -> &'static str {
    let url = t.as_str();
    url.rsplit('.').next().unwrap_or(url)
}

/// The status as JSON, for the admin endpoint's `/xds_status`:
///
/// ```json
/// {"node": {"id": "…", "cluster": "…"},
///  "resources": [{"type": "Listener", "type_url": "type.googleapis.com/…",
///                 "name": "…", "status": "NACKED", "version": "3",
///                 "last_updated": "2026-12-01T04:00:00.000Z", "cached": true,
///                 "error": {"details": "…", "version": "4", "at": "…"},
///                 "ignored_fields": ["…"]}]}
/// ```
///
/// Resources are in the same order as CSDS lists them; absent values are
/// `null`.
pub fn status_json(node: &Node, statuses: &[ResourceStatus]) -> Json {
    let mut sorted: Vec<&ResourceStatus> = statuses.iter().collect();
    sorted
        .sort_by(|a, b| (type_order(a.type_url), &a.name).cmp(&(type_order(b.type_url), &b.name)));
    let resources: Vec<Json> = sorted
        .into_iter()
        .map(|s| {
            let error = s.error.as_ref().map(|details| {
                json!({
                    "details": details,
                    "version": s.error_version,
                    "at": s.error_at.map(rfc3339),
                })
            });
            json!({
                "type": type_name(s.type_url),
                "type_url": s.type_url.as_str(),
                "name": s.name,
                "status": client_resource_status(s.state).as_str_name(),
                "version": s.version,
                "last_updated": s.last_updated.map(rfc3339),
                "cached": s.cached,
                "error": error,
                "ignored_fields": s.ignored_fields,
            })
        })
        .collect();
    json!({
        "node": {"id": node.id, "cluster": node.cluster},
        "resources": resources,
    })
}

/// `t` as an RFC 3339 UTC time with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// A CSDS server over a [`StatusSource`]: serve it with
/// `tonic::transport::Server::builder().add_service(csds::server(client))`.
#[derive(Debug)]
pub struct CsdsService<S> {
    source: Arc<S>,
}

impl<S> Clone for CsdsService<S> {
    fn clone(&self) -> Self {
        Self {
            source: Arc::clone(&self.source),
        }
    }
}

impl<S: StatusSource> CsdsService<S> {
    /// The service over `source`.
    pub fn new(source: Arc<S>) -> Self {
        Self { source }
    }

    fn respond(&self, req: &ClientStatusRequest) -> Result<ClientStatusResponse, tonic::Status> {
        respond(&*self.source, req)
    }
}

/// The tonic server of a [`CsdsService`] over `source`.
pub fn server<S: StatusSource>(
    source: Arc<S>,
) -> ClientStatusDiscoveryServiceServer<CsdsService<S>> {
    ClientStatusDiscoveryServiceServer::new(CsdsService::new(source))
}

/// The answer to one CSDS request. Node matchers are not supported (the
/// process has one node; gRPC's CSDS rejects them the same way).
fn respond(
    source: &dyn StatusSource,
    req: &ClientStatusRequest,
) -> Result<ClientStatusResponse, tonic::Status> {
    if !req.node_matchers.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "node_matchers are not supported: this process has one xDS client node",
        ));
    }
    let statuses = source.status();
    let raw = if req.exclude_resource_contents {
        Vec::new()
    } else {
        source.raw_resources()
    };
    Ok(ClientStatusResponse {
        config: vec![client_config(
            source.node(),
            &statuses,
            raw,
            !req.exclude_resource_contents,
        )],
    })
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, tonic::Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<S: StatusSource> ClientStatusDiscoveryService for CsdsService<S> {
    type StreamClientStatusStream = ResponseStream;

    async fn stream_client_status(
        &self,
        request: tonic::Request<tonic::Streaming<ClientStatusRequest>>,
    ) -> Result<tonic::Response<Self::StreamClientStatusStream>, tonic::Status> {
        let this = self.clone();
        // One response per request, computed when the client reads it.
        let stream = request
            .into_inner()
            .map(move |req| req.and_then(|r| this.respond(&r)));
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn fetch_client_status(
        &self,
        request: tonic::Request<ClientStatusRequest>,
    ) -> Result<tonic::Response<ClientStatusResponse>, tonic::Status> {
        self.respond(request.get_ref()).map(tonic::Response::new)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century year divisible by 400).
        assert_eq!(at(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(at(1_796_169_599_999), "2026-12-01T23:59:59.999Z");
    }

    #[test]
    fn every_state_has_its_csds_status() {
        let all = [
            (ResourceState::Requested, "REQUESTED"),
            (ResourceState::Acked, "ACKED"),
            (ResourceState::Nacked, "NACKED"),
            (ResourceState::DoesNotExist, "DOES_NOT_EXIST"),
            (ResourceState::Timeout, "TIMEOUT"),
            (ResourceState::ReceivedError, "RECEIVED_ERROR"),
        ];
        for (state, name) in all {
            assert_eq!(client_resource_status(state).as_str_name(), name);
        }
    }
}
