//! `appliance`: the command line. Thin on top of the library.

mod cli;
mod client;
mod docker;

fn main() -> std::process::ExitCode {
    cli::main()
}
