//! `flowforge-server …` is `flowforge …` (e.g. `flowforge-server create-admin`).
fn main() -> std::process::ExitCode {
    flowforge_api::cli::main()
}
