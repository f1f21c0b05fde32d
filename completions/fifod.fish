# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_fifod_global_optspecs
    string join \n h/help V/version
end

function __fish_fifod_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_fifod_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_fifod_using_subcommand
    set -l cmd (__fish_fifod_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c fifod -n "__fish_fifod_needs_command" -s h -l help -d 'Print help'
complete -c fifod -n "__fish_fifod_needs_command" -s V -l version -d 'Print version'
complete -c fifod -n "__fish_fifod_needs_command" -f -a "run" -d 'Run in the foreground until SIGTERM or SIGINT, then drain and clean up'
complete -c fifod -n "__fish_fifod_needs_command" -f -a "check" -d 'Validate the config without touching the filesystem'
complete -c fifod -n "__fish_fifod_needs_command" -f -a "reload" -d 'Ask the running fifod to reload its config, and wait for the outcome'
complete -c fifod -n "__fish_fifod_needs_command" -f -a "upgrade" -d 'Replace the running fifod\'s binary in place, and wait until it runs'
complete -c fifod -n "__fish_fifod_needs_command" -f -a "status" -d 'Show what a running fifod relays, holds and dropped'
complete -c fifod -n "__fish_fifod_needs_command" -f -a "completions" -d 'Print the completion script for SHELL'
complete -c fifod -n "__fish_fifod_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fifod -n "__fish_fifod_using_subcommand run" -s c -l config -d 'The config file' -r -F
complete -c fifod -n "__fish_fifod_using_subcommand run" -s h -l help -d 'Print help'
complete -c fifod -n "__fish_fifod_using_subcommand run" -s V -l version -d 'Print version'
complete -c fifod -n "__fish_fifod_using_subcommand check" -s c -l config -d 'The config file' -r -F
complete -c fifod -n "__fish_fifod_using_subcommand check" -s h -l help -d 'Print help'
complete -c fifod -n "__fish_fifod_using_subcommand check" -s V -l version -d 'Print version'
complete -c fifod -n "__fish_fifod_using_subcommand reload" -s c -l config -d 'The config file' -r -F
complete -c fifod -n "__fish_fifod_using_subcommand reload" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fifod -n "__fish_fifod_using_subcommand reload" -s V -l version -d 'Print version'
complete -c fifod -n "__fish_fifod_using_subcommand upgrade" -s c -l config -d 'The config file' -r -F
complete -c fifod -n "__fish_fifod_using_subcommand upgrade" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fifod -n "__fish_fifod_using_subcommand upgrade" -s V -l version -d 'Print version'
complete -c fifod -n "__fish_fifod_using_subcommand status" -s c -l config -d 'The config file' -r -F
complete -c fifod -n "__fish_fifod_using_subcommand status" -l format -d 'What to print: tables, one JSON document, or metrics in Prometheus\'s text format' -r -f -a "table\t''
json\t''
prometheus\t''"
complete -c fifod -n "__fish_fifod_using_subcommand status" -l interval -d 'The interval of --watch, such as 500ms or 2s' -r
complete -c fifod -n "__fish_fifod_using_subcommand status" -l json -d 'The same as --format json'
complete -c fifod -n "__fish_fifod_using_subcommand status" -l watch -d 'Show it again every interval, with rates: redrawn in place on a terminal, one snapshot after another elsewhere (one JSON document a line with --json)'
complete -c fifod -n "__fish_fifod_using_subcommand status" -s h -l help -d 'Print help'
complete -c fifod -n "__fish_fifod_using_subcommand status" -s V -l version -d 'Print version'
complete -c fifod -n "__fish_fifod_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c fifod -n "__fish_fifod_using_subcommand completions" -s V -l version -d 'Print version'
complete -c fifod -n "__fish_fifod_using_subcommand help; and not __fish_seen_subcommand_from run check reload upgrade status completions help" -f -a "run" -d 'Run in the foreground until SIGTERM or SIGINT, then drain and clean up'
complete -c fifod -n "__fish_fifod_using_subcommand help; and not __fish_seen_subcommand_from run check reload upgrade status completions help" -f -a "check" -d 'Validate the config without touching the filesystem'
complete -c fifod -n "__fish_fifod_using_subcommand help; and not __fish_seen_subcommand_from run check reload upgrade status completions help" -f -a "reload" -d 'Ask the running fifod to reload its config, and wait for the outcome'
complete -c fifod -n "__fish_fifod_using_subcommand help; and not __fish_seen_subcommand_from run check reload upgrade status completions help" -f -a "upgrade" -d 'Replace the running fifod\'s binary in place, and wait until it runs'
complete -c fifod -n "__fish_fifod_using_subcommand help; and not __fish_seen_subcommand_from run check reload upgrade status completions help" -f -a "status" -d 'Show what a running fifod relays, holds and dropped'
complete -c fifod -n "__fish_fifod_using_subcommand help; and not __fish_seen_subcommand_from run check reload upgrade status completions help" -f -a "completions" -d 'Print the completion script for SHELL'
complete -c fifod -n "__fish_fifod_using_subcommand help; and not __fish_seen_subcommand_from run check reload upgrade status completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
