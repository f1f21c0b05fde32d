//! The command line: `fifod run`, `check`, `reload`, `status` and
//! `completions`, and their exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use log::error;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::{self, Environment, LoadError};
use crate::control::{self, QueryError, ReloadStatus, Status};
use crate::daemon;

/// The config was invalid (sysexits' EX_CONFIG), so that a unit can say
/// `RestartPreventExitStatus=78`.
pub const EXIT_CONFIG: u8 = 78;
/// The start or the run failed for another reason.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "fifod",
    version,
    about = "Creates named pipes (FIFOs) safely and relays bytes between them",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run in the foreground until SIGTERM or SIGINT, then drain and clean up
    Run(ConfigArgs),
    /// Validate the config without touching the filesystem
    Check(ConfigArgs),
    /// Ask the running fifod to reload its config, and wait for the outcome
    ///
    /// Exits 0 once the config is in force (printing what changed), 1 when
    /// the daemon rejected it (printing every error; the running config
    /// stays in force), 3 when no daemon answers.
    Reload(ConfigArgs),
    /// Replace the running fifod's binary in place, and wait until it runs
    ///
    /// Sends SIGUSR2: fifod executes its binary again (the one now at its
    /// path), same pid, handing over its FIFOs, the bytes it holds, its
    /// lines in progress and its processes (they run on); the new one
    /// reads the config again. Nobody connected notices and nothing is
    /// lost. Exits 0 once the new binary runs, 1 when fifod could not
    /// upgrade (it goes on as it was), 3 when no daemon answers.
    Upgrade(ConfigArgs),
    /// Show what a running fifod relays, holds and dropped
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// What to print: tables, one JSON document, or metrics in
        /// Prometheus's text format
        #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
        format: StatusFormat,
        /// The same as --format json
        #[arg(long, conflicts_with = "format")]
        json: bool,
        /// Show it again every interval, with rates: redrawn in place on a
        /// terminal, one snapshot after another elsewhere (one JSON
        /// document a line with --json)
        #[arg(long)]
        watch: bool,
        /// The interval of --watch, such as 500ms or 2s
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// Print the completion script for SHELL
    ///
    /// The Debian package installs the scripts where each shell looks for
    /// them; elsewhere, for example:
    /// `fifod completions bash > /etc/bash_completion.d/fifod`.
    Completions {
        /// The shell that will read the script
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// What `fifod status` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
    Prometheus,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// The config file
    #[arg(
        short,
        long,
        value_name = "FILE",
        env = "FIFOD_CONFIG",
        default_value = "/etc/fifod/fifod.toml"
    )]
    config: PathBuf,
}

/// Parses the command line (usage errors exit 2) and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(&args.config),
        Command::Run(args) => run(&args.config),
        Command::Reload(args) => reload(&args.config),
        Command::Upgrade(args) => upgrade(&args.config),
        Command::Status {
            config,
            format,
            json,
            watch,
            interval,
        } => status(
            &config.config,
            if json { StatusFormat::Json } else { format },
            watch.then_some(interval),
        ),
        Command::Completions { shell } => completions(shell),
    }
}

/// The command line's definition, from which the man page fifod(8) and the
/// completion scripts are made.
pub fn command() -> clap::Command {
    Cli::command()
}

fn completions(shell: CompletionShell) -> ExitCode {
    use clap_complete::Shell;
    use std::io::Write;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    // Into memory first: clap_complete panics when its writer fails (a
    // closed pipe, a full disk), and stdout can.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "fifod", &mut script);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fifod completions: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `fifod status` when no daemon answers, so that scripts can tell.
pub const EXIT_NOT_RUNNING: u8 = 3;

fn parse_interval(text: &str) -> Result<Duration, String> {
    match crate::units::parse_duration(text)? {
        d if d < Duration::from_millis(100) => Err("the interval is at least 100ms".into()),
        d => Ok(d),
    }
}

fn status(path: &Path, format: StatusFormat, watch: Option<Duration>) -> ExitCode {
    if watch.is_some() && format == StatusFormat::Prometheus {
        eprintln!(
            "fifod status: --watch does not go with --format prometheus \
             (a scraper asks once each time)"
        );
        return ExitCode::from(2);
    }
    let env = Environment::from_process();
    // A file edited into an invalid one is what a failed reload leaves: the
    // daemon still runs the config before it, and is asked where the
    // `[daemon]` table says. If it does not answer there, the errors are
    // what to report.
    let (socket, invalid) = match config::load_untrusted(path, &env) {
        Ok(config) => (config.daemon.control, None),
        Err(e @ LoadError::Invalid(_)) => match config::locate_control(path, &env) {
            Some(socket) => (Some(socket), Some(e)),
            None => {
                report_load_error(&e);
                return ExitCode::from(EXIT_FAILURE);
            }
        },
        Err(e) => {
            report_load_error(&e);
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let Some(socket) = socket else {
        eprintln!(
            "{}: daemon.control is empty: the control socket is off",
            path.display()
        );
        return ExitCode::from(EXIT_FAILURE);
    };
    if let Some(interval) = watch {
        if invalid.is_some() {
            eprintln!(
                "fifod status: {} is invalid (`fifod check` lists its errors); \
                 the daemon runs the config it had before",
                path.display()
            );
        }
        return crate::live::watch(&socket, interval, format == StatusFormat::Json);
    }
    let answer = control::query_peer(&socket, Duration::from_secs(5));
    if let Some(e) = invalid {
        if answer.is_err() {
            report_load_error(&e);
            return ExitCode::from(EXIT_FAILURE);
        }
        eprintln!(
            "fifod status: {} is invalid (`fifod check` lists its errors); \
             the daemon runs the config it had before",
            path.display()
        );
    }
    match answer {
        Ok((mut answer, daemon)) => {
            // Who has each FIFO open is found here, as this user may see it.
            control::peers::find(&mut answer, daemon);
            let text = match format {
                StatusFormat::Table => control::render(&answer),
                StatusFormat::Json => match serde_json::to_string_pretty(&answer) {
                    Ok(text) => text + "\n",
                    Err(e) => {
                        eprintln!("fifod status: {e}");
                        return ExitCode::from(EXIT_FAILURE);
                    }
                },
                StatusFormat::Prometheus => {
                    control::metrics::render(&answer, std::time::SystemTime::now())
                }
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(QueryError::NotRunning(why)) => {
            eprintln!("fifod is not running ({why})");
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        Err(QueryError::Failed(why)) => {
            eprintln!("fifod status: {why}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// How long `fifod reload` waits for the outcome: a reload reads and checks
/// the file off the relay's path, then applies the difference.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(90);

/// What `fifod reload` and `fifod upgrade` have once they signalled the
/// running daemon: how to ask it again, its status before, and its pid.
struct Signalled {
    socket: PathBuf,
    before: Status,
    pid: i32,
}

impl Signalled {
    fn ask(&self) -> Result<(Status, i32), QueryError> {
        control::query_peer(&self.socket, Duration::from_secs(5))
    }
}

/// Finds the daemon that `path`'s control socket answers for, checks that
/// it runs, and sends it `signal` for `command` (`reload`, `upgrade`;
/// `doing` is `reloading`, `upgrading`). On failure, says why and gives
/// the exit status.
fn signal_daemon(
    path: &Path,
    (command, doing): (&str, &str),
    signal: Signal,
) -> Result<Signalled, ExitCode> {
    let env = Environment::from_process();
    // The file may well be invalid: the daemon says so, with every error.
    let socket = match config::load_untrusted(path, &env) {
        Ok(config) => config.daemon.control,
        Err(_) => config::locate_control(path, &env),
    };
    let kill_name = signal.as_str().trim_start_matches("SIG");
    let Some(socket) = socket else {
        eprintln!(
            "{}: no control socket to ask (daemon.control is empty or the [daemon] table is \
             invalid); `kill -{kill_name}` the daemon instead",
            path.display()
        );
        return Err(ExitCode::from(EXIT_FAILURE));
    };
    let (before, pid) = control::query_peer(&socket, Duration::from_secs(5))
        .map_err(|e| query_failed(command, e))?;
    if before.state != "running" {
        eprintln!("fifod is {}: not {doing}", before.state);
        return Err(ExitCode::from(EXIT_FAILURE));
    }
    // A daemon in a pid namespace this one cannot see has no pid here (0):
    // kill(0) would signal this process's own group.
    if pid <= 0 {
        eprintln!(
            "fifod {command}: the daemon's pid is not visible from here; send it {}",
            signal.as_str()
        );
        return Err(ExitCode::from(EXIT_FAILURE));
    }
    if let Err(e) = kill(Pid::from_raw(pid), signal) {
        eprintln!("fifod {command}: cannot signal fifod (pid {pid}): {e}");
        return Err(ExitCode::from(EXIT_FAILURE));
    }
    Ok(Signalled {
        socket,
        before,
        pid,
    })
}

fn reload(path: &Path) -> ExitCode {
    let daemon = match signal_daemon(path, ("reload", "reloading"), Signal::SIGHUP) {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    // Every request after `before.reload_requests` is answered by a reload
    // that read the file after it came: ours, or a later one.
    let ours = daemon.before.reload_requests + 1;
    let end = Instant::now() + RELOAD_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
        let now = match daemon.ask() {
            Ok((now, _)) => now,
            Err(e) => return query_failed("reload", e),
        };
        match now.last_reload {
            Some(last) if last.answers >= ours => return reload_outcome(&last),
            _ if now.state != "running" => {
                eprintln!("fifod is {} before it reloaded: not reloaded", now.state);
                return ExitCode::from(EXIT_FAILURE);
            }
            _ if Instant::now() >= end => {
                eprintln!(
                    "fifod reload: no outcome after {}s; the daemon may still apply it \
                     (`fifod status` shows the last reload)",
                    RELOAD_TIMEOUT.as_secs()
                );
                return ExitCode::from(EXIT_FAILURE);
            }
            _ => {}
        }
    }
}

/// How long `fifod upgrade` waits for the new binary to answer.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

fn upgrade(path: &Path) -> ExitCode {
    let daemon = match signal_daemon(path, ("upgrade", "upgrading"), Signal::SIGUSR2) {
        Ok(daemon) => daemon,
        Err(code) => return code,
    };
    let (before, pid) = (&daemon.before, daemon.pid);
    let end = Instant::now() + UPGRADE_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
        // While the binary is executed again, the socket is not there.
        if let Ok((now, now_pid)) = daemon.ask() {
            if now_pid != pid {
                eprintln!("fifod upgrade: another fifod (pid {now_pid}) answers now");
                return ExitCode::from(EXIT_FAILURE);
            }
            if now.upgrades > before.upgrades && now.state == "running" {
                println!("upgraded: fifod (pid {pid}) runs the new binary");
                return ExitCode::SUCCESS;
            }
            if now.upgrade_failures > before.upgrade_failures {
                let why = now.upgrade_error.unwrap_or_default();
                eprintln!("upgrade failed: {why}; fifod goes on as it was");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
        if kill(Pid::from_raw(pid), None).is_err() {
            eprintln!("fifod upgrade: fifod (pid {pid}) exited (see its log)");
            return ExitCode::from(EXIT_FAILURE);
        }
        if Instant::now() >= end {
            eprintln!(
                "fifod upgrade: fifod did not answer as upgraded within {}s (see its log)",
                UPGRADE_TIMEOUT.as_secs()
            );
            return ExitCode::from(EXIT_FAILURE);
        }
    }
}

fn reload_outcome(last: &ReloadStatus) -> ExitCode {
    if last.ok {
        if last.changes.is_empty() {
            println!("reloaded: the config did not change");
        } else {
            println!("reloaded:");
            for change in &last.changes {
                println!("  {change}");
            }
        }
        return ExitCode::SUCCESS;
    }
    for line in &last.errors {
        eprintln!("{line}");
    }
    eprintln!("reload failed: the running config stays in force");
    ExitCode::from(EXIT_FAILURE)
}

fn query_failed(command: &str, e: QueryError) -> ExitCode {
    match e {
        QueryError::NotRunning(why) => {
            eprintln!("fifod is not running ({why})");
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        QueryError::Failed(why) => {
            eprintln!("fifod {command}: {why}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match config::load_listed(path, &Environment::from_process()) {
        Ok((config, listing)) => {
            // Beside a main file alone, the summary says it all.
            if listing.read.len() > 1 || !listing.ignored.is_empty() {
                for file in &listing.read {
                    println!("read {}", file.display());
                }
                for (file, why) in &listing.ignored {
                    println!("ignored {}: {why}", file.display());
                }
            }
            for line in config.summary() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_load_error(&e);
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match config::load(path, &Environment::from_process()) {
        Ok(config) => config,
        Err(e) => {
            report_load_error(&e);
            return ExitCode::from(match e {
                LoadError::Invalid(_) | LoadError::Untrusted { .. } => EXIT_CONFIG,
                LoadError::Unreadable { .. } => EXIT_FAILURE,
            });
        }
    };
    init_logging(config.daemon.log_level);
    match daemon::run(config, path.to_path_buf()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Prints why a config could not be loaded. Under journald (`fifod run` as
/// a service) each line is marked as an error, as the logs are.
fn report_load_error(e: &LoadError) {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    for line in e.to_string().lines() {
        eprintln!("{prefix}{line}");
    }
    if let LoadError::Invalid(diagnostics) = e {
        let n = diagnostics.len();
        eprintln!("{prefix}{n} error{} found", if n == 1 { "" } else { "s" });
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the config's `log_level`. Under
/// journald each line carries its syslog priority (`<3>` for errors, `<4>`
/// for warnings, ...) and no timestamp, which the journal adds itself, so
/// that `journalctl -p warning` selects what it should.
fn init_logging(level: log::LevelFilter) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format_target(false);
    if stderr_is_journal() {
        builder.format(|out, record| {
            use std::io::Write;
            // Each line of a message gets the prefix: a newline in it (from
            // a process's output, say) cannot start a line of its own making.
            let priority = syslog_priority(record.level());
            let message = record.args().to_string();
            for line in message.split('\n') {
                writeln!(out, "<{priority}>{line}")?;
            }
            Ok(())
        });
    }
    builder.init();
}

/// The syslog priority journald reads from a `<N>` prefix.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is the stream systemd connected to the journal:
/// `$JOURNAL_STREAM` names its device and inode (`DEV:INO`), and a stderr
/// redirected elsewhere by the service no longer matches.
fn stderr_is_journal() -> bool {
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = named.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}
