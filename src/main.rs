//! The `sluice` binary: parses the command line and runs it (see [`sluice::cli`]).

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
