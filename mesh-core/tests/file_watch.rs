//! Hot reload of a real file on a real file system: in-place writes,
//! editor-style renames, Kubernetes ConfigMap symlink swaps, and invalid
//! edits that must leave the last good config in place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use mesh_core::file::{FileSource, ReloadEvent};
use mesh_core::{ConfigStore, Version};
use tokio::sync::watch;

fn config(port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: svc }}
spec:
  hosts: [svc]
  ports: [{{ number: {port}, name: http }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1 }}]
"#
    )
}

fn cluster(port: u16) -> String {
    format!("outbound|{port}||svc.default.svc.cluster.local")
}

/// Waits for the next reload attempt after `after`. The bound only keeps a
/// broken watcher from hanging the suite; it is not a timing assertion.
async fn next_event(rx: &mut watch::Receiver<ReloadEvent>, after: u64) -> ReloadEvent {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let ev = rx.borrow_and_update().clone();
            if ev.attempt > after {
                return ev;
            }
            rx.changed().await.expect("watcher alive");
        }
    })
    .await
    .expect("a reload within 30s")
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_renames_and_invalid_edits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(8001)).unwrap();
    let store = ConfigStore::new();
    let source = FileSource::new(&path).with_debounce(Duration::from_millis(20));
    let id = source.source_id();
    let watcher = source.watch(store.clone()).unwrap();
    let mut events = watcher.subscribe();
    assert_eq!(watcher.last().result, Ok(Version(1)));
    assert!(store.snapshot().cluster(&cluster(8001)).is_some());

    // In place, as `echo > file` does.
    std::fs::write(&path, config(8002)).unwrap();
    let ev = next_event(&mut events, 1).await;
    assert_eq!(ev.result, Ok(Version(2)));
    assert!(store.snapshot().cluster(&cluster(8002)).is_some());

    // Write-then-rename, as editors do.
    write_atomically(&path, &config(8003));
    let ev = next_event(&mut events, ev.attempt).await;
    assert_eq!(ev.result, Ok(Version(3)));

    // An invalid edit changes nothing and is reported.
    write_atomically(
        &path,
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: svc }\nspec: { hosts: [svc], resolution: STATIC, ports: [{ number: 0, name: http }] }\n",
    );
    let ev = next_event(&mut events, ev.attempt).await;
    let reason = ev.result.unwrap_err();
    assert!(
        reason.contains(
            "document 1 (ServiceEntry svc): ports[0].number: 0 is out of range (1 to 65535)"
        ),
        "{reason}"
    );
    assert_eq!(store.version(), Version(3));
    assert!(store.snapshot().cluster(&cluster(8003)).is_some());
    let status = store.source_status(&id).unwrap();
    assert_eq!(status.accepted_version, Some(Version(3)));
    assert_eq!(status.last_rejection.unwrap().reason, reason);

    // Fixing it applies again.
    write_atomically(&path, &config(8004));
    let ev = next_event(&mut events, ev.attempt).await;
    assert_eq!(ev.result, Ok(Version(4)));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_configmap_symlink_swap() {
    // A mounted ConfigMap: mesh.yaml -> ..data/mesh.yaml, ..data -> ..<ts>.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..2026_01")).unwrap();
    std::fs::write(d.join("..2026_01/mesh.yaml"), config(9001)).unwrap();
    std::os::unix::fs::symlink("..2026_01", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/mesh.yaml", d.join("mesh.yaml")).unwrap();

    let store = ConfigStore::new();
    let watcher = FileSource::new(d.join("mesh.yaml"))
        .with_debounce(Duration::from_millis(20))
        .watch(store.clone())
        .unwrap();
    let mut events = watcher.subscribe();

    // The kubelet's update: new timestamped dir, new symlink, atomic rename.
    std::fs::create_dir(d.join("..2026_02")).unwrap();
    std::fs::write(d.join("..2026_02/mesh.yaml"), config(9002)).unwrap();
    std::os::unix::fs::symlink("..2026_02", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_01")).unwrap();

    let ev = next_event(&mut events, 1).await;
    assert_eq!(ev.result, Ok(Version(2)));
    assert!(store.snapshot().cluster(&cluster(9002)).is_some());
}

#[test]
fn an_invalid_file_at_startup_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, "kind: [").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = ConfigStore::new();
    let err = rt.block_on(async { FileSource::new(&path).watch(store.clone()).unwrap_err() });
    assert!(
        err.to_string().contains("document 1: invalid YAML"),
        "{err}"
    );
    assert_eq!(store.version(), Version(0));
}
