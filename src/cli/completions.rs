//! `tsmigrate completions <shell>` and `tsmigrate man`: the shell completions and the manual
//! pages, generated from the same clap definition as `--help`, so they never drift from it.
//! Neither reads settings or connects to anything.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory;
use clap_complete::Shell;
use serde::Serialize;

use super::{Cli, Reply};

/// Print the completion script for a shell on stdout.
///
/// Install (then start a new shell):
///   bash: tsmigrate completions bash > ~/.local/share/bash-completion/completions/tsmigrate
///   zsh:  tsmigrate completions zsh > ~/.zfunc/_tsmigrate   (with fpath+=~/.zfunc before compinit)
///   fish: tsmigrate completions fish > ~/.config/fish/completions/tsmigrate.fish
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Print the manual page (roff) on stdout, or write one page per command into a directory.
///
/// Install: tsmigrate man --dir /usr/local/share/man/man1 (then `man tsmigrate`,
/// `man tsmigrate-validate`); or read it once with `tsmigrate man | man -l -`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write tsmigrate.1 and a tsmigrate-<command>.1 for every command into this directory
    /// instead of printing tsmigrate.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Generated {
    shell: Option<String>,
    /// The script or page, when printed (not written to files).
    text: Option<String>,
    /// The files written (`man --dir`).
    files: Vec<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Reply {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "tsmigrate", &mut script);
    let text = String::from_utf8_lossy(&script).into_owned();
    Reply::done(Generated { shell: Some(args.shell.to_string()), text: Some(text.clone()), files: vec![] }, text)
}

pub fn man(args: ManArgs) -> anyhow::Result<Reply> {
    let command = Cli::command();
    let Some(dir) = args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page).context("cannot render the manual page")?;
        let text = String::from_utf8_lossy(&page).into_owned();
        return Ok(Reply::done(Generated { shell: None, text: Some(text.clone()), files: vec![] }, text));
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}\n  next: choose a directory you can write to with --dir", dir.display()))?;
    clap_mangen::generate_to(command, &dir)
        .with_context(|| format!("cannot write the manual pages into {}\n  next: choose a directory you can write to with --dir", dir.display()))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("tsmigrate") && n.ends_with(".1")))
        .collect();
    files.sort();
    let text = format!("wrote {} manual pages into {} (read one with: man -l {})\n", files.len(), dir.display(), dir.join("tsmigrate.1").display());
    Ok(Reply::done(Generated { shell: None, text: None, files }, text))
}
