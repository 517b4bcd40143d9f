//! Command line → configuration → `server`. Everything else is in the
//! library.

use std::future::Future;

use anyhow::{bail, Context as _};
use clap::Parser;
use tidewire::{
    config::{Cli, Command, Config},
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
            init_logging(&cli.config.log)?;
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
                "embedded Postgres on 127.0.0.1:{} (open a shell with `cargo run -- psql`)",
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
    let app = App::prepare(config).await?;
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

/// Replaces this process with psql connected to the database.
fn psql(config: &Config, args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let url = database_url(config)?;
    let error = std::process::Command::new("psql")
        .arg(url)
        .args(args)
        .exec();
    bail!("cannot run psql: {error}")
}

async fn create_admin(url: &str, email: &str, password: String) -> anyhow::Result<()> {
    if password.chars().count() < 8 {
        bail!("the password must have at least 8 characters");
    }
    tidewire::db::migrate(url).await?;
    let hash = tidewire::domains::accounts::hash_password(password)
        .await
        .map_err(|e| anyhow::anyhow!("hashing the password: {}", e.message))?;
    let client = tidewire::db::connect_once(url).await?;
    let email = email.trim().to_lowercase();
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

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("bad --log filter `{filter}`"))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    Ok(())
}
