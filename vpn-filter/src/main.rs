use std::process::ExitCode;

fn main() -> ExitCode {
    vpn_filter::cli::main()
}
