//! The hubgate binary: the command line does the rest.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    hubgate::cli::main()
}
