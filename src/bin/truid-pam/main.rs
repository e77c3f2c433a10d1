fn main() {
    eprintln!("truid-pam: not yet implemented");
    std::process::exit(2);
}
