//! fifod(8): the command line's definition (`fifod::cli::command`) set as a
//! manual page by clap_mangen, between the prose below. `man/fifod.8` is
//! what `fifod_8` returns; `cli::generated_files_are_up_to_date` keeps it so.

use std::collections::HashSet;

use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

/// The page, as `man/fifod.8` must hold it.
pub fn fifod_8() -> String {
    let mut cli = fifod::cli::command().disable_help_subcommand(true);
    cli.build();
    let commands: Vec<&clap::Command> =
        cli.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    let man = Man::new(cli.clone()).section("8");

    // clap_mangen's title line leaves out an empty date instead of quoting
    // it, which moves the version into the date's place.
    let mut page = String::from(HEADER);
    page += &Roff::new().render();
    page += &format!(".TH FIFOD 8 \"\" \"fifod {}\"\n", env!("CARGO_PKG_VERSION"));
    page += ".nh\n.ad l\n";
    page += &without_preamble(rendered(|w| man.render_name_section(w)));

    let mut synopsis = Roff::new();
    synopsis.control("SH", ["SYNOPSIS"]);
    for command in &commands {
        synopsis.text(usage(command));
        synopsis.control("br", []);
    }
    synopsis.text([bold("fifod --help")]);
    synopsis.control("br", []);
    synopsis.text([bold("fifod --version")]);
    page += &without_preamble(synopsis.render());

    page += DESCRIPTION;

    let mut listing = Roff::new();
    listing.control("SH", ["COMMANDS"]);
    for command in &commands {
        listing.control("TP", []);
        listing.text(usage(command));
        let about = command
            .get_long_about()
            .or_else(|| command.get_about())
            .map(ToString::to_string)
            .unwrap_or_default();
        for (i, paragraph) in about.split("\n\n").enumerate() {
            if i > 0 {
                listing.control("IP", []);
            }
            listing.text(prose(paragraph));
        }
    }
    page += &without_preamble(listing.render());

    // Every option once, with what clap knows of it: its default, its
    // variable, its values. The synopsis says which command takes which.
    let mut seen = HashSet::new();
    let options: Vec<clap::Arg> = std::iter::once(&cli)
        .chain(commands.iter().copied())
        .flat_map(clap::Command::get_arguments)
        .filter(|arg| !arg.is_hide_set() && seen.insert(arg.get_id().clone()))
        .cloned()
        .collect();
    let every_option = clap::Command::new("fifod")
        .version(env!("CARGO_PKG_VERSION"))
        .disable_help_flag(true)
        .disable_version_flag(true)
        .args(options);
    page += &without_preamble(rendered(|w| {
        Man::new(every_option).render_options_section(w)
    }));

    page += REFERENCE;
    page
}

/// `fifod NAME [-c FILE] ...`, as the synopsis and the list of commands
/// show it.
fn usage(command: &clap::Command) -> Vec<Inline> {
    let mut line = vec![bold(format!("fifod {}", command.get_name()))];
    let args = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version"));
    for arg in args {
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map_or_else(|| arg.get_id().as_str().to_uppercase(), ToString::to_string);
        line.push(roman(" "));
        if arg.is_positional() {
            if arg.is_required_set() {
                line.push(italic(value));
            } else {
                line.extend([roman("["), italic(value), roman("]")]);
            }
            continue;
        }
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(short), _) => format!("-{short}"),
            (None, Some(long)) => format!("--{long}"),
            (None, None) => continue,
        };
        line.extend([roman("["), bold(flag)]);
        if arg.get_num_args().is_some_and(|n| n.takes_values()) {
            line.extend([roman(" "), italic(value)]);
        }
        line.push(roman("]"));
    }
    line
}

/// A paragraph of a doc comment: `code` in bold, and a full stop at its end.
fn prose(paragraph: &str) -> Vec<Inline> {
    let mut text = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    if !text.ends_with(['.', ':', ')']) {
        text.push('.');
    }
    text.split('`')
        .enumerate()
        .filter(|(_, part)| !part.is_empty())
        .map(|(i, part)| if i % 2 == 1 { bold(part) } else { roman(part) })
        .collect()
}

fn rendered(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    render(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Each rendering starts with the definitions that typeset apostrophes;
/// the page needs them once, before `.TH`.
fn without_preamble(roff: String) -> String {
    let preamble = Roff::new().render();
    roff.strip_prefix(&preamble)
        .map_or(roff.clone(), str::to_owned)
}

const HEADER: &str = r#".\" fifod(8). Generated from src/cli.rs and tests/cli/man_page.rs:
.\" edit those, then run `FIFOD_REGENERATE=1 cargo test --test tests generated_files`.
"#;

const DESCRIPTION: &str = r#".SH DESCRIPTION
.B fifod
manages named pipes (FIFOs) for other programs.
Its config file, described in
.BR fifod.toml (5),
lists the FIFOs, the processes and the routes between them.
.B fifod run
creates the FIFOs with the exact mode, owner and group the config asks for,
starts the processes with pipes on their standard streams, relays bytes along
the routes, and on SIGTERM or SIGINT delivers what it holds and removes
exactly the FIFOs it made.
.PP
Because fifod holds every FIFO open, the programs around it can come and go:
writers never make readers see a surprise end of file, readers that leave
never make writers die of SIGPIPE, and bytes written while no reader is there
wait for the next one.
When a reader is too slow, a route either holds the writers back or drops
bytes, by the policy its config chooses, and counts what it dropped.
.PP
.B fifod run
stays in the foreground (it never daemonises itself) and logs to standard
error.
Under systemd it runs as
.BR fifod.service :
it says when it is ready, reloading and stopping, keeps a watchdog, and
takes FIFOs that socket units pass it.
.PP
At start, fifod checks that the config fits in its open\-file limit (raising
the soft limit up to the hard one if needed): a config too large for it is an
error at start, naming the numbers, not a failure halfway through the run.
"#;

const REFERENCE: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success:
.B run
stopped cleanly (also when a second signal cut the drain short),
.B check
found the config valid,
.B reload
saw the new config in force,
.B status
got an answer,
.B completions
printed its script.
.TP
.B 1
.B run
failed to start or to run for another reason than an invalid config (a path
it refuses, another fifod on the same directory, an unreadable config);
.B check
found the config invalid, unreadable or refused;
.B reload
saw the daemon reject the config (the running config stays in force) or
could not ask it;
.B status
failed otherwise.
.TP
.B 2
A usage error.
.TP
.B 3
.B reload
and
.BR status :
no daemon answers on the control socket.
.TP
.B 78
.BR run :
the config is invalid, or refused because another user could change it
(EX_CONFIG), so that a unit can say
.BR RestartPreventExitStatus=78 .
.SH ENVIRONMENT
.TP
.B FIFOD_CONFIG
The config file when
.B \-\-config
is not given.
.TP
.B RUST_LOG
Overrides the config's
.BR log_level ,
for example
.BR RUST_LOG=debug .
.TP
.BR RUNTIME_DIRECTORY ", " XDG_RUNTIME_DIR
Give the default
.B dir
(see
.BR fifod.toml (5)).
.TP
.BR NOTIFY_SOCKET ", " WATCHDOG_USEC ", " WATCHDOG_PID
systemd's notification protocol
.RB ( Type=notify ):
.B READY=1
once every FIFO exists and is open and every process is started;
.B STATUS=
with a one\-line summary, at most once a second;
.B RELOADING=1
and
.B READY=1
around a reload;
.B STOPPING=1
when the drain starts; and
.B WATCHDOG=1
at half of
.BR WatchdogSec= .
.TP
.B FDSTORE
How many fds systemd's fd store keeps for fifod
.RB ( FileDescriptorStoreMax= ).
Above zero, with
.BR NOTIFY_SOCKET ,
fifod stores there the fds that hold its bytes
.RB ( FDSTORE=1 ", " FDNAME=fifod/ ...)
and takes them back after a crash; a stop empties the store.
.TP
.BR LISTEN_FDS ", " LISTEN_PID ", " LISTEN_FDNAMES
FIFOs passed by socket units: fifod takes each as the
.RB [fifo. \fINAME\fB]
of its
.BR FileDescriptorName= .
fds named
.B fifod/...
are those fifod stored before a crash.
.TP
.B JOURNAL_STREAM
When it names standard error, each log line starts with its syslog priority
.RB ( <3>
error,
.B <4>
warning,
.B <6>
info,
.B <7>
debug) and carries no timestamp.
.PP
The config's processes never inherit
.BR NOTIFY_SOCKET ,
.BR WATCHDOG_* ,
.B FDSTORE
nor
.BR LISTEN_* .
.SH SIGNALS
.TP
.BR SIGTERM ", " SIGINT
Stop.
fifod reads what writers already put in the inputs; closes each process's
stdin once everything feeding it has ended and was written, so that a
pipeline of processes drains stage by stage; relays what they still write;
delivers what it holds to readers that are there (for up to
.BR shutdown_timeout ;
an output that nobody has open, or whose last reader leaves, is not waited
for);
logs what could not be delivered; and removes the FIFOs, its lock file, its
control socket and its directory if it created it.
Processes still running at the timeout get SIGTERM on their process group,
and SIGKILL a second later.
A second signal during the drain skips the rest of it; fifod still removes
its FIFOs and exits 0.
.TP
.B SIGHUP
Reload the config, as
.B fifod reload
asks: fifod reads and checks the file while it goes on relaying, then applies
the difference.
An invalid file changes nothing: every error is logged, and the running
config stays in force.
.TP
.B SIGUSR2
Upgrade, as
.B fifod upgrade
asks: fifod executes its binary again (the one now at its path), same pid,
handing over every FIFO, the bytes it holds, its lines in progress and its
processes, which run on; the new binary reads the config again.
Writers and readers stay connected and nothing is lost.
A failed upgrade leaves fifod as it was.
.SH FILES
.TP
.I /etc/fifod/fifod.toml
The config without
.B \-\-config
or
.BR $FIFOD_CONFIG .
.TP
.I /etc/fifod/fifod.d/*.toml
Its fragments: FIFOs, processes and routes added to it (see
.BR fifod.toml (5)).
.TP
.I ~/.config/fifod/fifod.toml
The config of the per\-user unit.
.TP
.I /run/fifod
The default
.B dir
as root (the unit's
.BR RuntimeDirectory= );
.I $XDG_RUNTIME_DIR/fifod
for other users.
.TP
.IB dir /.fifod.lock
Holds an
.BR flock (2)
and fifod's pid: a second fifod on the same
.B dir
refuses to start and names the first one's pid.
.TP
.IB dir /control.sock
The control socket that
.B status
and
.B reload
ask (the config's
.BR daemon.control ).
.TP
.I /usr/lib/systemd/system/fifod.service
The unit, from the Debian package.
.TP
.I /usr/lib/systemd/user/fifod.service
The per\-user unit
.RB ( "systemctl \-\-user" ),
from the Debian package.
.TP
.I /usr/share/doc/fifod/
The README, an example config and example socket units.
.SH EXAMPLES
Check an edited config, then apply it to the running service:
.PP
.RS
.nf
fifod check \-\-config /etc/fifod/fifod.toml &&
    systemctl reload fifod
.fi
.RE
.PP
Relay between a pipeline and FIFOs, with
.B stdin
and
.B stdout
as endpoints of the config:
.PP
.RS
.nf
producer | fifod run \-\-config x.toml | consumer
.fi
.RE
.SH "SEE ALSO"
.BR fifod.toml (5),
.BR fifo (7),
.BR pipe (7),
.BR systemctl (1),
.BR systemd.socket (5),
.BR journalctl (1),
.I /usr/share/doc/fifod/README.md
"#;
