use std::process::ExitCode;

use std::io::IsTerminal as _;

use clap::Parser;
use coronium::cli::{self, Cli, CliError, LogFormat};
use coronium::logging::OneLineStderr;
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
    // Values a client or script sets (a printed line, a sign-in name) cannot start a made-up
    // log line: JSON escapes them, and the human format's writer does.
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_format == LogFormat::Json {
        logs.with_writer(std::io::stderr).json().init();
    } else {
        let ansi = std::io::stderr().is_terminal();
        logs.with_writer(OneLineStderr { ansi })
            .with_ansi(ansi)
            .init();
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
