use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = idemq::cli::Cli::parse();
    idemq::telemetry::init(&cli.shared.log_format);
    match idemq::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("idemq: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
