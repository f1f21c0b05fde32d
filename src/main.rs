fn main() -> std::process::ExitCode {
    fifod::cli::main()
}
