//! `isomount keygen -o KEY`: a minisign key pair for signing catalogs (`publish --sign KEY`).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::signature::{self, PASSPHRASE_ENV};

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600); the public key goes to KEY.pub
    #[arg(short = 'o', long = "output", value_name = "KEY")]
    pub output: PathBuf,
    /// Encrypt the secret key with the passphrase on this file's first line (or set
    /// ISOMOUNT_PASSPHRASE); without either the key is not encrypted, so scripts can sign
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Replace KEY and KEY.pub if they exist
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let passphrase = signature::passphrase(args.passphrase_file.as_deref())?;
    let protection = match (&passphrase, &args.passphrase_file) {
        (None, _) => "not encrypted".to_string(),
        (Some(_), Some(file)) => format!("encrypted with the passphrase in {}", file.display()),
        (Some(_), None) => format!("encrypted with the passphrase in ${PASSPHRASE_ENV}"),
    };
    let (public, id) = signature::keygen(&args.output, passphrase, args.force)?;
    eprintln!(
        "wrote the secret key {} (mode 0600, {protection}) and the public key {} (key ID {id})\n\
         sign with: isomount publish … -o CATALOG --sign {}\n\
         users trust it with --pubkey {} or by putting it in their catalogs folder",
        args.output.display(),
        public.display(),
        args.output.display(),
        public
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
    );
    Ok(ExitCode::SUCCESS)
}
