//! `flowforge-create-admin -e … -p … [-n …]` is `flowforge create-admin -e … -p … [-n …]`.
fn main() -> std::process::ExitCode {
    flowforge_api::cli::main_with_command("create-admin")
}
