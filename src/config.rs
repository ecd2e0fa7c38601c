//! Command line and environment (SPEC section 6).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

/// The embedded default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://connections.db?mode=rwc";
/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// One-directional data-sharing connections between organizations, over gRPC.
#[derive(Debug, Parser)]
#[command(name = "connections", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending migrations, then serve gRPC until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply pending migrations and exit.
    Migrate(DatabaseArgs),
    /// Manage organizations and API keys directly in the database (no server needed).
    Admin(AdminArgs),
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://PATH?mode=rwc or postgres://USER@HOST/DB.
    #[arg(
        long,
        env = "CONNECTIONS_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Most database connections in the pool.
    #[arg(long, env = "CONNECTIONS_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

/// `connections serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CONNECTIONS_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Token for AdminService (prefer the environment variable: arguments are
    /// visible to other local users). Without it, AdminService refuses every call.
    #[arg(long, env = "CONNECTIONS_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub admin_token: Option<SecretString>,

    /// Log format.
    #[arg(long, env = "CONNECTIONS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// Origin allowed to call the API from a browser over gRPC-Web (repeatable;
    /// the environment variable takes a comma-separated list). None by default.
    #[arg(
        long = "cors-allow-origin",
        env = "CONNECTIONS_CORS_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_allow_origins: Vec<String>,

    /// TLS certificate chain (PEM). With --tls-key, the server speaks only TLS.
    #[arg(long, env = "CONNECTIONS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "CONNECTIONS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM) for mutual TLS: clients must present a
    /// certificate signed by one of them.
    #[arg(long, env = "CONNECTIONS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Address for Prometheus metrics (GET /metrics); off by default.
    #[arg(long, env = "CONNECTIONS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(value.to_owned()))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `connections admin`.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Database settings.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The operation.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Operator commands. Each prints JSON, one object per line.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Create an organization.
    CreateOrg {
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Create an API key for an organization; prints its secret, once.
    CreateKey {
        /// The organization's ID.
        #[arg(long)]
        org: String,
        /// Display name of the key.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke an API key.
    RevokeKey {
        /// The key's ID.
        #[arg(long)]
        key: String,
    },
    /// List every organization.
    ListOrgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_match_the_spec() {
        let cli = Cli::try_parse_from(["connections", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.log_format, LogFormat::Pretty);
    }

    #[test]
    fn origins_repeat_and_tls_needs_a_key() {
        let cli = Cli::try_parse_from([
            "connections",
            "serve",
            "--cors-allow-origin",
            "https://a.example",
            "--cors-allow-origin",
            "https://b.example",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(
            args.cors_allow_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(Cli::try_parse_from(["connections", "serve", "--tls-cert", "c.pem"]).is_err());
    }

    #[test]
    fn admin_create_key_parses() {
        let cli = Cli::try_parse_from([
            "connections",
            "admin",
            "create-key",
            "--org",
            "x",
            "--name",
            "ci",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Admin(AdminArgs {
                command: AdminCommand::CreateKey { .. },
                ..
            })
        ));
    }
}
