fn main() {
    eprintln!("poshsm: the daemon and CLI are not built yet (see the open issues)");
    std::process::exit(2);
}
