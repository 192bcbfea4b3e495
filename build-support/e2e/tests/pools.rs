//! Reads and consumers use pools of their own: a flood of reads takes
//! only the read pool's connections, and orders keep flowing through it.

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;

use oms_api::orders::v1::ListOrdersRequest;
use oms_testkit::orders::order;
use oms_testkit::system::System;
use oms_testkit::{TestDatabase, kafka, unique_topic_prefix};

#[derive(QueryableByName, Debug)]
struct Connections {
    #[diesel(sql_type = Text)]
    application_name: String,
    #[diesel(sql_type = BigInt)]
    connections: i64,
}

const READ_POOL: usize = 2;

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_reads_uses_its_own_pool_while_orders_keep_flowing() {
    let db = TestDatabase::create().await;
    let brokers = kafka::brokers().join(",");
    let env = [("DATABASE_READ_POOL_SIZE", READ_POOL.to_string())];
    let system = System::start(&db, &brokers, &unique_topic_prefix(), &env).await;
    let gateway = system.gateway().await;

    // 32 readers listing as fast as they can, for the whole test.
    let flood = tokio_util::sync::CancellationToken::new();
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let (mut gateway, flood) = (gateway.clone(), flood.clone());
            tokio::spawn(async move {
                let (mut answered, mut failed) = (0u32, 0u32);
                while !flood.is_cancelled() {
                    let request = ListOrdersRequest {
                        customer_id: String::new(),
                        page_size: 500,
                        page_token: String::new(),
                    };
                    match gateway.list_orders(request).await {
                        Ok(_) => answered += 1,
                        Err(_) => failed += 1,
                    }
                }
                (answered, failed)
            })
        })
        .collect();

    let mut ids = Vec::new();
    for i in 0..40 {
        let order = gateway
            .clone()
            // Keyed: each claims its key with the order service.
            .create_order(order(
                &format!("pool-{}", i % 4),
                &format!("pool-order-{i}"),
            ))
            .await
            .expect("CreateOrder during the flood");
        ids.push(order.into_inner().order_id);
    }
    let mut conn = db.connect("order_service").await;
    let paid_query = format!(
        "SELECT 'paid' AS application_name, count(*) AS connections FROM orders \
         WHERE status = 'PAID' AND order_id::text = ANY(ARRAY['{}'])",
        ids.join("','")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let paid: Vec<Connections> = diesel::sql_query(&paid_query)
            .load(&mut conn)
            .await
            .expect("count paid orders");
        if paid.iter().any(|row| row.connections == ids.len() as i64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "orders not all paid during the flood: {paid:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The order service's reads held at most their own pool.
    let pools: Vec<Connections> = diesel::sql_query(format!(
        "SELECT application_name, count(*) AS connections FROM pg_stat_activity \
         WHERE datname = '{}' AND application_name LIKE 'order_service%' \
         GROUP BY application_name",
        db.url.database_name()
    ))
    .load(&mut conn)
    .await
    .expect("pg_stat_activity");
    flood.cancel();
    let (mut answered, mut failed) = (0, 0);
    for reader in readers {
        let (a, f) = reader.await.expect("reader");
        (answered, failed) = (answered + a, failed + f);
    }
    // The reads queued for their two connections, and were answered.
    assert!(
        answered > 0 && failed * 20 <= answered,
        "{answered} reads answered, {failed} failed"
    );
    let count = |name: &str| {
        pools
            .iter()
            .find(|row| row.application_name == name)
            .map_or(0, |row| row.connections)
    };
    assert!(
        (1..=READ_POOL as i64).contains(&count("order_service reads")),
        "read connections: {pools:?}"
    );
    assert!(
        count("order_service") >= 1,
        "consumer connections: {pools:?}"
    );
    system.shut_down();
}
