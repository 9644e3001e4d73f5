//! hubgate: a policy-enforcing reverse proxy for the AWS Security Hub API.
#![forbid(unsafe_code)]

mod audit;
mod cli;
mod config;
mod enrich;
mod envelope;
mod identity;
mod policy;
mod proxy;
mod routes;
mod server;
mod upstream;
mod validate;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    cli::main()
}
