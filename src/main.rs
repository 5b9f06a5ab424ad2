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
    /// List or revoke sessions through the running proxy's admin listener (needs session.store = "redis" and
    /// admin.api_token).
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
        /// Admin address to ask (default: server.admin_listen of the configuration).
        #[arg(long, global = true, value_name = "HOST:PORT")]
        admin: Option<String>,
        /// Bearer token of the session API (default: admin.api_token of the configuration).
        #[arg(
            long,
            global = true,
            env = "BBSSO_ADMIN_TOKEN",
            hide_env_values = true,
            value_name = "TOKEN"
        )]
        token: Option<String>,
    },
    /// Run the whole flow on this machine: a demo OpenID provider, a Bitbucket stand-in and the proxy.
    Demo {
        /// Port of the proxy on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// Show live sessions, of one user or of everyone.
    List {
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End sessions on every replica at their next request: all of a user's, or one by id.
    Revoke {
        #[arg(
            long,
            value_name = "NAME",
            required_unless_present = "session",
            conflicts_with = "session"
        )]
        user: Option<String>,
        #[arg(long, value_name = "ID")]
        session: Option<String>,
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
                    Ok((_, config)) => admin_address(&config),
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
        Command::Sessions { action, admin, token } => {
            let (address, token) = match admin_target(cli.config, admin, token) {
                Ok(t) => t,
                Err(code) => return code,
            };
            match sessions(&address, &token, action) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("bitbucket-sso-proxy sessions: {err:#}");
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

/// The admin listener's address as a client reaches it.
fn admin_address(config: &bbsso::config::Config) -> String {
    let mut a = config.server.admin_listen;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    a.to_string()
}

/// Address and token of the session API: from the flags, else from the configuration.
fn admin_target(
    config: Option<PathBuf>,
    admin: Option<String>,
    token: Option<String>,
) -> Result<(String, String), ExitCode> {
    if let (Some(a), Some(t)) = (&admin, &token) {
        return Ok((a.clone(), t.clone()));
    }
    let (path, config) = load(config)?;
    let address = admin.unwrap_or_else(|| admin_address(&config));
    let token = match token.or_else(|| config.admin.api_token.as_ref().map(|t| t.expose().to_owned())) {
        Some(t) => t,
        None => {
            eprintln!(
                "bitbucket-sso-proxy sessions: {} sets no admin.api_token; set it (and restart or reload the proxy), or pass --token",
                path.display()
            );
            return Err(ExitCode::from(EXIT_USAGE));
        }
    };
    Ok((address, token))
}

fn sessions(address: &str, token: &str, action: SessionsAction) -> anyhow::Result<()> {
    use bbsso::admin::sessions::{ApiClient, table};
    use bbsso::session::store::Target;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let client = ApiClient::new(address, token);
    match action {
        SessionsAction::List { user, json } => {
            let sessions = runtime.block_on(client.list(user.as_deref()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else if sessions.is_empty() {
                println!(
                    "no live sessions{}",
                    user.map(|u| format!(" for {u}")).unwrap_or_default()
                );
            } else {
                print!("{}", table(&sessions));
            }
        }
        SessionsAction::Revoke { user, session } => {
            let target = match (user, session) {
                (Some(u), _) => Target::User(u),
                (None, Some(id)) => Target::Session(id),
                (None, None) => anyhow::bail!("give --user NAME or --session ID"),
            };
            let ended = runtime.block_on(client.revoke(&target))?;
            println!("revoked {} session(s)", ended.len());
            if !ended.is_empty() {
                print!("{}", table(&ended));
            }
        }
    }
    Ok(())
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
