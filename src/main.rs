//! The hubgate binary: the command line does the rest.
#![forbid(unsafe_code)]

// A request allocates many small, short-lived values (the parsed body, the policy input, the
// audit record); mimalloc's thread-local free lists make that about half as costly as glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hubgate::cli::main()
}
