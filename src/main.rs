//! The `connections` command: serve, migrate, and operator commands.

use std::process::ExitCode;

use clap::Parser;
use connections::{
    config::{AdminArgs, AdminCommand, Cli, Command, DatabaseSettings, LogFormat, Settings},
    db,
    domain::{
        Actor, ApiKeyId, AuditAction, AuditFilter, DisplayName, OrganizationId, PageSize,
        VariantArray,
    },
    service::{ApiKeys, AuditLog, Organizations, PageTokens, secrets},
    startup::{Application, StartupError},
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

    let serving = matches!(cli.command, Command::Serve(_));
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Admin(args) => admin(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Once: in the server's log (which may be JSON), or for a command
            // run by hand, as one line on stderr.
            let sentence = sentence(err.as_ref());
            if serving {
                tracing::error!(error = %sentence, "failed");
            } else {
                eprintln!("error: {sentence}");
            }
            exit_code(err.as_ref())
        }
    }
}

/// `err` for people (a database error without its wrapping).
fn sentence(err: &(dyn std::error::Error + 'static)) -> String {
    match err.downcast_ref::<sea_orm::DbErr>() {
        Some(db_err) => db::describe(db_err),
        None => err.to_string(),
    }
}

/// What the process exits with after `err`: 1, or a code of its own for a
/// failure a deployment may want to tell apart. (Invalid options exit with 2,
/// from the command line parser.)
fn exit_code(err: &(dyn std::error::Error + 'static)) -> ExitCode {
    match err.downcast_ref::<StartupError>() {
        // Serving without migrating on a database that needs `connections migrate`.
        Some(StartupError::SchemaBehind { .. }) => ExitCode::from(3),
        _ => ExitCode::FAILURE,
    }
}

async fn serve(settings: Settings) -> Result<(), Error> {
    let mut shutdown = Box::pin(shutdown_signal()?);
    // A signal during start-up (e.g. while waiting for the database, or for
    // another replica's migrations) stops it at once: nothing is serving
    // yet, and whatever start-up began (a migration's transaction included)
    // ends with the process.
    let app = tokio::select! {
        app = Application::build(settings) => app?,
        () = &mut shutdown => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
    };
    app.run_until_stopped(shutdown).await?;
    Ok(())
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed
/// now, so a signal that arrives while the server is still starting (e.g.
/// migrating) also leads to a clean stop instead of killing the process.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("received Ctrl-C");
    })
}

async fn migrate(settings: DatabaseSettings) -> Result<(), Error> {
    let (db, schema) = db::connect_and_migrate(&settings).await?;
    schema.warn_if_newer();
    connections::entity::change_log::continue_after_move(&db).await?;
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
    if args.command.reads_only()
        && let Some(path) = db::missing_sqlite_file(&args.database.url)
    {
        return Err(format!(
            "there is no database at {}: this command reads an existing one and creates none; \
             check --database-url (or CONNECTIONS_DATABASE_URL)",
            path.display()
        )
        .into());
    }
    // Commands that only read change nothing, the schema included: a
    // deployment that migrates as a step of its own decides when.
    let (db, schema) = if args.command.reads_only() {
        let db = db::connect(&args.database).await?;
        let schema = db::schema(&db).await?;
        if !schema.pending.is_empty() {
            return Err(StartupError::SchemaBehind {
                pending: schema.pending,
            }
            .into());
        }
        (db, schema)
    } else {
        db::connect_and_migrate(&args.database).await?
    };
    schema.warn_if_newer();
    let tokens = PageTokens::new(secrets::shared_key(&db, PageTokens::SECRET_NAME).await?);
    let organizations = Organizations::new(db.clone(), db.clone().into(), tokens.clone());
    let keys = ApiKeys::new(db.clone(), db.clone().into());
    let actor = Actor::command_line();
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
            print(&organization_json(
                organizations.create(&actor, name).await?,
            ));
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
            let (key, secret) = keys.create(&actor, org, name).await?;
            let mut value = key_json(&key);
            value["secret"] = json!(secret);
            print(&value);
        }
        AdminCommand::RevokeKey { key } => {
            let id = ApiKeyId::parse(&key).map_err(|err| format!("--key {err}"))?;
            print(&key_json(&keys.revoke(&actor, id).await?));
        }
        AdminCommand::Audit {
            action,
            target,
            since,
            until,
        } => {
            let time = |option: &str, value: Option<String>| {
                value
                    .map(|value| {
                        chrono::DateTime::parse_from_rfc3339(&value)
                            .map(|time| time.to_utc())
                            .map_err(|err| format!("--{option} must be an RFC 3339 time: {err}"))
                    })
                    .transpose()
            };
            let filter = AuditFilter {
                action: action
                    .map(|action| {
                        action.parse::<AuditAction>().map_err(|_| {
                            format!(
                                "--action must be one of {}",
                                AuditAction::VARIANTS
                                    .iter()
                                    .map(|a| a.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })
                    })
                    .transpose()?,
                target_id: target
                    .map(|target| {
                        connections::domain::ids::parse_uuid(&target)
                            .map_err(|err| format!("--target {err}"))
                    })
                    .transpose()?,
                start_time: time("since", since)?,
                end_time: time("until", until)?,
            };
            if let (Some(start), Some(end)) = (filter.start_time, filter.end_time)
                && end <= start
            {
                return Err("--until must be after --since".into());
            }
            let log = AuditLog::of(&db, tokens);
            let page_size = PageSize::from_request(500).expect("positive");
            let mut token: Option<String> = None;
            loop {
                let page = log.list(&filter, page_size, token.as_deref()).await?;
                for event in page.items {
                    print(&json!({
                        "id": event.id.to_string(),
                        "occur_time": rfc3339(event.occur_time),
                        "action": event.action.to_string(),
                        "credential_kind": event.credential_kind.to_string(),
                        "credential_id": event.credential_id,
                        "target_type": event.target_type.to_string(),
                        "target_id": event.target_id.to_string(),
                        "organization_id": event.organization_id.to_string(),
                        "target_display_name": event.target_display_name,
                        "peer": event.peer,
                        "request_id": event.request_id,
                    }));
                }
                match page.next_page_token {
                    Some(next) => token = Some(next),
                    None => break,
                }
            }
        }
        AdminCommand::Quickstart => {
            let first = PageSize::from_request(1).expect("positive");
            if !organizations.list(first, None).await?.items.is_empty() {
                return Err(
                    "this database already has organizations: quickstart only sets up a \
                     new database for trying the service; use create-org and create-key"
                        .into(),
                );
            }
            for (name, key_name) in [
                ("Acme Bank", "Acme Bank dashboard"),
                ("Orbit Credit Union", "Orbit Credit Union dashboard"),
            ] {
                let name = DisplayName::parse(name).expect("a valid name");
                let org = organizations.create(&actor, name).await?;
                let (key, secret) = keys.create(&actor, org.id, key_name.to_owned()).await?;
                let mut value = organization_json(org);
                value["api_key_id"] = json!(key.id.to_string());
                value["api_key_secret"] = json!(secret);
                print(&value);
            }
            eprintln!(
                "Two organizations, each with an API key. Start the server with \
                 `connections serve`, open http://127.0.0.1:50051/ and sign in with either \
                 api_key_secret; sign in with the other in a second browser window to play \
                 the other party."
            );
        }
        AdminCommand::ListKeys { org } => {
            let org = OrganizationId::parse(&org).map_err(|err| format!("--org {err}"))?;
            for key in keys.list(org).await? {
                print(&key_json(&key));
            }
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
