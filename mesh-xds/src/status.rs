//! Per-resource status: what the client asked for, what it holds and why
//! (gRFC A88 cache entry states, reported through CSDS, gRFC A40).

use std::time::SystemTime;

use serde::Serialize;

use crate::TypeUrl;

/// The state of one watched resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceState {
    /// Requested, nothing received yet.
    Requested,
    /// Received, valid and applied.
    Acked,
    /// The last update was rejected; `error` says why. A cached earlier
    /// version may still be in use (`cached`).
    Nacked,
    /// The server said (or the timer concluded) it does not exist.
    DoesNotExist,
    /// The resource timer fired with `resource_timer_is_transient_error`.
    Timeout,
    /// The server reported an error for it (delta `removed_resources` with
    /// a reason, or a TP3 error).
    ReceivedError,
}

/// What the client knows about one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceStatus {
    /// Its type.
    #[serde(serialize_with = "type_url_str")]
    pub type_url: TypeUrl,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: ResourceState,
    /// The `version_info` (SotW) or resource version (delta) of the value
    /// in use.
    pub version: Option<String>,
    /// When the value in use arrived.
    pub last_updated: Option<SystemTime>,
    /// Whether a value is in use (it may be an older one than the last
    /// update, after a NACK).
    pub cached: bool,
    /// The reason of the last rejection, or of an error state.
    pub error: Option<String>,
    /// When the last rejection happened.
    pub error_at: Option<SystemTime>,
    /// The version of the rejected update.
    pub error_version: Option<String>,
    /// Fields of the value in use that are set but not applied.
    pub ignored_fields: Vec<String>,
}

fn type_url_str<S: serde::Serializer>(t: &TypeUrl, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.as_str())
}
