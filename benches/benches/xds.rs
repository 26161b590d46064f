//! xDS apply time, the targets: an EDS update of 10 000 endpoints
//! (< 20 ms) and a CDS update of 1 000 clusters (< 50 ms), each from the
//! wire bytes of a `DiscoveryResponse`'s resources to a validated snapshot
//! published in the `ConfigStore` (`translate::decode` of every resource,
//! then `ConfigStore::publish`). The resources are what our ADS server
//! sends (`EncodedSnapshot::encode`). Secondary: the server's cost to
//! encode a 1 000-cluster × 10-endpoint snapshot.
//!
//! `nice cargo bench -p mesh-benches --bench xds`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use mesh_core::model::{Cluster, Endpoint, EndpointSet, Labels, LbPolicy};
use mesh_core::{ConfigStore, Resources, SourceId};
use mesh_xds::encode::{EncodedSnapshot, cluster, cluster_load_assignment};
use mesh_xds::pb::google::protobuf::Any;
use mesh_xds::{DecodeContext, TypeUrl, XdsResource, translate};
use prost::Message;

fn any<M: Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn endpoints(name: &str, n: u32, seed: u8) -> EndpointSet {
    let eps = (0..n)
        .map(|i| {
            Endpoint::socket(SocketAddr::from((
                [10, seed, (i >> 8) as u8, i as u8],
                8080,
            )))
            .with_labels(Labels::new([("version", "v1")]))
        })
        .collect();
    EndpointSet::try_new(name, eps).unwrap()
}

fn clusters(n: usize) -> Vec<Cluster> {
    (0..n)
        .map(|i| {
            Cluster::new(format!("outbound|8080||svc{i}.default.svc.cluster.local"))
                .with_lb_policy(LbPolicy::RoundRobin)
        })
        .collect()
}

/// Decodes every resource and publishes the result as the `xds` source.
fn apply(store: &ConfigStore, type_url: TypeUrl, resources: &[Any], base: &Resources) {
    let ctx = DecodeContext::default();
    let mut out = base.clone();
    for any in resources {
        match translate::decode(type_url, any, &ctx).unwrap().resource {
            XdsResource::Cluster(c) => out.clusters.push(c.cluster),
            XdsResource::Endpoints(e) => {
                out.endpoints.push(
                    EndpointSet::try_new(base.clusters[0].name.clone(), e.endpoints).unwrap(),
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    store.publish(SourceId::new("xds"), out).unwrap();
}

fn xds(c: &mut Criterion) {
    let mut group = c.benchmark_group("xds_apply");
    group.sample_size(20);

    // EDS: one cluster, 10 000 endpoints (the cluster already known).
    let name = "outbound|8080||big.default.svc.cluster.local";
    let eds = [any(&cluster_load_assignment(&endpoints(name, 10_000, 1)))];
    let base = Resources {
        clusters: vec![Cluster::new(name)],
        ..Resources::default()
    };
    println!("eds update: {} bytes", eds[0].value.len());
    group.bench_function("eds_10000_endpoints", |b| {
        b.iter_batched(
            ConfigStore::new,
            |store| {
                apply(
                    &store,
                    TypeUrl::ClusterLoadAssignment,
                    black_box(&eds),
                    &base,
                )
            },
            BatchSize::LargeInput,
        )
    });

    // CDS: 1 000 clusters at once.
    let cds: Vec<Any> = clusters(1000)
        .iter()
        .map(|c| any(&cluster(c, None)))
        .collect();
    println!(
        "cds update: {} bytes",
        cds.iter().map(|a| a.value.len()).sum::<usize>()
    );
    let empty = Resources::default();
    group.bench_function("cds_1000_clusters", |b| {
        b.iter_batched(
            ConfigStore::new,
            |store| apply(&store, TypeUrl::Cluster, black_box(&cds), &empty),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // The server side: encoding a whole snapshot once per push.
    let store = ConfigStore::new();
    let cs = clusters(1000);
    let eps = cs
        .iter()
        .enumerate()
        .map(|(i, c)| endpoints(c.name.as_str(), 10, (i % 250) as u8))
        .collect();
    store
        .publish(
            SourceId::new("bench"),
            Resources {
                clusters: cs,
                endpoints: eps,
                ..Resources::default()
            },
        )
        .unwrap();
    let snapshot = store.snapshot();
    c.bench_function("xds_encode/1000_clusters_x10_endpoints", |b| {
        b.iter(|| EncodedSnapshot::encode(black_box(&snapshot)))
    });
}

criterion_group!(benches, xds);
criterion_main!(benches);
