use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    oms_codegen::generate(
        &proto_root,
        &[
            "orders/v1/orders.proto",
            "orders/events/v1/events.proto",
            "orders/internal/v1/order_query.proto",
            "payments/v1/payments.proto",
            "notifications/v1/notifications.proto",
        ],
    )
}
