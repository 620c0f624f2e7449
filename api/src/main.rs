fn main() -> std::process::ExitCode {
    flowforge_api::cli::main()
}
