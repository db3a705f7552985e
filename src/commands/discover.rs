//! `isomount discover`: SendTargets discovery against one portal; `-l` logs in to each target
//! there and lists its LUNs.

use std::process::ExitCode;

use anyhow::Context;

use crate::iscsi::{self, lun, url};

#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// Portal to ask: HOST or HOST:PORT
    pub portal: String,
    /// Also list each target's LUNs
    #[arg(short = 'l', long = "luns")]
    pub luns: bool,
}

pub fn run(args: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let (host, port) = url::split_host_port(&args.portal)
        .map_err(|reason| anyhow::anyhow!("bad portal {:?}: {reason}", args.portal))?;
    let portal = url::format_portal(&host, port);
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let chap = iscsi::Chap::from_env();
        let initiator = iscsi::default_initiator_name();
        let targets = iscsi::discover(&portal, &initiator, chap)
            .await
            .with_context(|| format!("while discovering targets at {portal}"))?;
        for target in &targets {
            println!("{}", target.name);
            for p in &target.portals {
                println!("    portal {p}");
            }
            if args.luns {
                // Log in where we asked: advertised addresses may not be reachable from here.
                let opts = iscsi::ConnectOptions::new(vec![portal.clone()], target.name.clone(), 0);
                let luns = match lun::list_luns(&opts).await {
                    Ok(luns) => luns,
                    Err(e) => {
                        println!("    cannot list LUNs: {e}");
                        continue;
                    }
                };
                for l in luns {
                    let size = match l
                        .capacity
                        .and_then(|c| c.bytes().map(|b| (b, c.block_size)))
                    {
                        Some((bytes, bs)) => format!("{bytes} bytes, {bs}-byte blocks"),
                        None => "no capacity".to_string(),
                    };
                    println!(
                        "    lun {}: {} {} ({}), {size}",
                        l.lun,
                        l.vendor,
                        l.product,
                        crate::scsi::device_type_name(l.device_type)
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
