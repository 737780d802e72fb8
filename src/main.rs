use std::process::ExitCode;

use std::io::IsTerminal as _;

use clap::Parser;
use coronium::cli::{self, Cli, CliError, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.prints_and_exits() {
        // `coronium call ... | head`: a closed pipe ends the command quietly, as it ends `cat`,
        // instead of a panic in `println!`. Not for `serve` and `run`, whose sockets must not
        // raise SIGPIPE.
        // SAFETY: restoring the default disposition, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let filter = match std::env::var("CORONIUM_LOG") {
        Err(_) => EnvFilter::new("info"),
        Ok(value) => cli::log_filter(&value).unwrap_or_else(|message| {
            eprintln!("warning: {message}; logging at info");
            EnvFilter::new("info")
        }),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    match cli::execute(cli) {
        Ok(code) => code,
        Err(CliError::Script(e)) => {
            eprintln!("lua error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
