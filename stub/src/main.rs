//! `./installer`: the ferry stub with its payload appended.
fn main() -> std::process::ExitCode {
    ferry_stub::commands::main()
}
