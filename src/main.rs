//! The `voxd` command line: `serve` runs the media server, `check` validates a
//! configuration. Later subcommands (`loadgen`, `call`, `demo`) arrive with their
//! issues.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// voxd: media server for AI voice agents on Asterisk.
#[derive(Debug, Parser)]
#[command(name = "voxd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the media server (AudioSocket, ExternalMedia RTP, ARI, providers).
    Serve {
        /// Configuration file. Default: $VOXD_CONFIG, else ./config/voxd.yaml if it
        /// exists, else built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration: print the effective configuration (secrets masked)
    /// and exit 0, or list every problem with its key path and exit 1.
    Check {
        /// Configuration file (same default search as `serve`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(config),
        Command::Serve { config } => serve(config),
    }
}

fn load(config: Option<PathBuf>) -> Result<voxd::config::Loaded, ExitCode> {
    match voxd::config::load(config.as_deref()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            Ok(loaded)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(1))
        }
    }
}

fn check(config: Option<PathBuf>) -> ExitCode {
    match load(config) {
        Ok(loaded) => {
            if let Some(p) = &loaded.source {
                eprintln!("configuration: {} (valid)", p.display());
            } else {
                eprintln!("configuration: built-in defaults (valid)");
            }
            for note in deployment_notes(&loaded.config) {
                eprintln!("note: {note}");
            }
            print!("{}", loaded.config.to_masked_yaml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Advice about the surroundings that is not a configuration error.
fn deployment_notes(cfg: &voxd::config::Config) -> Vec<String> {
    let mut notes = Vec::new();
    let port = cfg.external_media.rtp_port;
    if (5000..=31000).contains(&port) {
        notes.push(format!(
            "external_media.rtp_port {port} lies inside Asterisk's default RTP port range \
             (rtp.conf rtpstart=5000, rtpend=31000): move Asterisk's range or voxd's port so \
             Asterisk never allocates it to a call"
        ));
    }
    notes
}

fn serve(config: Option<PathBuf>) -> ExitCode {
    let loaded = match load(config) {
        Ok(l) => l,
        Err(code) => return code,
    };
    init_logging(&loaded.config);
    let source = loaded
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    tracing::info!(config = %source, "configuration loaded");
    let registry = match voxd::provider::Registry::from_config(&loaded.config) {
        Ok(r) => std::sync::Arc::new(r),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("voxd-control")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the control runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let engine = match voxd::engine::runner::Engine::start(&loaded.config, registry) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        if let Some(note) = &engine.backend_note {
            tracing::warn!("{note}");
        }
        tracing::info!(
            audiosocket = %engine.audiosocket_addr,
            rtp = %engine.rtp_addr,
            shards = engine.shards,
            io_backend = engine.backend.as_str(),
            provider = loaded.config.default_provider.as_str(),
            "voxd listening"
        );
        eprintln!(
            "voxd: AudioSocket on {} (tcp), RTP on {} (udp), {} shard(s), io backend {}, agent `{}`; Ctrl-C to stop",
            engine.audiosocket_addr,
            engine.rtp_addr,
            engine.shards,
            engine.backend.as_str(),
            loaded.config.default_provider.as_str()
        );
        wait_for_shutdown().await;
        tracing::info!("stopping: ending calls");
        let stats = engine.stop().await;
        let calls: u64 = stats.iter().map(|s| s.calls_started).sum();
        tracing::info!(calls, "stopped");
        ExitCode::SUCCESS
    })
}

/// Ctrl-C or SIGTERM.
async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn init_logging(cfg: &voxd::config::Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VOXD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cfg.logging.level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.logging.format {
        voxd::config::LogFormat::Json => builder.json().try_init(),
        _ => builder.try_init(),
    };
}
