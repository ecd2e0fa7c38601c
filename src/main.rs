//! The `connections` command: serve, migrate, and operator commands.

use std::process::ExitCode;

use clap::Parser;
use connections::{
    config::{AdminArgs, AdminCommand, Cli, Command, DatabaseArgs, LogFormat, ServeArgs},
    db::DbSettings,
    domain::{ApiKeyId, DisplayName, OrganizationId, PageSize},
    service::{ApiKeys, Organizations, PageTokens, secrets},
    startup::{self, Application, Settings, TlsSettings},
    telemetry,
};
use serde_json::json;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// mimalloc (its long-standing v2 line) instead of the system allocator: a
/// call allocates and frees many small buffers across threads, where glibc's
/// malloc spent about 15% of the server's CPU (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        Command::Migrate(_) | Command::Admin(_) => LogFormat::Pretty,
    };
    let default_filter = match &cli.command {
        Command::Serve(_) | Command::Migrate(_) => telemetry::DEFAULT_FILTER,
        // Operator commands print JSON on stdout; keep stderr quiet.
        Command::Admin(_) => "warn",
    };
    telemetry::init_subscriber(telemetry::get_subscriber(
        format,
        default_filter,
        std::io::stderr,
    ));

    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Admin(args) => admin(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "failed");
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn db_settings(args: &DatabaseArgs) -> DbSettings {
    DbSettings {
        url: args.database_url.clone(),
        max_connections: args.db_max_connections,
    }
}

async fn serve(args: ServeArgs) -> Result<(), Error> {
    let shutdown = startup::shutdown_signal()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            client_ca_pem: args.tls_client_ca.as_deref().map(read).transpose()?,
        }),
        _ => None,
    };
    let app = Application::build(Settings {
        admin_token: args.admin_token,
        cors_allow_origins: args.cors_allow_origins,
        tls,
        metrics_listen: args.metrics_listen,
        ..Settings::new(args.listen, db_settings(&args.database))
    })
    .await?;
    app.run_until_stopped(shutdown).await?;
    Ok(())
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()).into())
}

async fn migrate(args: DatabaseArgs) -> Result<(), Error> {
    let db = startup::connect_and_migrate(&db_settings(&args)).await?;
    db.close().await?;
    tracing::info!("migrations applied");
    Ok(())
}

fn print(value: &serde_json::Value) {
    println!("{value}");
}

fn rfc3339(time: chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn admin(args: AdminArgs) -> Result<(), Error> {
    let db = startup::connect_and_migrate(&db_settings(&args.database)).await?;
    let tokens = PageTokens::new(secrets::shared_key(&db, PageTokens::SECRET_NAME).await?);
    let organizations = Organizations::new(db.clone(), db.clone().into(), tokens);
    let keys = ApiKeys::new(db.clone(), db.clone().into());
    let organization_json = |org: connections::domain::Organization| {
        json!({
            "id": org.id.to_string(),
            "display_name": org.display_name,
            "create_time": rfc3339(org.create_time),
        })
    };
    let key_json = |key: &connections::domain::ApiKey| {
        json!({
            "id": key.id.to_string(),
            "organization_id": key.organization_id.to_string(),
            "display_name": key.display_name,
            "prefix": key.prefix,
            "create_time": rfc3339(key.create_time),
            "revoke_time": key.revoke_time.map(rfc3339),
        })
    };

    match args.command {
        AdminCommand::CreateOrg { name } => {
            let name = DisplayName::parse(&name).map_err(|err| format!("--name {err}"))?;
            print(&organization_json(organizations.create(name).await?));
        }
        AdminCommand::CreateKey { org, name } => {
            let org = OrganizationId::parse(&org).map_err(|err| format!("--org {err}"))?;
            let name = if name.trim().is_empty() {
                String::new()
            } else {
                DisplayName::parse(&name)
                    .map_err(|err| format!("--name {err}"))?
                    .as_str()
                    .to_owned()
            };
            let (key, secret) = keys.create(org, name).await?;
            let mut value = key_json(&key);
            value["secret"] = json!(secret);
            print(&value);
        }
        AdminCommand::RevokeKey { key } => {
            let id = ApiKeyId::parse(&key).map_err(|err| format!("--key {err}"))?;
            print(&key_json(&keys.revoke(id).await?));
        }
        AdminCommand::ListOrgs => {
            let page_size = PageSize::from_request(500).expect("positive");
            let mut token: Option<String> = None;
            loop {
                let page = organizations.list(page_size, token.as_deref()).await?;
                for org in page.items {
                    print(&organization_json(org));
                }
                match page.next_page_token {
                    Some(next) => token = Some(next),
                    None => break,
                }
            }
        }
    }
    db.close().await?;
    Ok(())
}
