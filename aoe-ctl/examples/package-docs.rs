//! The man pages and shell completions the .deb ships, generated from aoe-ctl's clap
//! definitions: `cargo run --release -p aoe-ctl --example package-docs -- OUT_DIR` writes
//! OUT_DIR/man/aoe-ctl.8, one aoe-ctl-SUBCOMMAND.8 per subcommand (aoe-ctl-acl-add.8 for
//! nested ones) and OUT_DIR/completions/{aoe-ctl.bash,_aoe-ctl,aoe-ctl.fish}.
//!
//! An example rather than a hidden subcommand or an xtask function: clap_mangen and
//! clap_complete stay dev-dependencies, out of the installed binary, and xtask keeps
//! building before anything eBPF does (depending on aoe-ctl would pull aya and the
//! classifier's build.rs into it, and `cargo xtask setup` must run before bpf-linker is
//! there).

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

// The binary's own module, read as it is: the pages cannot drift from the parser.
#[allow(dead_code)]
#[path = "../src/cli.rs"]
mod cli;

fn main() {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("package-docs: usage: package-docs OUT_DIR");
        std::process::exit(2);
    };
    if let Err(e) = run(Path::new(&out)) {
        eprintln!("package-docs: {e:#}");
        std::process::exit(1);
    }
}

fn run(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut cmd = cli::Cli::command();
    cmd.build();
    let mut pages = 0;
    pages += write_pages(&man, &cmd, "aoe-ctl")?;
    for (shell, file) in [
        (Shell::Bash, "aoe-ctl.bash"),
        (Shell::Zsh, "_aoe-ctl"),
        (Shell::Fish, "aoe-ctl.fish"),
    ] {
        let path = completions.join(file);
        let mut f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        clap_complete::generate(shell, &mut cmd, "aoe-ctl", &mut f);
    }
    println!(
        "package-docs: {pages} man pages in {}, bash/zsh/fish completions in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}

/// `name`.8 for `cmd`, then one page per subcommand (clap's own `help` left out: its page
/// would say nothing the others do not).
fn write_pages(dir: &Path, cmd: &clap::Command, name: &str) -> Result<usize> {
    // clap names are &'static str without its "string" feature; this process is short.
    let page = cmd
        .clone()
        .name(&*Box::leak(name.to_string().into_boxed_str()))
        .version(env!("CARGO_PKG_VERSION"));
    let path = dir.join(format!("{name}.8"));
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    clap_mangen::Man::new(page)
        .section("8")
        .manual("System Administration")
        .source(format!("aoe-ctl {}", env!("CARGO_PKG_VERSION")))
        .render(&mut f)
        .with_context(|| format!("writing {}", path.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        n += write_pages(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(n)
}
