//! The `smtpd` command: `python3 -m smtpd`, in Rust. See `smtpd --help`.

fn main() {
    let classes = smtpd::cli::Classes::builtin();
    std::process::exit(smtpd::cli::main(std::env::args_os().skip(1), &classes));
}
