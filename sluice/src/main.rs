//! The `sluice` binary: flags in, libraries wired together, nothing more (DESIGN.md
//! principle 1). Each subcommand lives in its own module.

mod admin;
mod channels;
mod cli;
mod display;
mod get;
mod k8s;
mod load;
mod oidc;
mod run;
mod send;
mod telemetry;
mod tls;

use clap::Parser;

/// mimalloc instead of glibc malloc: the data path allocates a little per event on every
/// worker thread, and glibc's arena locks and consolidation showed up as a fifth of the CPU
/// in profiles (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let endpoint = telemetry::traces_endpoint(
        cli.otlp_endpoint.as_deref(),
        std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .ok()
            .as_deref(),
    );
    let telemetry = match telemetry::init(cli.log_format, endpoint) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        cli::Command::Run(args) => run::run(args).await,
        cli::Command::Send(args) => send::send(args).await,
        cli::Command::Display(args) => display::display(args).await,
        cli::Command::Get(args) => get::get(args).await,
        cli::Command::Controller(args) => k8s::controller(args).await,
        cli::Command::Dataplane(args) => k8s::dataplane(args).await,
        cli::Command::Crdgen(args) => crdgen(args),
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `sluice crdgen`: the CRDs on stdout, or one file each in `--out-dir`.
fn crdgen(args: cli::CrdgenArgs) -> anyhow::Result<()> {
    match args.out_dir {
        None => print!("{}", sluice_crds::crds_yaml()),
        Some(dir) => {
            let written = sluice_crds::write_crd_files(&dir).map_err(|e| {
                anyhow::anyhow!("cannot write the CRDs into {}: {e}", dir.display())
            })?;
            for path in written {
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}
