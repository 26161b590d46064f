//! The flagship demo: live traffic shifting from an Istio YAML file.
//!
//! Starts `reviews` v1 (two instances) and v2 (axum) and `ratings` (tonic)
//! on loopback, writes a mesh YAML file, and sends traffic through the
//! mesh client while it edits that file: a 90/10 canary, header routing,
//! 50/50, then a route timeout against a slow v2. After each edit it waits
//! until the mesh applies the new version, sends a batch of requests, and
//! prints where they went next to what the config says they should do.
//! Exits non-zero if any step's counts disagree with its config.
//!
//! ```text
//! cargo run -p mesh-examples --bin demo            # embedded defaults
//! cargo run -p mesh-examples --bin demo -- --requests 5000 --keep
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use mesh_core::ConfigStore;
use mesh_core::file::FileSource;
use mesh_examples::backends::{Ratings, Reviews, VERSION_HEADER};
use mesh_examples::proto::RatingRequest;
use mesh_examples::proto::ratings_client::RatingsClient;
use mesh_examples::yaml::{self, Split};
use mesh_tower::{Mesh, MeshClient};
use tower::ServiceExt;

struct Options {
    requests: u64,
    concurrency: u64,
    keep: bool,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        requests: 1000,
        concurrency: 16,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--requests" => {
                o.requests = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--requests needs a number")?
            }
            "--concurrency" => {
                o.concurrency = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--concurrency needs a number")?
            }
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                return Err("usage: demo [--requests N] [--concurrency N] [--keep]\n  --keep  leave the mesh YAML file in place".into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(o)
}

/// What one step expects of the v2 share, and how its rows are checked.
enum Expect {
    /// v2 gets this share of requests (binomial, within 5 standard deviations).
    Share(f64),
    /// Requests with the canary header all go to v2, the rest all to v1.
    Header,
    /// This share of requests times out (they are the ones routed to the
    /// slow v2); the rest reach v1.
    TimeoutShare(f64),
}

struct Step {
    name: &'static str,
    split: Split<'static>,
    timeout: Option<&'static str>,
    slow_v2: bool,
    expect: Expect,
}

#[derive(Default)]
struct Tally {
    v1: AtomicU64,
    v2: AtomicU64,
    canary_v2: AtomicU64,
    canary_other: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
}

const CANARY: &str = "x-canary";

fn config(v1a: &Reviews, v1b: &Reviews, v2: &Reviews, ratings: &Ratings, step: &Step) -> String {
    let reviews = yaml::reviews_with(
        &[(v1a, "v1"), (v1b, "v1"), (v2, "v2")],
        &step.split,
        step.timeout,
        "LEAST_REQUEST",
    );
    let ratings = yaml::service_entry("ratings", 50051, "GRPC", &[(ratings.addr(), "v1")]);
    format!(
        "# written by the mesh demo; edit it while the demo runs to see the effect\n{reviews}---\n{ratings}"
    )
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn send_reviews(client: MeshClient, tally: Arc<Tally>, n: u64, with_canary_header: bool) {
    for i in 0..n {
        let canary = with_canary_header && i % 2 == 0;
        let mut req = http::Request::get("http://reviews:9080/reviews/1");
        if canary {
            req = req.header(CANARY, "true");
        }
        let Ok(req) = req.body(Empty::<Bytes>::new()) else {
            continue;
        };
        match client.clone().oneshot(req).await {
            Ok(res) => {
                let version = res
                    .headers()
                    .get(VERSION_HEADER)
                    .map(|v| v.as_bytes().to_vec());
                let slot = match (canary, version.as_deref()) {
                    (true, Some(b"v2")) => &tally.canary_v2,
                    (true, _) => &tally.canary_other,
                    (false, Some(b"v1")) => &tally.v1,
                    (false, Some(b"v2")) => &tally.v2,
                    _ => &tally.errors,
                };
                slot.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.is_timeout() => {
                tally.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "request failed");
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether `k` of `n` is within 5 standard deviations of share `p`.
fn within(k: u64, n: u64, p: f64) -> bool {
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - n as f64 * p).abs() <= 5.0 * sd.max(0.5)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_target(false)
        .init();
    let opts = match options() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(opts).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Options) -> Result<bool, Box<dyn std::error::Error>> {
    let v1a = Reviews::start("v1").await?;
    let v1b = Reviews::start("v1").await?;
    let v2 = Reviews::start("v2").await?;
    let ratings = Ratings::start("ratings-1").await?;

    let steps = [
        Step {
            name: "canary 90/10",
            split: Split::Weights(&[("v1", 90), ("v2", 10)]),
            timeout: None,
            slow_v2: false,
            expect: Expect::Share(0.1),
        },
        Step {
            name: "header x-canary: true -> v2",
            split: Split::Header {
                header: CANARY,
                value: "true",
                canary: "v2",
                stable: "v1",
            },
            timeout: None,
            slow_v2: false,
            expect: Expect::Header,
        },
        Step {
            name: "split 50/50",
            split: Split::Weights(&[("v1", 50), ("v2", 50)]),
            timeout: None,
            slow_v2: false,
            expect: Expect::Share(0.5),
        },
        Step {
            name: "timeout 100ms, v2 slow (300ms)",
            split: Split::Weights(&[("v1", 50), ("v2", 50)]),
            timeout: Some("100ms"),
            slow_v2: true,
            expect: Expect::TimeoutShare(0.5),
        },
    ];

    let dir: PathBuf = std::env::temp_dir().join(format!("mesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("mesh.yaml");
    write_atomically(&path, &config(&v1a, &v1b, &v2, &ratings, &steps[0]))?;

    let store = ConfigStore::new();
    let watcher = FileSource::new(&path)
        .with_debounce(Duration::from_millis(50))
        .watch(store.clone())?;
    let mut reloads = watcher.subscribe();
    let mesh = Mesh::new(store);
    let reviews = mesh.client();
    let mut ratings_client = RatingsClient::new(mesh.client_for("http://ratings:50051")?);

    println!(
        "mesh demo: reviews v1 at {} and {}, v2 at {}; ratings (gRPC) at {}",
        v1a.addr(),
        v1b.addr(),
        v2.addr(),
        ratings.addr()
    );
    println!(
        "config: {} (edited live below; every step is a file edit)\n",
        path.display()
    );
    println!(
        "{:<32} {:>7} {:>6} {:>6} {:>6} {:>5} {:>6}  {:<26} check",
        "step", "version", "v1", "v2", "504", "err", "grpc", "expected"
    );

    let mut all_ok = true;
    for (i, step) in steps.iter().enumerate() {
        v2.set_delay(if step.slow_v2 {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        });
        if i > 0 {
            let before = reloads.borrow_and_update().attempt;
            write_atomically(&path, &config(&v1a, &v1b, &v2, &ratings, step))?;
            let event = tokio::time::timeout(
                Duration::from_secs(10),
                reloads.wait_for(|e| e.attempt > before),
            )
            .await
            .map_err(|_| "the file watcher did not pick up the edit within 10s")??
            .clone();
            let version = event.result.map_err(|e| format!("edit rejected: {e}"))?;
            mesh.applied(version).await;
        }
        let version = mesh.applied_version();

        let tally = Arc::new(Tally::default());
        let per_task = opts.requests / opts.concurrency.max(1);
        let sent = per_task * opts.concurrency.max(1);
        let header_step = matches!(step.expect, Expect::Header);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..opts.concurrency.max(1) {
            tasks.spawn(send_reviews(
                reviews.clone(),
                Arc::clone(&tally),
                per_task,
                header_step,
            ));
        }
        // A live line while the batch runs, when someone is watching.
        let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                done = tasks.join_next() => if done.is_none() { break },
                _ = tick.tick(), if live => {
                    let t = &tally;
                    print!(
                        "\r{:<32} {:>7} {:>6} {:>6} {:>6} {:>5}",
                        step.name, version.0,
                        t.v1.load(Ordering::Relaxed) + t.canary_other.load(Ordering::Relaxed),
                        t.v2.load(Ordering::Relaxed) + t.canary_v2.load(Ordering::Relaxed),
                        t.timeouts.load(Ordering::Relaxed), t.errors.load(Ordering::Relaxed),
                    );
                    let _ = std::io::stdout().flush();
                }
            }
        }
        let mut grpc_ok = 0;
        for _ in 0..20 {
            let reply = ratings_client
                .get(RatingRequest {
                    product: "book-1".into(),
                })
                .await;
            if reply.is_ok_and(|r| r.get_ref().stars == 5) {
                grpc_ok += 1;
            }
        }

        let t = &tally;
        let (v1n, v2n) = (t.v1.load(Ordering::Relaxed), t.v2.load(Ordering::Relaxed));
        let (cv2, cother) = (
            t.canary_v2.load(Ordering::Relaxed),
            t.canary_other.load(Ordering::Relaxed),
        );
        let (timeouts, errors) = (
            t.timeouts.load(Ordering::Relaxed),
            t.errors.load(Ordering::Relaxed),
        );
        let (expected, ok) = match step.expect {
            Expect::Share(p) => (
                format!("v2 {:.0}% (±5σ), no errors", p * 100.0),
                within(v2n, sent, p) && v1n + v2n == sent,
            ),
            Expect::Header => (
                "header->v2, rest->v1".to_string(),
                cother == 0 && v2n == 0 && cv2 + v1n == sent,
            ),
            Expect::TimeoutShare(p) => (
                format!("504 {:.0}% (±5σ), rest v1", p * 100.0),
                within(timeouts, sent, p) && v2n == 0 && v1n + timeouts == sent,
            ),
        };
        let ok = ok && errors == 0 && grpc_ok == 20;
        all_ok &= ok;
        println!(
            "{}{:<32} {:>7} {:>6} {:>6} {:>6} {:>5} {:>3}/20  {:<26} {}",
            if live { "\r" } else { "" },
            step.name,
            version.0,
            v1n + cother,
            v2n + cv2,
            timeouts,
            errors,
            grpc_ok,
            expected,
            if ok { "ok" } else { "MISMATCH" }
        );
    }

    println!(
        "\nper-instance hits: v1 {} + {}, v2 {}, ratings {} (v1 instances balanced by LEAST_REQUEST)",
        v1a.hits(),
        v1b.hits(),
        v2.hits(),
        ratings.hits()
    );
    if opts.keep {
        println!("kept {}", path.display());
    } else {
        drop(watcher);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "{}",
        if all_ok {
            "all steps match their config"
        } else {
            "some steps did not match their config"
        }
    );
    Ok(all_ok)
}
