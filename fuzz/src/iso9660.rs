//! ISO 9660 reader ([`isomount::iso9660`]): any image gives values or errors, never a panic, a
//! hang or unbounded memory. The input is the image from its first volume descriptor (sector 16)
//! on; the system area before it is zeros, so the fuzzer spends no bytes on it.

use std::collections::HashSet;
use std::sync::Arc;

use isomount::iso9660::{IsoFs, Kind, ReadAt, ROOT_INO};

/// Sectors before the first volume descriptor (ECMA-119 §6.2.1), each 2048 bytes.
const SYSTEM_AREA: usize = 16 * 2048;
/// Directory entries visited per input, so a huge (valid) tree cannot make one run slow.
const ENTRY_BUDGET: u32 = 10_000;

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

fn open(data: &[u8]) -> Option<IsoFs> {
    let mut image = vec![0u8; SYSTEM_AREA];
    image.extend_from_slice(data);
    IsoFs::open(Arc::new(Mem(image))).ok()
}

pub fn run(data: &[u8]) {
    let Some(fs) = open(data) else {
        return;
    };
    let _ = fs.resolve("/a/../b/./c");
    let mut todo = vec![(ROOT_INO, String::new())];
    let mut budget = ENTRY_BUDGET;
    while let Some((dir, path)) = todo.pop() {
        let Ok(entries) = fs.readdir(dir) else {
            continue;
        };
        let mut seen = HashSet::new();
        for entry in entries {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return;
            }
            let first_of_its_name = seen.insert(entry.name.clone());
            if let (true, Ok(Some(node))) = (first_of_its_name, fs.lookup(dir, &entry.name)) {
                assert_eq!(
                    node.ino, entry.ino,
                    "lookup finds the first entry readdir listed"
                );
            }
            let _ = fs.getattr(entry.ino);
            let _ = fs.extents(entry.ino);
            let child = format!("{path}/{}", entry.name.to_string_lossy());
            match entry.kind {
                Kind::Dir => todo.push((entry.ino, child)),
                Kind::Symlink => {
                    let _ = fs.readlink(entry.ino);
                    let _ = fs.resolve(&child);
                }
                Kind::File => {
                    if let Ok(bytes) = fs.read(entry.ino, 0, 1 << 16) {
                        assert!(bytes.len() <= 1 << 16);
                    }
                    let _ = fs.read(entry.ino, u64::MAX - 1, 2);
                }
            }
        }
    }
}

pub fn accepts(data: &[u8]) -> bool {
    open(data).is_some_and(|fs| fs.readdir(ROOT_INO).is_ok_and(|e| !e.is_empty()))
}
