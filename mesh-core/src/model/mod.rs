//! The validated configuration model.
//!
//! Plain data that mirrors the xDS resources: [`Listener`] →
//! [`RouteTable`] → [`Cluster`] → [`EndpointSet`]. Istio YAML, xDS and code
//! all translate into these types, and nothing downstream knows which
//! source a value came from. Every type is `Clone + Debug + PartialEq`;
//! shared lists are `Arc<[T]>` so snapshots share structure cheaply.

mod cluster;
mod endpoint;
mod listener;
pub mod matcher;
pub mod policy;
mod route;
pub mod security;
pub mod telemetry;
mod tls;

pub use cluster::{Cluster, LbPolicy, Protocol};
pub use endpoint::{
    Endpoint, EndpointAddress, EndpointDiff, EndpointSet, Health, Labels, Locality,
};
pub use listener::{Listener, ListenerKind, ServerPolicy};
pub use matcher::{HeaderMatch, HeaderRule, PathMatch, Regex, StringMatch};
pub use policy::{
    AbortStatus, Backoff, ConnectionLimits, DirectResponse, FailurePercentageEjection, FaultAbort,
    FaultDelay, FaultPolicy, Fraction, HashKey, HeaderMutations, HedgeDelay, HedgePolicy,
    LocalityLbSetting, LocalityWeights, Mirror, OutlierDetection, Redirect, ResponseClass,
    ResponseCondition, RetryBudget, RetryConditions, RetryOn, RetryPolicy, Rewrite, SlowStart,
    SuccessRateEjection, TokenBucket,
};
pub use route::{
    ForwardAction, Route, RouteAction, RouteMatch, RouteTable, VirtualHost, WeightedCluster,
    WeightedClusters,
};
pub use security::{
    AuthorizationPolicy, PeerAuthentication, PolicyScope, RequestAuthentication, SecurityPolicies,
    VerifiedJwt, Workload,
};
pub use telemetry::{
    CustomTag, EffectiveTracing, TelemetryPolicy, TracingConfig, TracingMode, effective_tracing,
};
pub use tls::{
    IstioMutualTls, PemFile, ServerVerification, ServiceAccount, TlsOrigination, UpstreamTls,
};
