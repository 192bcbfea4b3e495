//! A minimal gRPC health probe for container health checks:
//! `oms-health-probe HOST:PORT [SERVICE]` exits 0 when the server reports
//! SERVING for SERVICE (default: the whole server), 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        eprintln!("usage: oms-health-probe HOST:PORT [SERVICE]");
        return ExitCode::from(2);
    };
    let service = args.next().unwrap_or_default();
    match check(&addr, service).await {
        Ok(ServingStatus::Serving) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{addr}: {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("{addr}: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn check(addr: &str, service: String) -> Result<ServingStatus, Box<dyn std::error::Error>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status)?)
}
