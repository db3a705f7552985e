//! `isomount info`: what a LUN is and how the session to it was negotiated.

use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;
use crate::iscsi::{ConnectOptions, IscsiLun, IscsiUrl};

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Catalog name or iscsi:// URL
    pub image: String,
}

pub fn run(config: &Config, args: InfoArgs) -> anyhow::Result<ExitCode> {
    if !args.image.starts_with("iscsi://") {
        return info_name(config, &args.image);
    }
    let url: IscsiUrl = args.image.parse()?;
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let lun = IscsiLun::connect(ConnectOptions::from_url(&url))
            .await
            .with_context(|| format!("while connecting to {url}"))?;
        let info = lun.info();
        lun.logout().await;
        let show = |k: &str, v: &str| println!("{k:<32}{v}");
        show("target", &info.target);
        show("lun", &info.lun.to_string());
        show("portal", &info.portal);
        if let Some(alias) = &info.target_alias {
            show("target alias", alias);
        }
        show("vendor", &info.vendor);
        show("product", &info.product);
        show("revision", &info.revision);
        show("serial", info.serial.as_deref().unwrap_or("-"));
        show(
            "device type",
            &format!("{:#04x} {}", info.device_type, info.device_type_name()),
        );
        show("block size", &info.block_size.to_string());
        show("blocks", &info.blocks.to_string());
        show("capacity", &format!("{} bytes", info.capacity));
        if let Some(id) = &info.device_id {
            show("device id", &hex::encode(id));
        }
        for (key, value) in &info.parameters {
            show(key, value);
        }
        show("connect", &info.connect.to_string());
        Ok(ExitCode::SUCCESS)
    })
}

/// A catalog name: the image core's facts (it logs in to the LUN unless `--offline`).
fn info_name(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let image = crate::image::open::named(config, name).await?;
        for (key, value) in image.facts() {
            println!("{key:<32}{value}");
        }
        Ok(ExitCode::SUCCESS)
    })
}
