//! The shipped units under a real systemd: the machine's own, booted as PID 1
//! of private namespaces (see real_systemd/machine.rs), with fifod installed
//! as the Debian package installs it. Start, readiness, reload, stop, socket
//! activation, and a sandbox that a process of the config cannot leave.
//!
//! These need root and a writable cgroup2 hierarchy; elsewhere each says
//! that it was skipped. CI sets FIFOD_TEST_REAL_SYSTEMD where they can run,
//! so that there they fail rather than skip.

mod machine;

use machine::Machine;

use crate::common::IN_OUT;

const FIFOD: &str = "fifod.service";

/// A line written into `in` comes out of `out` (a reader started first,
/// every step bounded).
fn relays(m: &Machine, line: &str) {
    let got = m.ok(&format!(
        "timeout 20 head -n 1 /run/fifod/out > /tmp/got & reader=$!
         printf '%s\\n' '{line}' | timeout 20 tee /run/fifod/in > /dev/null
         wait $reader; cat /tmp/got"
    ));
    assert_eq!(got.trim_end(), line, "console:\n{}", m.console());
}

#[test]
fn the_unit_starts_reloads_and_stops_fifod_under_a_real_systemd() {
    let Some(m) = Machine::boot("the_unit_starts_reloads_and_stops_fifod_under_a_real_systemd")
    else {
        return;
    };
    m.install_fifod(
        r#"
[fifo.in]
mode = "0620"
[fifo.out]
mode = "0640"

[[route]]
from = ["in"]
to = ["out"]
"#,
    );
    // Type=notify: `systemctl start` returns once fifod said READY=1.
    m.ok("systemctl start fifod");
    assert_eq!(m.property(FIFOD, "ActiveState"), "active");
    assert_eq!(m.property(FIFOD, "SubState"), "running");
    assert!(
        !m.property(FIFOD, "StatusText").is_empty(),
        "fifod sent no STATUS="
    );
    assert_eq!(
        m.ok("stat -c '%a %F %U' /run/fifod/in /run/fifod/out"),
        "620 fifo root\n640 fifo root\n"
    );
    relays(&m, "before any reload");
    // The control socket answers from inside the sandbox.
    let status = m.ok("fifod status");
    assert!(status.contains("/run/fifod/in"), "{status}");

    // A reload that adds a FIFO: it appears, the route keeps flowing.
    m.set_config(
        r#"
[fifo.in]
mode = "0620"
[fifo.out]
mode = "0640"
[fifo.extra]

[[route]]
from = ["in"]
to = ["out"]
"#,
    );
    let pid = m.property(FIFOD, "MainPID");
    // `systemctl reload` returns once the new config is in force.
    m.ok("systemctl reload fifod");
    assert!(
        m.sh("test -p /run/fifod/extra").ok,
        "systemctl reload returned before /run/fifod/extra was made\n{}",
        m.console()
    );
    relays(&m, "after a reload");

    // A rejected config fails the reload, leaves the running one in force,
    // and says so.
    m.set_config("[fifo.in]\nmode = \"999\"\n");
    let rejected = m.sh("systemctl reload fifod");
    assert!(
        !rejected.ok,
        "systemctl reload succeeded with a rejected config"
    );
    assert!(
        m.property(FIFOD, "StatusText").starts_with("reload failed"),
        "StatusText: {}\n{}",
        m.property(FIFOD, "StatusText"),
        m.console()
    );
    assert!(
        m.console()
            .contains("fifod.toml:2:8: fifo.in.mode: invalid mode"),
        "the reload's errors are not in the service's output\n{}",
        m.console()
    );
    assert_eq!(m.property(FIFOD, "ActiveState"), "active");
    assert_eq!(
        m.property(FIFOD, "MainPID"),
        pid,
        "a reload restarted fifod"
    );
    relays(&m, "after a rejected reload");

    // Stop: every FIFO removed, the directory (RuntimeDirectoryPreserve=) kept.
    m.ok("systemctl stop fifod");
    assert_eq!(m.property(FIFOD, "ActiveState"), "inactive");
    assert_eq!(m.property(FIFOD, "Result"), "success");
    assert_eq!(m.ok("ls -A /run/fifod"), "", "fifod left files behind");
}

#[test]
fn socket_units_hold_the_fifos_while_fifod_restarts_under_a_real_systemd() {
    let Some(m) =
        Machine::boot("socket_units_hold_the_fifos_while_fifod_restarts_under_a_real_systemd")
    else {
        return;
    };
    m.install_fifod(IN_OUT);
    for unit in ["fifod-in.socket", "fifod-out.socket"] {
        let shared = m.share(unit, &machine::unit_file(unit));
        m.ok(&format!("install -m 0644 {shared} /etc/systemd/system/"));
    }
    m.ok("groupadd --system app && systemctl daemon-reload");
    m.ok("systemctl start fifod-in.socket fifod-out.socket");
    assert_eq!(
        m.ok("stat -c '%a %F %G' /run/fifod/in /run/fifod/out"),
        "620 fifo app\n640 fifo app\n"
    );
    assert_eq!(m.property(FIFOD, "ActiveState"), "inactive");

    // A write while fifod is stopped waits in the FIFO and starts fifod; a
    // reader that holds `out` sees no end of file while fifod restarts.
    let got = m.ok("exec 3</run/fifod/out
         printf 'while stopped\\n' > /run/fifod/in
         read -r -t 30 a <&3 || exit 1
         systemctl restart fifod
         printf 'after a restart\\n' > /run/fifod/in
         read -r -t 30 b <&3 || exit 1
         echo \"$a|$b\"");
    assert_eq!(got, "while stopped|after a restart\n", "{}", m.console());
    assert_eq!(m.property(FIFOD, "ActiveState"), "active");

    // fifod never removes what the socket units made; they do, at their stop.
    m.ok("systemctl stop fifod-in.socket fifod-out.socket fifod");
    assert_eq!(m.property(FIFOD, "Result"), "success");
    assert_eq!(m.ok("ls -A /run/fifod"), "");
}

/// A 1→1 route, a 1→2 fan-out and a route through a process (`cat`), each
/// stream written and read whole while `systemctl kill --kill-whom=main -s
/// KILL` takes fifod down three times (a crash: its process runs on) and
/// Restart= brings it back: the readers get exactly what was written
/// (nothing lost, nothing twice), writers and readers never see an error or
/// an end of file, the process keeps its pid (adopted); `fifod upgrade`
/// then keeps the main pid, and the stop after it leaves systemd's fd store
/// empty.
#[test]
fn a_killed_fifod_loses_no_byte_under_a_real_systemd() {
    let Some(m) = Machine::boot("a_killed_fifod_loses_no_byte_under_a_real_systemd") else {
        return;
    };
    m.install_fifod(
        r#"
[fifo.in]
[fifo.out]
[fifo.fan]
[fifo.a]
[fifo.b]

[[route]]
from = ["in"]
to = ["out"]

[[route]]
from = ["fan"]
to = ["a", "b"]

[fifo.pin]
[fifo.pout]
[process.relay]
command = ["cat"]

[[route]]
from = ["pin"]
to = ["relay"]

[[route]]
from = ["relay"]
to = ["pout"]
"#,
    );
    m.ok("systemctl start fifod");
    let relay_pid = || m.ok("fifod status | awk '$1 == \"relay\" { print $2 }'");
    let relay = relay_pid();
    assert!(!relay.trim().is_empty(), "no pid for the process relay");
    let size = 256 * 1024 * 1024;
    // Readers first, each bounded; then the writers. `head -c` stops at
    // `size` bytes, and fails the comparison if an end of file came first.
    m.ok(&format!(
        "head -c {size} /dev/urandom > /tmp/data
         for out in out a b pout; do
           (timeout 300 head -c {size} /run/fifod/$out > /tmp/got-$out; echo $? > /tmp/rc-$out) &
         done
         for in in in fan pin; do
           (timeout 300 cat /tmp/data > /run/fifod/$in; echo $? > /tmp/rc-$in) &
         done
         true"
    ));
    for kill in 1..=3 {
        // Once the slowest reader is `kill` quarters of the way through.
        let at = size / 4 * kill;
        m.ok(&format!(
            "for i in $(seq 3000); do
               n=$(stat -c %s /tmp/got-out /tmp/got-a /tmp/got-b /tmp/got-pout | sort -n | head -1)
               [ \"$n\" -ge {at} ] && break
               sleep 0.01
             done
             pid=$(systemctl show -p MainPID --value fifod)
             systemctl kill --kill-whom=main -s KILL fifod
             # Restart= starts a new fifod.
             for i in $(seq 3000); do
               new=$(systemctl show -p MainPID --value fifod)
               [ \"$new\" != 0 ] && [ \"$new\" != \"$pid\" ] &&
                 [ \"$(systemctl show -p SubState --value fifod)\" = running ] && exit 0
               sleep 0.01
             done
             exit 1"
        ));
    }
    let outcome = m.ok("for f in in fan pin out a b pout; do
           while [ ! -s /tmp/rc-$f ]; do sleep 0.05; done
           echo \"$f $(cat /tmp/rc-$f)\"
         done
         for out in out a b pout; do cmp /tmp/data /tmp/got-$out && echo \"$out same\"; done");
    assert_eq!(
        outcome,
        "in 0\nfan 0\npin 0\nout 0\na 0\nb 0\npout 0\nout same\na same\nb same\npout same\n",
        "{}",
        m.console()
    );
    assert_eq!(m.property(FIFOD, "NRestarts"), "3");
    assert_eq!(
        relay_pid(),
        relay,
        "the process ran on through the kills and was adopted\n{}",
        m.console()
    );
    for warning in ["not kept across a crash", "would not outlive a crash"] {
        assert!(
            !m.console().contains(warning),
            "fifod could not use the fd store fully\n{}",
            m.console()
        );
    }
    assert!(
        m.console().contains("took back what the fifod before held"),
        "{}",
        m.console()
    );
    // An upgrade in place under systemd: the same main pid, no restart,
    // and the route flows on.
    let pid = m.property(FIFOD, "MainPID");
    let upgraded = m.ok("fifod upgrade");
    assert!(upgraded.starts_with("upgraded"), "{upgraded}");
    assert_eq!(
        m.property(FIFOD, "MainPID"),
        pid,
        "an upgrade keeps the pid"
    );
    assert_eq!(m.property(FIFOD, "SubState"), "running");
    assert_eq!(m.property(FIFOD, "NRestarts"), "3");
    relays(&m, "after an upgrade");
    m.ok("systemctl stop fifod");
    assert_eq!(m.property(FIFOD, "Result"), "success");
    assert_eq!(m.ok("ls -A /run/fifod"), "", "fifod left files behind");
    assert_eq!(
        m.property(FIFOD, "NFileDescriptorStore"),
        "0",
        "a stop leaves the fd store empty"
    );
}

/// What a process of the config tries, as root inside fifod's sandbox; each
/// line says whether it worked. The first two must work, the rest must not.
const ESCAPE: &str = r#"
try() { what=$1; shift; if "$@" >/dev/null 2>&1; then echo "$what: done"; else echo "$what: refused"; fi; }
try "write in /run/fifod" sh -c 'echo x > /run/fifod/own'
try "write in /tmp" sh -c 'echo x > /tmp/own'
try "write in /run" sh -c 'echo x > /run/escape'
try "write a unit" sh -c 'printf "[Service]\nExecStart=/bin/true\n" > /run/systemd/system/escape.service'
try "write in /etc/fifod" sh -c 'echo x > /etc/fifod/escape'
try "write in /etc" sh -c 'echo x > /etc/escape'
try "write in /usr" sh -c 'echo x > /usr/escape'
try "write in /var" sh -c 'echo x > /var/escape'
try "start a unit" systemctl start witness.service
try "reach systemd" systemctl daemon-reload
try "make a device" mknod /tmp/mem c 1 1
"#;

#[test]
fn a_process_of_the_config_cannot_leave_the_sandbox_of_a_real_systemd() {
    let Some(m) =
        Machine::boot("a_process_of_the_config_cannot_leave_the_sandbox_of_a_real_systemd")
    else {
        return;
    };
    // A unit the process would start if it could reach systemd.
    m.ok(
        "printf '[Service]\\nType=oneshot\\nExecStart=/bin/touch /run/witness\\n' \
          > /etc/systemd/system/witness.service",
    );
    let script = toml::Value::String(ESCAPE.to_owned());
    m.install_fifod(&format!(
        r#"
[fifo.report]

[process.escape]
command = ["sh", "-c", {script}]
restart = "never"

[[route]]
from = ["escape"]
to = ["report"]
eof = "forward"
"#
    ));
    m.ok("systemctl start fifod");
    let report = m.ok("timeout 30 cat /run/fifod/report");
    let expected = "write in /run/fifod: done
write in /tmp: done
write in /run: refused
write a unit: refused
write in /etc/fifod: refused
write in /etc: refused
write in /usr: refused
write in /var: refused
start a unit: refused
reach systemd: refused
make a device: refused
";
    assert_eq!(report, expected, "console:\n{}", m.console());
    // Seen from outside the sandbox: nothing was written, nothing started.
    let leftovers = m.sh(
        "ls -d /run/escape /run/systemd/system/escape.service /etc/fifod/escape \
         /etc/escape /usr/escape /var/escape /run/witness 2>/dev/null",
    );
    assert_eq!(leftovers.stdout, "", "the sandbox leaked");
    assert_eq!(m.property("witness.service", "ActiveState"), "inactive");
    m.ok("systemctl stop fifod");
}

/// The per-user unit, under a user's own service manager (started here as
/// a service of the private systemd, as logind would): start, a reload that
/// answers, stop, FIFOs under the user's runtime directory.
#[test]
fn the_user_unit_runs_fifod_for_one_user_under_a_real_systemd() {
    let Some(m) = Machine::boot("the_user_unit_runs_fifod_for_one_user_under_a_real_systemd")
    else {
        return;
    };
    m.install_fifod(IN_OUT);
    let unit = m.share(
        "fifod-user.service",
        &machine::unit_file("fifod-user.service"),
    );
    m.ok(&format!(
        "useradd --no-create-home --home-dir /var/lib/alice --uid 1500 --user-group alice &&
         install -d -o alice -g alice -m 0755 /var/lib/alice &&
         install -d -o alice -g alice -m 0700 /run/user/1500 &&
         install -D -m 0644 {unit} /tmp/fifod-user.service &&
         systemd-run --unit=user-alice --uid=1500 --gid=1500 -p Type=notify -p Delegate=yes \
             --setenv=XDG_RUNTIME_DIR=/run/user/1500 /lib/systemd/systemd --user"
    ));
    let alice = |script: &str| {
        m.ok(&format!(
            "setpriv --reuid=1500 --regid=1500 --init-groups \
             env HOME=/var/lib/alice XDG_RUNTIME_DIR=/run/user/1500 bash -c '{script}'"
        ))
    };
    alice(
        "install -D -m 0644 /tmp/fifod-user.service ~/.config/systemd/user/fifod.service &&
         mkdir -p ~/.config/fifod &&
         printf \"[fifo.in]\\n[fifo.out]\\n[[route]]\\nfrom = [\\\"in\\\"]\\nto = [\\\"out\\\"]\\n\" \
             > ~/.config/fifod/fifod.toml &&
         systemctl --user daemon-reload && systemctl --user start fifod",
    );
    assert_eq!(
        alice("stat -c \"%a %F %U\" /run/user/1500/fifod/in"),
        "600 fifo alice\n"
    );
    let got = alice(
        "timeout 20 head -n 1 /run/user/1500/fifod/out > /tmp/alice-got & reader=$!
         echo for-alice | timeout 20 tee /run/user/1500/fifod/in > /dev/null
         wait $reader; cat /tmp/alice-got",
    );
    assert_eq!(got, "for-alice\n", "{}", m.console());
    alice(
        "printf \"[fifo.extra]\\n\" >> ~/.config/fifod/fifod.toml &&
         systemctl --user reload fifod && test -p /run/user/1500/fifod/extra",
    );
    alice("systemctl --user stop fifod");
    assert_eq!(
        alice("ls -A /run/user/1500/fifod"),
        "",
        "fifod left files behind"
    );
}
