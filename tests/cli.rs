//! The command line as a new user meets it: typos, help, completions, the manual page, and the
//! README's first screen. Runs the built binary; needs no target.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::isomount;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(args: &[&str]) -> Output {
    isomount().args(args).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn top_level_typos_suggest_the_command_instead_of_mounting() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("f"), b"x").unwrap();
    let full = full.to_str().unwrap();
    for (args, meant) in [
        (vec!["fecth", "sample"], "fetch"),
        (vec!["lsit"], "list"),
        (vec!["unmont", full], "unmount"),
        (vec!["--offline", "cahce", "list"], "cache"),
    ] {
        let out = run(&args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("did you mean `{meant}`")),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("mountpoint") && !err.contains("MOUNTPOINT>"),
            "{args:?} was taken for a mount: {err}"
        );
        assert!(
            err.contains("isomount mount"),
            "how to mount such a name: {err}"
        );
    }
    // A name that is no near miss still mounts by default (and fails on its missing mountpoint).
    let missing = dir.path().join("missing");
    let out = run(&["netbsd-5.0", missing.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not exist"), "{err}");
    // Below the top level, clap's own suggestion.
    let err = text(&run(&["cache", "lst"]).stderr);
    assert!(err.contains("'list'"), "{err}");
}

/// The help text of `args`, split into its headed sections.
fn help_sections(args: &[&str]) -> Vec<(String, String)> {
    let out = run(args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in text(&out.stdout).lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            sections.push((line.trim_end_matches(':').to_string(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    sections
}

#[test]
fn help_separates_global_options_from_the_commands_own() {
    let sections = help_sections(&["fetch", "--help"]);
    let section = |name: &str| {
        sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no `{name}:` section in {sections:?}"))
    };
    let own = section("Options");
    let global = section("Global options");
    assert!(own.contains("--files"), "{own}");
    for flag in [
        "--catalog",
        "--cache-dir",
        "--offline",
        "--verbose",
        "--quiet",
    ] {
        assert!(
            global.contains(flag),
            "{flag} under Global options: {global}"
        );
        assert!(!own.contains(flag), "{flag} not among fetch's own: {own}");
    }
    let top = help_sections(&["--help"]);
    assert!(top
        .iter()
        .any(|(n, b)| n == "Global options" && b.contains("--catalog")));
}

#[test]
fn completions_complete_subcommands_and_options_in_bash() {
    let script = run(&["completions", "bash"]);
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("isomount.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    // What bash itself completes after sourcing the script, as a shell would at TAB.
    let complete = |words: &str, cword: usize| {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _isomount isomount \"${{COMP_WORDS[$COMP_CWORD]}}\" \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; \
             echo \"${{COMPREPLY[@]}}\"",
            file.display()
        );
        let out = Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(complete("isomount fe", 1).trim(), "fetch");
    assert!(complete("isomount c", 1).contains("completions"));
    assert!(complete("isomount fetch --fi", 2).contains("--files"));
    assert!(complete("isomount completions ", 2).contains("zsh"));
    for (shell, marker) in [
        ("zsh", "#compdef isomount"),
        ("fish", "complete -c isomount"),
    ] {
        let out = run(&["completions", shell]);
        assert!(out.status.success());
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("fetch"), "{shell}");
    }
    assert!(!run(&["completions", "tcsh"]).status.success());
}

#[test]
fn man_page_renders_from_the_same_definitions() {
    let out = run(&["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let roff = text(&out.stdout);
    assert!(roff.contains(".TH isomount 1"), "{roff}");
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("isomount.1");
    std::fs::write(&page, &out.stdout).unwrap();
    let shown = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown = text(&shown.stdout);
    for want in [
        "GLOBAL OPTIONS",
        "--cache-dir",
        "completions",
        "isomount-fetch(1)",
    ] {
        assert!(shown.contains(want), "{want} in\n{shown}");
    }
    let pages = dir.path().join("pages");
    std::fs::create_dir(&pages).unwrap();
    let out = run(&["man", "--dir", pages.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fetch = std::fs::read_to_string(pages.join("isomount-fetch.1")).unwrap();
    assert!(fetch.contains("files"), "{fetch}");
    assert!(pages.join("isomount.1").is_file());
}

#[test]
fn readme_first_screen_builds_the_demo_and_runs_the_tests() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let first_screen: String = readme.lines().take(24).collect::<Vec<_>>().join("\n");
    assert!(
        first_screen.contains("cargo run --release --locked -- demo"),
        "{first_screen}"
    );
    assert!(first_screen.contains("scripts/test.sh"), "{first_screen}");
    let install = readme
        .lines()
        .find(|l| l.contains("cargo install"))
        .expect("an install line");
    assert!(install.contains("--locked"), "{install}");
    assert!(
        readme.contains("isomount completions"),
        "completions documented"
    );
    assert!(readme.contains("isomount man"), "man page documented");
}
