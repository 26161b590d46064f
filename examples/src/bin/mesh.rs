//! The mesh command line.
//!
//! `serve-xds` makes a mesh YAML file (Istio's kinds, the same file the
//! mesh client reads) the control plane of other processes: an ADS server
//! (SotW and delta) serves the file's config as Envoy v3 resources and
//! pushes every change of the file to every connected client. Envoy,
//! proxyless gRPC (`xds:///<host>:<port>`) and this mesh's own xDS client
//! can all use it.
//!
//! ```text
//! cargo run -p mesh-examples --bin mesh -- serve-xds mesh.yaml --listen 127.0.0.1:18000
//! ```
//!
//! It prints what it serves after every accepted version of the file, and
//! every NACK a client sends (as a warning on stderr). A file that does
//! not translate is rejected with the place of the error, and the last good
//! config stays served.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_xds::encode::EncodedSnapshot;
use mesh_xds::server::AdsServer;

const USAGE: &str = "usage: mesh serve-xds <mesh.yaml> [--listen <addr>] [--namespace <ns>]
  Serves the file's config over ADS (default --listen 127.0.0.1:18000) and
  follows every change of the file.";

struct Args {
    file: PathBuf,
    listen: SocketAddr,
    namespace: Option<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    match args.next().as_deref() {
        Some("serve-xds") => {}
        Some("-h" | "--help") | None => return Err(USAGE.into()),
        Some(other) => return Err(format!("unknown command {other:?}\n{USAGE}")),
    }
    let mut file = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 18000).into();
    let mut namespace = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let v = args.next().ok_or("--listen needs an address")?;
                listen = v
                    .parse()
                    .map_err(|e| format!("--listen {v:?}: not an address: {e}"))?;
            }
            "--namespace" => namespace = Some(args.next().ok_or("--namespace needs a value")?),
            "-h" | "--help" => return Err(USAGE.into()),
            other if other.starts_with('-') => {
                return Err(format!("unknown option {other:?}\n{USAGE}"));
            }
            other if file.is_none() => file = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        file: file.ok_or_else(|| format!("no file given\n{USAGE}"))?,
        listen,
        namespace,
    })
}

fn describe(s: &EncodedSnapshot) -> String {
    let names = |m: &std::collections::BTreeMap<String, _>| {
        m.keys().cloned().collect::<Vec<_>>().join(", ")
    };
    format!(
        "version {}\n  listeners ({}): {}\n  api listeners ({}): {}\n  routes ({}): {}\n  clusters ({}): {}\n  endpoints ({})",
        s.version,
        s.listeners.len(),
        names(&s.listeners),
        s.api_listeners.len(),
        names(&s.api_listeners),
        s.routes.len(),
        names(&s.routes),
        s.clusters.len(),
        names(&s.clusters),
        s.endpoints.len(),
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tonic=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let store = ConfigStore::new();
    let mut source = FileSource::new(&args.file);
    if let Some(ns) = &args.namespace {
        source = source.with_namespace(ns);
    }
    let watcher = match source.watch(store.clone()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("mesh serve-xds: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = AdsServer::new(&store);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mesh serve-xds: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map_or(args.listen, |a| a);
    println!("serving {} over ADS on {addr}", args.file.display());

    let mut reloads = watcher.subscribe();
    let printer = {
        let server = server.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let mut printed = 0;
            loop {
                let version = store.version().0;
                if version != printed {
                    server.wait_for_version(version).await;
                    println!("{}", describe(&server.current()));
                    printed = version;
                }
                if let Err(e) = &reloads.borrow_and_update().result {
                    println!("rejected, still serving version {printed}: {e}");
                }
                if reloads.changed().await.is_err() {
                    break;
                }
            }
        })
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = server.serve(listener, shutdown).await;
    printer.abort();
    drop(watcher);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh serve-xds: {e}");
            ExitCode::FAILURE
        }
    }
}
