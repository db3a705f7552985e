//! The lazy site mirror (`serve --catalog … NAME`): a catalog image re-exported from the image
//! core. Every byte served has been verified against the image's manifest; misses are fetched
//! upstream once and then come from the cache, so a lab pulls each block over the internet once.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::image::Image;
use crate::source::{BlockSource, Pieces, SourceError, SourceIdentity};

/// An [`Image`] as the block source of an exported LUN.
pub struct ImageSource {
    image: Arc<Image>,
    block_size: u32,
}

impl ImageSource {
    pub fn new(image: Arc<Image>, block_size: u32) -> ImageSource {
        ImageSource { image, block_size }
    }

    /// The upstream serial number (from the image's facts), to show as our own.
    pub fn serial(&self) -> Option<String> {
        self.image
            .facts()
            .into_iter()
            .find(|(k, _)| k == "serial")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty())
    }
}

impl ImageSource {
    /// `len` verified bytes at `offset`.
    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, SourceError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.image.size())
            .ok_or_else(|| {
                SourceError::OutOfRange(format!(
                    "read of {len} bytes at {offset} past the image's end"
                ))
            })?;
        let verified = self
            .image
            .read(offset, len)
            .await
            .map_err(|e| SourceError::Network(e.to_string()))?;
        if verified.len() as u64 != end - offset {
            return Err(SourceError::Io(format!(
                "image core returned {} bytes for {len} at {offset}",
                verified.len()
            )));
        }
        Ok(verified.into_bytes())
    }
}

#[async_trait]
impl BlockSource for ImageSource {
    fn kind(&self) -> &'static str {
        "image"
    }
    fn describe(&self) -> String {
        self.image.name().to_string()
    }
    async fn open(&self) -> Result<SourceIdentity, SourceError> {
        Ok(SourceIdentity {
            size: self.image.size(),
            block_size: self.block_size,
            serial: self.serial(),
            device_id: None,
        })
    }
    fn read(&self, offset: u64, len: usize) -> Pieces<'_> {
        Box::pin(futures_util::stream::once(self.read_at(offset, len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_READ_TIMEOUT;
    use crate::image::ImageSpec;
    use crate::manifest::Manifest;
    use crate::source::{read_all, MemorySource};

    fn image(bytes: &'static [u8], corrupt_upstream: bool) -> Arc<Image> {
        let manifest = Manifest::build(bytes, 4096, crate::manifest::HashAlg::Sha256).unwrap();
        let upstream: Vec<u8> = if corrupt_upstream {
            bytes.iter().map(|b| b ^ 1).collect()
        } else {
            bytes.to_vec()
        };
        Image::new(
            ImageSpec {
                name: "mirrored".into(),
                size: bytes.len() as u64,
                chunk_size: 4096,
                manifest_bytes: Some(manifest.to_bytes()),
                identity: format!("manifest:{}", manifest.pin()),
                manifest: Some(manifest),
                sources: vec![Arc::new(MemorySource::labelled(
                    Bytes::from(upstream),
                    2048,
                    "upstream",
                ))],
                offline: false,
                read_timeout: DEFAULT_READ_TIMEOUT,
                facts: vec![("serial".into(), "up-1".into())],
                expect_serial: None,
            },
            None,
        )
    }

    #[tokio::test]
    async fn serves_verified_bytes_of_the_upstream_image() {
        let sample = crate::commands::demo::SAMPLE_ISO;
        let source = ImageSource::new(image(sample, false), 2048);
        let identity = source.open().await.unwrap();
        assert_eq!(identity.size, sample.len() as u64);
        assert_eq!(identity.serial.as_deref(), Some("up-1"));
        let got = read_all(&source, 16 * 2048, 4096).await.unwrap();
        assert_eq!(&got[..], &sample[16 * 2048..18 * 2048]);
        assert!(read_all(&source, identity.size, 1).await.is_err());
    }

    #[tokio::test]
    async fn a_corrupt_upstream_is_an_error_never_wrong_bytes() {
        let source = ImageSource::new(image(crate::commands::demo::SAMPLE_ISO, true), 2048);
        assert!(read_all(&source, 0, 2048).await.is_err());
    }
}
