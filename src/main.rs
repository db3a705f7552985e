fn main() -> std::process::ExitCode {
    isomount::run()
}
