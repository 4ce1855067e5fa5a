//! The `pgrelay` command: `run` serves a configuration, `check` validates one,
//! `demo` starts a throw-away local cluster with the proxy in front of it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};

use pgrelay::config::Config;
use pgrelay::{App, StopMode};

#[derive(Debug, Parser)]
#[command(name = "pgrelay", version, about = "A replication-aware PostgreSQL proxy")]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve with the given configuration until SIGTERM, SIGINT or SIGQUIT.
    Run {
        #[arg(short, long, default_value = "config/pgrelay.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit (non-zero when it is invalid).
    Check {
        #[arg(short, long, default_value = "config/pgrelay.toml")]
        config: PathBuf,
    },
    /// GET an HTTP endpoint of a running pgrelay and exit 0 on 200 (a probe for
    /// container health checks, which need no curl in the image).
    Probe {
        #[arg(default_value = "http://127.0.0.1:9930/livez")]
        url: String,
    },
    /// Start a local primary + 2 streaming replicas and pgrelay in front of them.
    Demo {
        /// Read-write port (a free one is chosen when it is taken).
        #[arg(long, default_value_t = 5432)]
        rw_port: u16,
        /// Read-only port (a free one is chosen when it is taken).
        #[arg(long, default_value_t = 5433)]
        ro_port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(run(&config))),
        Command::Probe { url } => runtime().and_then(|rt| rt.block_on(probe(&url))),
        Command::Demo { rw_port, ro_port } => {
            runtime().and_then(|rt| rt.block_on(pgrelay::demo::run(rw_port, ro_port)).map_err(Into::into))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pgrelay: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or journald gets plain text,
    // and each line costs less to write (the escape codes took about a
    // fifth of pgrelay's instructions per new connection).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let users = pgrelay::auth::UserDb::from_config(&config).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!(
        "{}: OK ({} nodes, {} users, {} databases; rw {}, ro {})",
        path.display(),
        config.nodes.len(),
        config.users.len(),
        config.databases.len(),
        config.listen.rw,
        config.listen.ro,
    );
    let client = &config.tls.client;
    match (&client.cert_file, client.sslmode) {
        (Some(cert), mode) if mode != pgrelay::config::ClientSslMode::Disable => {
            let ca = client.ca_file.as_ref().map_or("no client certificates asked for".to_owned(), |p| {
                format!("client certificates checked against {}", p.display())
            });
            println!(
                "  tls from clients: client_tls_sslmode = {}, certificate {}, {ca}; {}",
                mode.name(),
                cert.display(),
                if mode.requires_tls() { "plain-text clients are refused" } else { "plain-text clients are let in" }
            );
        }
        _ => println!("  tls from clients: client_tls_sslmode = disable (every SSLRequest is declined)"),
    }
    let tls = &config.tls.server;
    let ca = tls.ca_file.as_ref().map_or("no CA file".to_owned(), |p| format!("CA {}", p.display()));
    let cert =
        tls.cert_file.as_ref().map_or("no client certificate".to_owned(), |p| format!("certificate {}", p.display()));
    println!("  tls to the servers: server_tls_sslmode = {}, {ca}, {cert}", tls.sslmode.name());
    // How pgrelay will log in to the servers, so nothing about it is implicit.
    for node in &config.nodes {
        println!(
            "  node {}: server_require_auth = \"{}\", server_scram_max_iterations = {}",
            node.name, node.server_require_auth, config.cluster.server_scram_max_iterations
        );
    }
    for user in &config.users {
        if let Some(entry) = users.get(&user.name) {
            let server = &entry.server;
            println!("  user {}: logs in to the servers as {} with {}", user.name, server.user, server.describe());
        }
    }
    match &config.auth {
        None => println!("  users from the database: off (no [auth] auth_user)"),
        Some(auth) => println!(
            "  users from the database: looked up on the primary as {} in database {} (auth_type {}, cached {})",
            auth.user,
            auth.dbname,
            if auth.auth_type == pgrelay::config::AuthType::Md5 { "md5" } else { "scram-sha-256" },
            humantime::format_duration(auth.cache_ttl),
        ),
    }
    Ok(())
}

/// Serves until a signal or the admin console's SHUTDOWN says to stop, as
/// PgBouncer defines the signals: SIGTERM drains clients (each finishes its
/// transaction), SIGINT drains server work, SIGQUIT stops at once, SIGHUP
/// reloads, SIGUSR1 / SIGUSR2 pause / resume. A second stop signal during a
/// drain stops at once.
async fn run(path: &std::path::Path) -> anyhow::Result<()> {
    // Installed first: from here on a signal is never the default "terminate".
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut pause = signal(SignalKind::user_defined1())?;
    let mut resume = signal(SignalKind::user_defined2())?;
    let app = App::start_from(path).await?;
    let ctx = app.context().clone();
    let mode = loop {
        tokio::select! {
            _ = terminate.recv() => break StopMode::WaitForClients,
            _ = interrupt.recv() => break StopMode::WaitForServers,
            _ = quit.recv() => break StopMode::Immediate,
            mode = app.stop_requested() => break mode,
            _ = hangup.recv() => {
                // The outcome is logged and counted by reload itself.
                let _ = ctx.reload();
            }
            _ = pause.recv() => {
                let ctx = ctx.clone();
                tokio::spawn(async move { ctx.pause().await });
            }
            _ = resume.recv() => ctx.resume(),
        }
    };
    let grace = ctx.config().pool.shutdown_grace;
    tracing::info!(?mode, ?grace, "stopping");
    let stopping = app.stop(mode, grace);
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            _ = &mut stopping => return Ok(()),
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            _ = quit.recv() => {}
        }
        tracing::info!("second stop signal: closing every connection now");
        ctx.shutdown.cancel();
    }
}

/// A bounded HTTP/1.1 GET of `http://HOST:PORT/PATH`; Ok on status 200.
async fn probe(url: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("probe URL must start with http://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(64 * 1024).read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange).await.context("no answer within 5 s")??;
    let text = String::from_utf8_lossy(&response);
    let status = text.lines().next().unwrap_or("");
    anyhow::ensure!(status.split(' ').nth(1) == Some("200"), "{url}: {status}");
    println!("{status}");
    Ok(())
}
