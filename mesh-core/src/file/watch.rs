//! Hot reload: follow a config file and republish it on every change.
//!
//! The *directory* is watched, not the file: editors save by writing a new
//! file and renaming it over the old one, and Kubernetes updates a
//! mounted ConfigMap by swapping a `..data` symlink, both of which replace
//! the inode a file watch would follow. Any change in the directory starts
//! a debounce timer; when the directory has been quiet for the debounce
//! period the file is read, and if its content changed it is translated
//! and published. Events are coalesced in a channel of capacity one, so a
//! burst of writes costs one reload and nothing queues without bound.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::{ErrorKind, FileError, FileSource};
use crate::snapshot::Version;
use crate::store::ConfigStore;

/// The outcome of one reload attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadEvent {
    /// Counts reload attempts, starting at 1 for the initial load.
    pub attempt: u64,
    /// The store version after an accepted reload, or why it was
    /// rejected (the store keeps its last good config).
    pub result: Result<Version, String>,
}

/// A running file watch. Dropping it stops watching.
pub struct FileWatcher {
    // Dropping the notify watcher stops its thread and closes the event
    // channel, which ends the task; the abort covers a task mid-reload.
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
    events: watch::Receiver<ReloadEvent>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for FileWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatcher")
            .field("last", &*self.events.borrow())
            .finish_non_exhaustive()
    }
}

impl FileWatcher {
    /// A receiver of reload outcomes; the current value is the latest one.
    pub fn subscribe(&self) -> watch::Receiver<ReloadEvent> {
        self.events.clone()
    }

    /// The latest reload outcome.
    pub fn last(&self) -> ReloadEvent {
        self.events.borrow().clone()
    }
}

fn content_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl FileSource {
    /// Publishes the file to `store`, then keeps it published: every later
    /// change is debounced, translated and published. Must be called from
    /// within a Tokio runtime.
    ///
    /// Fails when the file cannot be read or is invalid at startup (there
    /// is no last good config to keep yet), or when the directory cannot be
    /// watched.
    pub fn watch(self, store: ConfigStore) -> Result<FileWatcher, FileError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| FileError {
            file: self.name.clone(),
            kind: ErrorKind::Io(e.to_string()),
        })?;
        let hash = content_hash(&text);
        let version = self.publish_text(&store, Ok(text))?;

        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let (tx, rx) = mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let relevant = matches!(
                event.kind,
                EventKind::Create(_)
                    | EventKind::Modify(_)
                    | EventKind::Remove(_)
                    | EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Write
                    ))
            );
            if relevant {
                // Full means a reload is already pending: coalesce.
                let _ = tx.try_send(());
            }
        })
        .map_err(|e| FileError {
            file: self.name.clone(),
            kind: ErrorKind::Io(format!("cannot watch {}: {e}", dir.display())),
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| FileError {
                file: self.name.clone(),
                kind: ErrorKind::Io(format!("cannot watch {}: {e}", dir.display())),
            })?;

        let (events_tx, events) = watch::channel(ReloadEvent {
            attempt: 1,
            result: Ok(version),
        });
        let source = Arc::new(self);
        let task = tokio::spawn(run(source, store, rx, hash, events_tx));
        Ok(FileWatcher {
            _watcher: watcher,
            task,
            events,
        })
    }
}

async fn run(
    source: Arc<FileSource>,
    store: ConfigStore,
    mut changes: mpsc::Receiver<()>,
    mut last_hash: u64,
    events: watch::Sender<ReloadEvent>,
) {
    let mut attempt = 1;
    while changes.recv().await.is_some() {
        // Wait until the directory has been quiet for the debounce period.
        loop {
            match tokio::time::timeout(source.debounce, changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // Reading and translating a large file is CPU work: keep it off the
        // async workers.
        let outcome = tokio::task::spawn_blocking({
            let (source, store) = (Arc::clone(&source), store.clone());
            move || -> Option<(u64, Result<Version, String>)> {
                let text = std::fs::read_to_string(&source.path);
                let hash = text.as_ref().map(|t| content_hash(t)).unwrap_or(0);
                if text.is_ok() && hash == last_hash {
                    return None;
                }
                let text = text.map_err(|e| FileError {
                    file: source.name.clone(),
                    kind: ErrorKind::Io(e.to_string()),
                });
                Some((
                    hash,
                    source.publish_text(&store, text).map_err(|e| e.to_string()),
                ))
            }
        })
        .await;
        let result = match outcome {
            Ok(Some((hash, result))) => {
                last_hash = hash;
                result
            }
            Ok(None) => continue, // same content as last time
            Err(_) => return,     // runtime shutting down
        };
        attempt += 1;
        match &result {
            Ok(v) => tracing::info!(source = %source.source_id(), version = %v, "config reloaded"),
            Err(e) => {
                tracing::warn!(source = %source.source_id(), error = %e, "config reload rejected; keeping the last good config")
            }
        }
        events.send_replace(ReloadEvent { attempt, result });
    }
}
