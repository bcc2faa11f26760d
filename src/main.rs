//! `switchboard` command line: load the configuration, start one shard per core.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use switchboard::config::Config;

const USAGE: &str = "\
switchboard — SIP trunks into LiveKit-compatible rooms, thread-per-core

USAGE:
    switchboard --dev                 run on embedded development defaults
                                      (SIP 127.0.0.1:5060; LiveKit port 7880,
                                      API key devkey, secret secret)
    switchboard --config FILE         run with a TOML configuration file
    switchboard --config FILE --check validate the file and exit

OPTIONS:
    --shards N       number of shards (one pinned executor per core);
                     default: [server] shards, else every core this process may use
    --metrics-port P Prometheus /metrics port (default: [metrics] port, 6789; 0 = off)
    --check          only validate the configuration
    -h, --help       this text
    -V, --version    print the version

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
See docs/configuration.md for the file format.";

struct Args {
    dev: bool,
    config: Option<PathBuf>,
    shards: Option<usize>,
    metrics_port: Option<u16>,
    check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dev: false,
        config: None,
        shards: None,
        metrics_port: None,
        check: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dev" => args.dev = true,
            "--check" => args.check = true,
            "--config" | "-c" => {
                let v = it.next().ok_or("--config needs a file")?;
                args.config = Some(PathBuf::from(v));
            }
            "--shards" => {
                let v = it.next().ok_or("--shards needs a number")?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--shards: not a number: {v:?}"))?;
                if n == 0 {
                    return Err("--shards must be at least 1".into());
                }
                args.shards = Some(n);
            }
            "--metrics-port" => {
                let v = it.next().ok_or("--metrics-port needs a port")?;
                let p: u16 = v
                    .parse()
                    .map_err(|_| format!("--metrics-port: not a port: {v:?}"))?;
                args.metrics_port = Some(p);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("switchboard {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => {
                if let Some(v) = other.strip_prefix("--config=") {
                    args.config = Some(PathBuf::from(v));
                } else if let Some(v) = other.strip_prefix("--shards=") {
                    let n: usize = v
                        .parse()
                        .map_err(|_| format!("--shards: not a number: {v:?}"))?;
                    args.shards = Some(n.max(1));
                } else {
                    return Err(format!("unknown argument {other:?} (see --help)"));
                }
            }
        }
    }
    if args.dev && args.config.is_some() {
        return Err("--dev and --config are exclusive".into());
    }
    if !args.dev && args.config.is_none() {
        return Err("give --dev or --config FILE (see --help)".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("switchboard: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::dev(),
    };
    let mut config = config;
    if let Some(p) = args.metrics_port {
        config.metrics.port = p;
    }
    // Contact and SDP need an address trunks can reach: with a wildcard bind and
    // no external_ip, the host's first non-loopback IPv4 (docs/configuration.md).
    if config.sip.external_ip.is_none() && config.sip.bind.is_unspecified() {
        match switchboard::runtime::system::host_ipv4() {
            Some(ip) => {
                tracing::info!(%ip, "advertising this address in Contact and SDP (set sip.external_ip to change it)");
                config.sip.external_ip = Some(ip.into());
            }
            None => tracing::warn!(
                "no non-loopback IPv4 address found: Contact and SDP will say 127.0.0.1; set sip.external_ip"
            ),
        }
    }
    if args.check {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let shards = args
        .shards
        .or(config.server.shards)
        .unwrap_or_else(switchboard::runtime::available_cores);
    match switchboard::runtime::run(Arc::new(config), shards) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e}");
            ExitCode::from(1)
        }
    }
}
