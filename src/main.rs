fn main() -> std::process::ExitCode {
    isomount::platform::keep_freed_memory();
    isomount::run()
}
