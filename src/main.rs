//! The `sprig` binary: all logic lives in the library (`sprig::cli`).

fn main() -> std::process::ExitCode {
    sprig::cli::main()
}
