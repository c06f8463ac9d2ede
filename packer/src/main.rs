//! `ferry`: the packer.
fn main() -> std::process::ExitCode {
    ferry_packer::main()
}
