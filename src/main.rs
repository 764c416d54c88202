//! The `umbra` binary: one executable for every role.
//!
//! - `umbra node`: one node of a cluster (crate umbra-node).
//! - `umbra ctl`: administration over gRPC, talking to any node ([`ctl`]).
//! - `umbra up`: a local three-node cluster as child processes ([`up`], [`local`]).
//! - `umbra bench`: benchmarks against a real cluster ([`bench`]).

/// mimalloc keeps freed I/O buffers for reuse, where glibc's malloc unmaps and re-faults them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_volume;
mod client;
mod ctl;
mod files;
mod local;
mod shadow;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "umbra", version, about = "Clustered storage for Hyper-V hosts and backup software")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Node(NodeArgs),
    /// Administer a cluster through any of its nodes.
    Ctl(ctl::CtlArgs),
    /// Run a local three-node cluster on loopback (Ctrl-C stops it).
    Up(up::UpArgs),
    /// Benchmarks against a real cluster.
    Bench(bench::BenchArgs),
}

/// `umbra node`: flags override the config file's values.
#[derive(clap::Args)]
struct NodeArgs {
    /// TOML config file (see docs/cli.md for its keys).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=i64::MAX as u64))]
    id: Option<u64>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    grpc_addr: Option<String>,
    #[arg(long)]
    smb_addr: Option<String>,
    /// Start a new cluster with this node as its first member.
    #[arg(long)]
    bootstrap: bool,
    /// Join the cluster through this member's gRPC address (repeatable).
    #[arg(long)]
    join: Vec<String>,
}

impl NodeArgs {
    fn into_config(self) -> Result<umbra_node::config::NodeConfig, umbra_node::config::ConfigError> {
        use toml::Value;
        let mut table = umbra_node::config::NodeConfig::load_table(self.config.as_deref())?;
        let mut set = |key: &str, v: Value| {
            table.insert(key.into(), v);
        };
        if let Some(id) = self.id {
            set("id", Value::Integer(i64::try_from(id).map_err(|_| umbra_node::config::ConfigError::Invalid(format!("id {id} is too large")))?));
        }
        if let Some(d) = self.data_dir {
            set("data_dir", Value::String(d.to_string_lossy().into_owned()));
        }
        if let Some(a) = self.grpc_addr {
            set("grpc_addr", Value::String(a));
        }
        if let Some(a) = self.smb_addr {
            set("smb_addr", Value::String(a));
        }
        if self.bootstrap {
            set("bootstrap", Value::Boolean(true));
        }
        if !self.join.is_empty() {
            set("join", Value::Array(self.join.into_iter().map(Value::String).collect()));
        }
        let origin = self.config.unwrap_or_else(|| PathBuf::from("<flags>"));
        umbra_node::config::NodeConfig::from_table(table, &origin)
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("UMBRA_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Node(args) => {
            init_logging("info,openraft=warn");
            match args.into_config() {
                Ok(config) => runtime.block_on(umbra_node::daemon::run(config)),
                Err(e) => Err(e.into()),
            }
        }
        Command::Ctl(args) => {
            init_logging("warn");
            runtime.block_on(ctl::run(args))
        }
        Command::Up(args) => {
            init_logging("info");
            runtime.block_on(up::run(args))
        }
        Command::Bench(args) => {
            init_logging("warn");
            runtime.block_on(bench::run(args))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
