//! ISO 9660 reader: any image gives values or errors, never a panic, a hang or unbounded memory.
//! The input is the image from its first volume descriptor (sector 16) on; the system area before
//! it is zeros, so the fuzzer spends no bytes on it.
#![no_main]

use std::sync::Arc;

use isomount::iso9660::{IsoFs, Kind, ReadAt, ROOT_INO};
use libfuzzer_sys::fuzz_target;

struct Mem(Vec<u8>);

impl ReadAt for Mem {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        self.0
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::other("read past the end"))
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

fuzz_target!(|data: &[u8]| {
    let mut image = vec![0u8; 16 * 2048];
    image.extend_from_slice(data);
    let Ok(fs) = IsoFs::open(Arc::new(Mem(image))) else {
        return;
    };
    let _ = fs.resolve("/a/../b/./c");
    let mut todo = vec![ROOT_INO];
    let mut budget = 10_000u32;
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs.readdir(dir) else {
            continue;
        };
        for entry in entries {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return;
            }
            let _ = fs.lookup(dir, &entry.name);
            let _ = fs.getattr(entry.ino);
            let _ = fs.extents(entry.ino);
            match entry.kind {
                Kind::Dir => todo.push(entry.ino),
                Kind::Symlink => drop(fs.readlink(entry.ino)),
                Kind::File => drop(fs.read(entry.ino, 0, 1 << 16)),
            }
        }
    }
});
