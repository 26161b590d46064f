//! gRPC's own xDS client (Python `grpcio`) takes its configuration from our
//! ADS server through a bootstrap file (`GRPC_XDS_BOOTSTRAP`), resolves
//! `xds:///ratings:<port>` (an API listener, gRFC A27), and reaches the
//! backends the mesh YAML routes it to: one subset, then a 50/50 split
//! after an edit of the file. gRPC never NACKs.
//!
//! The client is `tests/peers/xds_grpc_client.py` (raw-bytes unary calls,
//! no generated stubs); the backends are tonic `Ratings` servers. Under
//! `CI` a missing peer fails the test, elsewhere it prints `SKIPPED`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_examples::backends::Ratings;
use mesh_examples::yaml::{Split, destination_rule, service_entry, virtual_service};
use mesh_tests::peers::{Peer, command, run};
use mesh_tests::within_sigmas;
use mesh_xds::server::AdsServer;
use serde_json::json;

fn config(port: u16, r1: &Ratings, r2: &Ratings, split: &[(&str, u32)]) -> String {
    [
        service_entry(
            "ratings",
            port,
            "GRPC",
            &[(r1.addr(), "v1"), (r2.addr(), "v2")],
        ),
        destination_rule("ratings", "ROUND_ROBIN", &["v1", "v2"]),
        virtual_service("ratings", &Split::Weights(split), None),
    ]
    .join("---\n")
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs the Python client for `n` calls to `target`: replies per backend.
async fn grpc_calls(python: &Path, bootstrap: &Path, target: &str, n: u32) -> HashMap<String, u64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/xds_grpc_client.py");
    let mut cmd = command(python);
    cmd.arg(script)
        .arg(target)
        .arg(n.to_string())
        .env("GRPC_XDS_BOOTSTRAP", bootstrap)
        .env("GRPC_VERBOSITY", "ERROR");
    let (ok, out, err) = run(cmd, Duration::from_secs(60)).await;
    assert!(ok, "the grpcio client failed:\n{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("client output {out:?} ({e}); stderr:\n{err}"));
    assert!(v.get("error").is_none(), "grpc call failed: {v}\n{err}");
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_xds_client_resolves_through_our_server_and_reaches_the_routed_backends() {
    mesh_tests::init_tracing();
    let Some(python) = Peer::PythonGrpc.require("grpc_xds_client_resolves_through_our_server")
    else {
        return;
    };
    let r1 = Ratings::start("r1").await.unwrap();
    let r2 = Ratings::start("r2").await.unwrap();
    // The listener port only names the service here (gRPC binds nothing).
    let port = 50051;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    write(&path, &config(port, &r1, &r2, &[("v2", 100)]));

    let store = ConfigStore::new();
    let watcher = FileSource::new(&path)
        .with_debounce(Duration::from_millis(50))
        .watch(store.clone())
        .unwrap();
    let server = AdsServer::new(&store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ads: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        json!({
            "xds_servers": [{
                "server_uri": ads.to_string(),
                "channel_creds": [{ "type": "insecure" }],
                "server_features": ["xds_v3"]
            }],
            "node": { "id": "grpc-interop", "locality": {} }
        })
        .to_string(),
    )
    .unwrap();
    let target = format!("xds:///ratings:{port}");

    // All traffic to subset v2: only r2 answers.
    let counts = grpc_calls(&python, &bootstrap, &target, 20).await;
    assert_eq!(
        counts,
        HashMap::from([("r2".to_owned(), 20)]),
        "{:?}",
        server.nacks()
    );

    // The edit: a 50/50 split reaches both.
    let before = store.version().0;
    write(&path, &config(port, &r1, &r2, &[("v1", 50), ("v2", 50)]));
    let mut reloads = watcher.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        reloads.wait_for(|e| e.result.as_ref().is_ok_and(|v| v.0 > before)),
    )
    .await
    .expect("the file watcher picks up the edit")
    .unwrap();
    server.wait_for_version(store.version().0).await;
    let n = 200;
    let counts = grpc_calls(&python, &bootstrap, &target, n).await;
    let r1_hits = counts.get("r1").copied().unwrap_or(0);
    assert_eq!(
        r1_hits + counts.get("r2").copied().unwrap_or(0),
        u64::from(n)
    );
    assert!(within_sigmas(r1_hits, u64::from(n), 0.5, 5.0), "{counts:?}");
    assert_eq!(r1.hits() + r2.hits(), 220);
    assert_eq!(server.nack_count(), 0, "grpc nacked: {:?}", server.nacks());
    let _ = stop.send(());
}
