//! The `blocks` command: start the registry server, and manage blocks, tokens and keys
//! on a running one.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use registry_server::cli::{
    self, AuthCommand, Format, KeyCommand, RegisterArgs, TokenCommand, TypeCommand, WebhookCommand,
};
use registry_server::serve::{ServeArgs, start};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than the system allocator: the server's read path makes many small,
/// short-lived allocations across tokio's worker threads, where glibc's malloc cost about
/// a tenth of the CPU under load. Built without its transparent-huge-page advice
/// (`no_thp`), which made an idle server resident in 2 MiB pages (+15 MiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A secrets and configuration block registry, wire-compatible with Prefect's blocks.
#[derive(Debug, Parser)]
#[command(name = "blocks", version, about)]
struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the registry server (SQLite under $BLOCKS_HOME unless --database-url).
    Serve(ServeArgs),
    /// Register built-in block collections (existing type metadata is left alone).
    Register(RegisterArgs),
    /// Block types.
    #[command(subcommand)]
    Type(TypeCommand),
    /// List blocks (secrets masked).
    Ls {
        /// Only blocks of this type.
        #[arg(long = "type")]
        block_type: Option<String>,
    },
    /// Show a block, references resolved.
    Inspect {
        /// SLUG/NAME, e.g. gcs-bucket/zoom-gcs.
        address: String,
        /// Show secret values (needs the read-secrets scope).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Create a block; the data is checked against its schema before it is sent.
    Create {
        /// SLUG/NAME.
        address: String,
        /// The data: key=value (text) or key:=json pairs, `--data @file.json`, or
        /// `--data -` (a JSON object on stdin). A value on the command line shows in `ps`
        /// and the shell history: give secrets with `--data @file.json` or `--data -`.
        #[arg(long = "data", num_args = 1..)]
        data: Vec<String>,
        /// A field referencing a saved block: FIELD=SLUG/NAME (repeatable).
        #[arg(long = "ref")]
        refs: Vec<String>,
    },
    /// Delete a block no other block references.
    Delete {
        /// SLUG/NAME.
        address: String,
    },
    /// Edit a block's data in $EDITOR (secrets stay "********" unless changed).
    Edit {
        /// SLUG/NAME.
        address: String,
    },
    /// A block's stored versions, newest first.
    History {
        /// SLUG/NAME.
        address: String,
    },
    /// Make a new version equal to an older one (secrets included).
    Rollback {
        /// SLUG/NAME.
        address: String,
        /// The version to return to.
        version: u32,
    },
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Data keys and master keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Sign-in with a workload identity: trusted JWT issuers and roles (admin).
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Webhooks: URLs the server POSTs change events to, signed (admin).
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Print changes to blocks, types, schemas and keys as they happen, until interrupted.
    Watch {
        /// Only events of block types whose slug matches this glob.
        #[arg(long = "type")]
        block_type: Option<String>,
        /// Only events of blocks whose name matches this glob (`zoom-*`).
        #[arg(long)]
        name: Option<String>,
    },
    /// The audit log, newest first.
    Audit {
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only actions starting with this text.
        #[arg(long)]
        action: Option<String>,
    },
    /// Export every type, schema and block to FILE; the blocks are encrypted under
    /// BLOCKS_EXPORT_PASSPHRASE.
    Export {
        /// The file to write.
        file: std::path::PathBuf,
    },
    /// Import an export (idempotent: what exists is kept).
    Import {
        /// The file to read.
        file: std::path::PathBuf,
    },
    /// Copy every block type, schema and block (secrets and references included) from a
    /// running Prefect server. Idempotent.
    ImportPrefect {
        /// The Prefect API URL, e.g. http://127.0.0.1:4200/api.
        #[arg(long)]
        url: String,
        /// A key for the Prefect server, if it needs one.
        #[arg(long, env = "PREFECT_SOURCE_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // Whatever BLOCKS_LOG asks, the wire crates never log at trace (frames hold tokens).
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("BLOCKS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish();
    tracing_subscriber::util::SubscriberInitExt::init(
        tracing_subscriber::layer::SubscriberExt::with(
            subscriber,
            registry_server::http::auth::wire_log_cap(),
        ),
    );
    let cli = Cli::parse();
    let format = if cli.json {
        Format::Json
    } else {
        Format::Table
    };
    let result = match &cli.command {
        Command::Serve(args) => match start(args).await {
            Ok(running) => running.wait().await,
            Err(e) => Err(e),
        },
        Command::Register(args) => cli::register(args, format).await,
        Command::Type(command) => cli::types(command, format).await,
        Command::Ls { block_type } => cli::ls(block_type.as_deref(), format).await,
        Command::Inspect {
            address,
            show_secrets,
        } => cli::inspect(address, *show_secrets, format).await,
        Command::Create {
            address,
            data,
            refs,
        } => cli::create(address, data, refs, format).await,
        Command::Delete { address } => cli::delete(address, format).await,
        Command::Edit { address } => cli::edit(address, format).await,
        Command::History { address } => cli::history(address, format).await,
        Command::Rollback { address, version } => cli::rollback(address, *version, format).await,
        Command::Token(command) => cli::token(command, format).await,
        Command::Key(command) => cli::key(command, format).await,
        Command::Auth(command) => cli::auth(command, format).await,
        Command::Webhook(command) => cli::webhook(command, format).await,
        Command::Watch { block_type, name } => {
            cli::watch(block_type.as_deref(), name.as_deref(), format).await
        }
        Command::Audit { limit, action } => cli::audit(*limit, action.as_deref(), format).await,
        Command::Export { file } => cli::export(file, format).await,
        Command::Import { file } => cli::import(file, format).await,
        Command::ImportPrefect { url, api_key } => {
            cli::import_prefect(url, api_key.as_deref(), format).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "blocks",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if matches!(cli.command, Command::Serve(_)) {
                tracing::error!("{e:#}");
            } else {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("error: {e:#}");
                }
            }
            if e.downcast_ref::<cli::UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
