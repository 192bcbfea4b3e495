//! A few seconds of the benchmark against the real processes, so `just
//! bench` keeps working: both load modes, the drain and exactly-once audit,
//! end-to-end latency from the system's timestamps, the ceilings, and a
//! JSON report with every key the benchmark promises. The services check
//! tokens, as they do by default, so the load's token is exercised too.

use std::time::Duration;

use oms_loadgen::bench::{measure_ceilings, run_phase};
use oms_loadgen::cli::{CeilingSettings, Target};
use oms_loadgen::driver::{self, Load, Stop};
use oms_loadgen::report::{Machine, Report};
use oms_testkit::auth::TestKeys;
use oms_testkit::system::{GATEWAY, System};
use oms_testkit::{TestDatabase, kafka, unique_topic_prefix};

#[tokio::test(flavor = "multi_thread")]
async fn a_short_benchmark_run_audits_clean_and_reports_every_key() {
    let db = TestDatabase::create().await;
    let keys = TestKeys::create();
    let brokers = kafka::brokers().join(",");
    let system = System::start(&db, &brokers, &unique_topic_prefix(), &keys.env()).await;
    let out = std::env::temp_dir().join(format!("bench-smoke-{}.json", system.prefix));
    let target = Target {
        gateway: format!("http://{}", system.addr(GATEWAY)),
        database_url: db.url.expose().to_owned(),
        brokers: kafka::brokers().join(","),
        topic_prefix: Some(system.prefix.clone()),
        token_key_dir: Some(keys.dir.clone()),
        connections: 2,
        drain_timeout: 60.0,
        out: out.clone(),
    };
    let clients = driver::connect(&target.gateway, target.connections)
        .await
        .expect("connect");
    let mut report = Report {
        machine: Machine::this(),
        ..Report::default()
    };

    let open = Load::Open { rate: 50.0 };
    let latency = run_phase(
        &target,
        &clients,
        "latency",
        open,
        Stop::After(Duration::from_secs(2)),
    )
    .await
    .expect("open-loop phase");
    assert!(latency.audit.accepted >= 90, "{:?}", latency.audit);
    assert_eq!(latency.e2e.count, latency.audit.completed);
    report.use_for_latency(&latency, 50.0);
    report.add_phase(latency);

    let closed = Load::Closed { concurrency: 4 };
    let throughput = run_phase(&target, &clients, "throughput", closed, Stop::Orders(40))
        .await
        .expect("closed-loop phase");
    assert_eq!(throughput.audit.accepted, 40);
    assert!(throughput.audit.completed_per_s > 0.0);
    report.orders_per_s = throughput.audit.completed_per_s;
    report.add_phase(throughput);

    let settings = CeilingSettings {
        ceiling_duration: 0.5,
        batch: 20,
        partitions: 2,
    };
    report.set_ceilings(
        measure_ceilings(&target, &settings)
            .await
            .expect("ceilings"),
    );
    report.write_json(&out).expect("write report");

    assert_eq!((report.lost, report.duplicated), (0, 0));
    assert_eq!(report.completed, report.accepted);
    assert!(report.create_p99_ms > 0.0 && report.e2e_p99_ms >= report.e2e_p50_ms);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("read")).expect("json");
    for key in [
        "accepted",
        "completed",
        "lost",
        "duplicated",
        "create_p50_ms",
        "create_p99_ms",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "orders_per_s",
        "max_sustained_orders_per_s",
        "ceilings",
    ] {
        assert!(json.get(key).is_some(), "latest.json lacks {key}");
    }
    for key in [
        "broker_records_per_s",
        "postgres_orders_per_s",
        "grpc_calls_per_s",
    ] {
        let value = json["ceilings"][key].as_f64().unwrap_or_default();
        assert!(value > 0.0, "ceilings.{key} = {value}");
    }
    let _ = std::fs::remove_file(out);
    system.shut_down();
}
