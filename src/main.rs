//! The `voxd` command line: `serve` runs the media server, `check` validates a
//! configuration. Later subcommands (`loadgen`, `call`, `demo`) arrive with their
//! issues.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    let source = loaded
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    eprintln!("configuration: {source} (valid)");
    eprintln!(
        "error: voxd serve: the engine (shards, AudioSocket and RTP transports) is not built \
         yet; the configuration was loaded and validated, nothing was started. Track: issue 3."
    );
    ExitCode::from(2)
}
