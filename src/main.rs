//! The `provisioner` binary: parse the command line and run it. Everything else is in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    provisioner::cli::main()
}
