//! Command line → configuration → `server`. Everything else is in the
//! library.

use std::future::Future;

use anyhow::{bail, Context as _};
use clap::Parser;
use tidewire::{
    config::{Cli, Command, Config, LogFormat},
    db::{
        embedded::{self, EmbeddedOptions, EmbeddedPostgres},
        ensure_database,
    },
    graphql,
    server::App,
};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::PrintSchema => {
            print!("{}", graphql::sdl());
            Ok(())
        }
        Command::Psql { args } => psql(&cli.config, &args),
        Command::CreateAdmin { email, password } => {
            let url = database_url(&cli.config)?;
            tokio::runtime::Runtime::new()?.block_on(create_admin(&url, &email, password))
        }
        Command::Serve => {
            init_logging(&cli.config.log, cli.config.log_format)?;
            tokio::runtime::Runtime::new()?.block_on(serve(cli.config))
        }
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    // Installed before anything starts, so a SIGTERM during start-up still
    // shuts down in order (and stops the embedded Postgres).
    let shutdown = shutdown_signal()?;
    let embedded = match config.database_url {
        Some(_) => None,
        None => {
            let options = EmbeddedOptions {
                data_dir: config.data_dir.clone(),
                ephemeral: false,
            };
            let pg =
                tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&options)).await??;
            ensure_database(&pg.url("postgres"), embedded::DATABASE).await?;
            config.database_url = Some(pg.url(embedded::DATABASE));
            if config.jwt_secret.is_none() && config.jwt_public_key.is_none() {
                config.jwt_secret = Some(pg.dev_jwt_secret()?);
            }
            tracing::info!(
                "embedded Postgres on 127.0.0.1:{} (open a shell with `cargo run --release -- psql`)",
                pg.port()
            );
            Some(pg)
        }
    };
    let result = run(config, shutdown).await;
    if let Some(pg) = embedded {
        tokio::task::spawn_blocking(move || pg.stop()).await??;
    }
    result
}

async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // Ctrl-C or SIGTERM while start-up still waits for the database ends
    // the wait at once.
    let mut shutdown = Box::pin(shutdown);
    let app = tokio::select! {
        app = App::prepare(config) => app?,
        () = &mut shutdown => {
            tracing::info!("shutdown requested during start-up");
            return Ok(());
        }
    };
    let addr = listener.local_addr()?;
    tracing::info!("GraphiQL: http://{addr}/graphql");
    println!("Tidewire is up. GraphiQL: http://{addr}/graphql");
    app.serve(listener, shutdown).await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; the handlers are installed at once.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// DATABASE_URL, or the running embedded cluster's.
fn database_url(config: &Config) -> anyhow::Result<String> {
    match &config.database_url {
        Some(url) => Ok(url.clone()),
        None => match embedded::running_url(&config.data_dir) {
            Some(url) => Ok(url),
            None => bail!(
                "no embedded Postgres is running in {}: start Tidewire first (`cargo run --release`) or set DATABASE_URL",
                config.data_dir.display()
            ),
        },
    }
}

/// Replaces this process with psql connected to the database. The password
/// goes through the environment (`PGPASSWORD`, readable only by this user),
/// never on the command line, which every local user can read with `ps`.
fn psql(config: &Config, args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::{ffi::OsStrExt, process::CommandExt};
    let (conninfo, password) = without_password(&database_url(config)?)?;
    let mut command = std::process::Command::new("psql");
    command.arg(conninfo).args(args);
    if let Some(password) = password {
        command.env("PGPASSWORD", std::ffi::OsStr::from_bytes(&password));
    }
    let error = command.exec();
    bail!("cannot run psql: {error}")
}

/// A libpq connection string (`key='value' …`) for `url` without its
/// password, and the password.
fn without_password(url: &str) -> anyhow::Result<(String, Option<Vec<u8>>)> {
    use tokio_postgres::config::{Host, SslMode};
    let config: tokio_postgres::Config = url.parse().context("parsing the database URL")?;
    let join = |items: Vec<String>| (!items.is_empty()).then(|| items.join(","));
    let hosts = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let hostaddrs = config
        .get_hostaddrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let ports = config.get_ports().iter().map(ToString::to_string).collect();
    let ssl_mode = match config.get_ssl_mode() {
        SslMode::Disable => Some("disable"),
        SslMode::Require => Some("require"),
        _ => None,
    };
    let fields = [
        ("host", join(hosts)),
        ("hostaddr", join(hostaddrs)),
        ("port", join(ports)),
        ("user", config.get_user().map(str::to_owned)),
        ("dbname", config.get_dbname().map(str::to_owned)),
        ("options", config.get_options().map(str::to_owned)),
        ("sslmode", ssl_mode.map(str::to_owned)),
        (
            "connect_timeout",
            config
                .get_connect_timeout()
                .map(|t| t.as_secs().to_string()),
        ),
    ];
    let conninfo = fields
        .iter()
        .filter_map(|(key, value)| {
            let value = value.as_ref()?.replace('\\', "\\\\").replace('\'', "\\'");
            Some(format!("{key}='{value}'"))
        })
        .collect::<Vec<_>>()
        .join(" ");
    Ok((conninfo, config.get_password().map(<[u8]>::to_vec)))
}

async fn create_admin(url: &str, email: &str, password: String) -> anyhow::Result<()> {
    if password.chars().count() < 8 {
        bail!("the password must have at least 8 characters");
    }
    // The same spelling signIn looks up.
    let email = tidewire::domains::accounts::normalize_email(email)
        .with_context(|| format!("--email {email:?}"))?;
    tidewire::db::migrate(url).await?;
    let hash = tidewire::domains::accounts::hash_password(password)
        .await
        .context("hashing the password")?;
    let client = tidewire::db::connect_once(url).await?;
    let row = client
        .query_one(
            "INSERT INTO tidewire.users (email, password_hash, role) VALUES ($1, $2, 'admin')
             ON CONFLICT (email) DO UPDATE SET role = 'admin', password_hash = EXCLUDED.password_hash
             RETURNING id::text",
            &[&email, &hash],
        )
        .await?;
    println!("admin {email} (id {})", row.get::<_, String>(0));
    Ok(())
}

/// Logs to standard output: `text` coloured only when that is a terminal
/// (no escape codes in files and pipes), or `json`, one object per line.
fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("bad --log filter `{filter}`"))?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_gets_the_password_apart_from_the_connection_string() {
        let (conninfo, password) =
            without_password("postgres://postgres:p%40ss%27w@127.0.0.1:5433/tidewire").unwrap();
        assert_eq!(password.as_deref(), Some(&b"p@ss'w"[..]));
        assert_eq!(
            conninfo,
            "host='127.0.0.1' port='5433' user='postgres' dbname='tidewire'"
        );
        assert!(!conninfo.contains("p@ss") && !conninfo.contains("%40"));

        let (conninfo, password) =
            without_password("host=db user=ann password=secret dbname='my db'").unwrap();
        assert_eq!(password.as_deref(), Some(&b"secret"[..]));
        assert_eq!(conninfo, "host='db' user='ann' dbname='my db'");

        let (_, password) = without_password("postgres://ann@db/app").unwrap();
        assert_eq!(password, None);
    }
}
