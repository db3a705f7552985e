//! An image file as an exported LUN, and where a LUN's bytes come from.
//!
//! Image files are mapped read-only, and a READ's data goes from the mapping to the socket with
//! one copy, made by the kernel in `writev`. What may happen to a served file, and why serving
//! it stays safe:
//! - renamed over, or removed: the mapping keeps the old inode and its bytes, whole;
//! - truncated in place: pages past the new end are gone. Touched from user space they raise
//!   SIGBUS, which would kill the server; touched by the kernel inside `writev` they make the
//!   call fail with EFAULT, which ends one connection. So mapped bytes are only ever handed to
//!   the kernel ([`Payload::Mapped`]), and what user space must look at (data digests, VERIFY
//!   comparisons, a padded last block) is read with `pread`, which sees the short file and
//!   fails cleanly ([`LunData::read_to_inspect`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::config::{self, AllowList, DeviceChoice};
use super::scsi::LogicalUnit;
use super::{ChapConfig, ExportedTarget, TargetError};
use crate::source::{map_file, read_all, BlockSource, FileSource, MemorySource, SourceError};
use crate::tree::FileStamp;

/// Where a LUN's bytes come from.
pub enum LunData {
    /// Any block source (a catalog image through the verified cache, bytes in memory): its
    /// bytes may be looked at.
    Source(Arc<dyn BlockSource>),
    /// An image file, mapped, with the file itself for the reads user space looks at.
    Mapped(MappedFile),
}

/// A file mapped read-only.
pub struct MappedFile {
    map: MemorySource,
    file: FileSource,
}

/// Bytes read to be sent.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Ordinary memory: may be copied and hashed.
    Owned(Bytes),
    /// Pages of a mapped file: only the kernel may read them (see the module doc).
    Mapped(Bytes),
}

impl Payload {
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// The bytes, to slice and pass on (not to read, for [`Payload::Mapped`]).
    pub fn bytes(&self) -> &Bytes {
        match self {
            Payload::Owned(b) | Payload::Mapped(b) => b,
        }
    }

    /// The first `at` bytes, leaving the rest in `self`.
    pub fn split_to(&mut self, at: usize) -> Payload {
        match self {
            Payload::Owned(b) => Payload::Owned(b.split_to(at)),
            Payload::Mapped(b) => Payload::Mapped(b.split_to(at)),
        }
    }
}

impl LunData {
    /// `len` bytes at `offset` to send as they are: from the mapping when there is one.
    pub async fn read_to_send(&self, offset: u64, len: usize) -> Result<Payload, SourceError> {
        match self {
            LunData::Source(source) => read_all(source.as_ref(), offset, len)
                .await
                .map(Payload::Owned),
            // Slices of the mapping, not copies.
            LunData::Mapped(mapped) => mapped.map.read_at(offset, len).map(Payload::Mapped),
        }
    }

    /// `len` bytes at `offset` in ordinary memory, to look at (hash, compare, pad).
    pub async fn read_to_inspect(&self, offset: u64, len: usize) -> Result<Bytes, SourceError> {
        match self {
            LunData::Source(source) => read_all(source.as_ref(), offset, len).await,
            LunData::Mapped(mapped) => mapped.file.read_at(offset, len),
        }
    }
}

/// What a served image file is: its path, target name, and the version that was opened.
#[derive(Debug, Clone)]
pub struct ImageFile<'a> {
    pub path: &'a Path,
    pub target_name: &'a str,
    /// What the LUN's inquiry data calls it (the file stem, a catalog name).
    pub product: &'a str,
}

/// Open, map and export an image file. Returns the target and the stamp of the version opened
/// (taken from the open file, so it is the version the mapping shows).
pub fn export_file(
    image: &ImageFile<'_>,
    device: DeviceChoice,
    allow: &AllowList,
    chap: Option<Arc<ChapConfig>>,
) -> Result<(ExportedTarget, FileStamp), TargetError> {
    let shown = image.path.display();
    let io = |what: &str, e: std::io::Error| TargetError::Config(format!("{shown}: {what}: {e}"));
    let file = File::open(image.path).map_err(|e| io("cannot open", e))?;
    let meta = file.metadata().map_err(|e| io("cannot stat", e))?;
    if !meta.is_file() {
        return Err(TargetError::Config(format!("{shown}: not a regular file")));
    }
    let stamp = FileStamp::of(&meta);
    let size = stamp.size;
    if size == 0 {
        return Err(TargetError::Config(format!("{shown} is empty")));
    }
    let mut magic = [0u8; 5];
    let magic = match file.read_exact_at(&mut magic, config::ISO9660_MAGIC_OFFSET) {
        Ok(()) => Some(magic),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => None,
        Err(e) => return Err(io("cannot read", e)),
    };
    let device = device.resolve(magic.as_ref().map(|m| m.as_slice()));
    if size % u64::from(device.block_size()) != 0 {
        tracing::warn!(
            "{shown}: size {size} is not a multiple of {} bytes; the last block is padded with zeros",
            device.block_size()
        );
    }
    let map = map_file(&file).map_err(|e| io("cannot map", e))?;
    if map.len() as u64 != size {
        return Err(TargetError::Config(format!(
            "{shown}: changed while it was being opened"
        )));
    }
    let file = FileSource::from_file(image.path, file, size, device.block_size());
    let map = MemorySource::new(map, device.block_size());
    // The serial changes with the file's version, so an initiator that reconnects after a
    // replacement sees a different unit rather than mixing the two versions' bytes.
    let serial = format!(
        "{:016x}",
        stable_hash(&[
            image.target_name.as_bytes(),
            &size.to_be_bytes(),
            &stamp.device.to_be_bytes(),
            &stamp.inode.to_be_bytes(),
            &stamp.modified_ns.to_be_bytes(),
        ])
    );
    let lun = LogicalUnit::new(device, size, image.product, &serial, image.target_name);
    let target = ExportedTarget::new(
        image.target_name.to_string(),
        lun,
        LunData::Mapped(MappedFile { map, file }),
        allow.clone(),
        chap,
    );
    Ok((target, stamp))
}

/// FNV-1a over several byte strings: a stable serial number for an exported image.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(path: &Path) -> Result<(ExportedTarget, FileStamp), TargetError> {
        let image = ImageFile {
            path,
            target_name: "iqn.2026-01.test:x",
            product: "x",
        };
        export_file(&image, DeviceChoice::Auto, &AllowList::default(), None)
    }

    #[tokio::test]
    async fn a_truncated_file_fails_reads_to_inspect_and_never_faults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (target, stamp) = export(&path).unwrap();
        assert_eq!(stamp.size, data.len() as u64);
        assert_eq!(target.lun.block_size(), 512);
        let sent = target.data.read_to_send(4096, 512).await.unwrap();
        assert!(matches!(sent, Payload::Mapped(_)));
        let seen = target.data.read_to_inspect(4096, 512).await.unwrap();
        assert_eq!(&seen[..], &data[4096..4608]);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1024)
            .unwrap();
        assert!(target.data.read_to_inspect(4096, 512).await.is_err());
        assert!(target.data.read_to_send(60 * 1024, 8192).await.is_err());
    }

    #[test]
    fn empty_files_and_directories_are_refused_and_serials_follow_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.img");
        std::fs::write(&path, b"").unwrap();
        assert!(export(&path).is_err());
        assert!(export(dir.path()).is_err());
        std::fs::write(&path, vec![1u8; 1024]).unwrap();
        let (first, _) = export(&path).unwrap();
        let tmp = dir.path().join(".x.new");
        std::fs::write(&tmp, vec![1u8; 1024]).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let (second, _) = export(&path).unwrap();
        // The LUN's debug form shows its serial.
        assert_ne!(format!("{:?}", first.lun), format!("{:?}", second.lun));
    }
}
