//! `appliance`: the command line. Thin on top of the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
