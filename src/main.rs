//! Command line of bitbucket-sso-proxy; all behaviour lives in the `bbsso` library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bitbucket-sso-proxy",
    version,
    about = "OpenID Connect single sign-on gateway for Bitbucket Server / Data Center"
)]
struct Cli {
    /// Configuration file (TOML); may also come from BBSSO_CONFIG.
    #[arg(long, global = true, env = "BBSSO_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default when no command is given).
    Run,
    /// Parse and validate the configuration; exit 0 when valid, 2 with every problem listed when not.
    CheckConfig {
        /// Also probe every provider (discovery, keys, token endpoint) and Bitbucket's REST API; exit 1 if any fails.
        #[arg(long)]
        online: bool,
    },
    /// Print a new random key (base64) for session.keys, identity.assertion_secret or the backdoor key.
    GenKey,
    /// Ask the running proxy's admin listener whether it is healthy (exit 0) or not (exit 1); for container
    /// health checks, with no shell tools needed.
    Healthcheck {
        /// Check /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// Admin address to ask (default: server.admin_listen of the configuration).
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
    },
    /// Run the whole flow on this machine: a demo OpenID provider, a Bitbucket stand-in and the proxy.
    Demo {
        /// Port of the proxy on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Demo { port } => match demo(port) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("bitbucket-sso-proxy demo: {err:#}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Command::Healthcheck { ready, admin } => {
            let address = match admin {
                Some(a) => a,
                None => match load(cli.config) {
                    Ok((_, config)) => {
                        let mut a = config.server.admin_listen;
                        if a.ip().is_unspecified() {
                            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                        }
                        a.to_string()
                    }
                    Err(code) => return code,
                },
            };
            let path = if ready { "/readyz" } else { "/healthz" };
            match bbsso::admin::probe(&address, path, std::time::Duration::from_secs(3)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bitbucket-sso-proxy healthcheck: {address}{path}: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        Command::GenKey => {
            println!("{}", bbsso::keys::generate());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { online } => match load(cli.config) {
            Ok((path, config)) => {
                println!("{}: valid; {}", path.display(), config.summary());
                if !online {
                    return ExitCode::SUCCESS;
                }
                match check_online(&config) {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::from(EXIT_RUNTIME),
                    Err(err) => {
                        eprintln!("bitbucket-sso-proxy: {err:#}");
                        ExitCode::from(EXIT_RUNTIME)
                    }
                }
            }
            Err(code) => code,
        },
        Command::Run => {
            let (path, config) = match load(cli.config) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            match run(config, path) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("bitbucket-sso-proxy: {err:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

fn load(path: Option<PathBuf>) -> Result<(PathBuf, bbsso::config::Config), ExitCode> {
    let Some(path) = path else {
        eprintln!("bitbucket-sso-proxy: no configuration given; pass --config PATH or set BBSSO_CONFIG");
        return Err(ExitCode::from(EXIT_USAGE));
    };
    match bbsso::config::load(&path) {
        Ok(config) => Ok((path, config)),
        Err(err) => {
            eprintln!("{err}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

fn check_online(config: &bbsso::config::Config) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let probes = runtime.block_on(bbsso::online::check(config));
    for p in &probes {
        println!("{p}");
    }
    let failed = probes.iter().filter(|p| !p.ok).count();
    if failed == 0 {
        println!("all {} probes passed", probes.len());
    } else {
        println!("{failed} of {} probes failed", probes.len());
    }
    Ok(failed == 0)
}

fn demo(port: u16) -> anyhow::Result<()> {
    let log = bbsso::config::Log {
        format: bbsso::config::LogFormat::Pretty,
        level: "info".into(),
    };
    bbsso::telemetry::init(&log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bbsso::demo::run(port, bbsso::server::shutdown_signal()))?;
    Ok(())
}

fn run(config: bbsso::config::Config, path: PathBuf) -> anyhow::Result<()> {
    bbsso::telemetry::init(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bbsso::server::run(config, Some(path), bbsso::server::shutdown_signal()))?;
    Ok(())
}
