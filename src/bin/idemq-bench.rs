//! `idemq-bench`: the bench as a binary of its own (`idemq bench …` runs it),
//! so that the production `idemq` links none of its dependencies.
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "idemq bench",
    bin_name = "idemq bench",
    version,
    about = "Measure a real fleet (API + worker processes, started by the bench): \
             throughput, latency, peak RSS, CPU split, correctness"
)]
struct Cli {
    #[command(flatten)]
    bench: idemq_bench::BenchArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let log_format = std::env::var("IDEMQ_LOG_FORMAT").unwrap_or_else(|_| "pretty".into());
    idemq::telemetry::init(&log_format);
    match idemq_bench::run(cli.bench).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idemq bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
