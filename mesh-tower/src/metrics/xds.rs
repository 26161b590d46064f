//! gRFC A78's xDS client metrics, read at scrape time from the mesh's
//! [`XdsClient`](mesh_xds::XdsClient) (feature `xds`).
//!
//! A78 names them `grpc.xds_client.*` with labels `grpc.target`,
//! `grpc.xds.server`, `grpc.xds.resource_type`, `grpc.xds.authority` and
//! `grpc.xds.cache_state`. OTLP export keeps those names; the Prometheus
//! text endpoint maps them as gRPC's own Prometheus exporters do: `.` →
//! `_` in names and label names, and counters get `_total`:
//!
//! | A78 (OTLP) | Prometheus |
//! |---|---|
//! | `grpc.xds_client.resource_updates_valid` | `grpc_xds_client_resource_updates_valid_total` |
//! | `grpc.xds_client.resource_updates_invalid` | `grpc_xds_client_resource_updates_invalid_total` |
//! | `grpc.xds_client.server_failure` | `grpc_xds_client_server_failure_total` |
//! | `grpc.xds_client.connected` | `grpc_xds_client_connected` |
//! | `grpc.xds_client.resources` | `grpc_xds_client_resources` |
//!
//! `grpc.target` is [`TARGET`]: A78 labels a gRPC XdsClient with the target
//! of the channel it serves (or `#server`), but the mesh has one subscriber
//! per process shared by every client and server, so no channel target
//! describes it. `grpc.xds.authority` is `#old` (A78's value for
//! non-`xdstp:` names, the only names the client subscribes to).

use std::fmt::Write;

use mesh_xds::client::{XdsClientMetrics, resource_type_label};

use super::render::label;

/// The `grpc.target` label of the mesh's subscriber.
pub const TARGET: &str = "#mesh";

/// The `grpc.xds.authority` label of every resource (A78: `#old` for
/// names that are not `xdstp:` URIs).
pub const AUTHORITY: &str = "#old";

/// Writes the A78 metrics of `m` in the Prometheus text format.
pub(crate) fn render(m: &XdsClientMetrics, out: &mut String) {
    for (name, help, valid) in [
        (
            "grpc_xds_client_resource_updates_valid_total",
            "Resources received from the xDS server that were valid (gRFC A78).",
            true,
        ),
        (
            "grpc_xds_client_resource_updates_invalid_total",
            "Resources received from the xDS server that were invalid (gRFC A78).",
            false,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for s in &m.servers {
            let counts = if valid {
                &s.resource_updates_valid
            } else {
                &s.resource_updates_invalid
            };
            for (t, n) in counts {
                server_labels(out, name, &s.uri);
                out.push_str(",grpc_xds_resource_type=\"");
                out.push_str(resource_type_label(*t));
                let _ = writeln!(out, "\"}} {n}");
            }
        }
    }
    out.push_str("# HELP grpc_xds_client_server_failure_total Times the xDS server went from healthy to unhealthy (gRFC A78).\n");
    out.push_str("# TYPE grpc_xds_client_server_failure_total counter\n");
    for s in &m.servers {
        server_labels(out, "grpc_xds_client_server_failure_total", &s.uri);
        let _ = writeln!(out, "}} {}", s.server_failure);
    }
    out.push_str("# HELP grpc_xds_client_connected Whether the xDS client has a working ADS stream to the xDS server (gRFC A78).\n");
    out.push_str("# TYPE grpc_xds_client_connected gauge\n");
    for s in &m.servers {
        server_labels(out, "grpc_xds_client_connected", &s.uri);
        let _ = writeln!(out, "}} {}", u8::from(s.connected));
    }
    out.push_str(
        "# HELP grpc_xds_client_resources Number of xDS resources, by cache state (gRFC A78).\n",
    );
    out.push_str("# TYPE grpc_xds_client_resources gauge\n");
    for (t, state, n) in &m.cache_states {
        let _ = write!(
            out,
            "grpc_xds_client_resources{{grpc_target=\"{TARGET}\",grpc_xds_authority=\"{AUTHORITY}\",grpc_xds_cache_state=\"{}\",grpc_xds_resource_type=\"{}\"}} {n}",
            state.as_str(),
            resource_type_label(*t),
        );
        out.push('\n');
    }
}

/// `name{grpc_target="…",grpc_xds_server="…"` (the brace left open).
fn server_labels(out: &mut String, name: &str, uri: &str) {
    let _ = write!(out, "{name}{{grpc_target=\"{TARGET}\",grpc_xds_server=\"");
    label(out, uri);
    out.push('"');
}
