//! Hand-built images: each sector is laid out by the test, so every structure and every hostile
//! mutation is explicit.

use super::*;

const S: usize = SECTOR;
const DIR: u8 = FLAG_DIRECTORY;
const DATE: [u8; 7] = [124, 1, 2, 3, 4, 5, 0];
const DATE_UNIX: u64 = 1_704_164_645; // 2024-01-02 03:04:05 UTC

struct Mem {
    bytes: Vec<u8>,
    read: std::sync::atomic::AtomicU64,
}

impl ReadAt for Mem {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.read
            .fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        self.bytes
            .get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::other("read past end"))
    }
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

fn both16(v: u16) -> Vec<u8> {
    [v.to_le_bytes(), v.to_be_bytes()].concat()
}

fn both32(v: u32) -> Vec<u8> {
    [v.to_le_bytes(), v.to_be_bytes()].concat()
}

/// A directory record (§9.1) with a system use area.
fn rec(lba: u32, size: u32, flags: u8, ident: &[u8], su: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 33];
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(&DATE);
    r[25] = flags;
    r[28..32].copy_from_slice(&both16(1));
    r[32] = ident.len() as u8;
    r.extend_from_slice(ident);
    if ident.len() % 2 == 0 {
        r.push(0);
    }
    r.extend_from_slice(su);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    r[0] = r.len() as u8;
    r
}

/// A SUSP entry.
fn su(sig: &[u8; 2], body: &[u8]) -> Vec<u8> {
    [&[sig[0], sig[1], (body.len() + 4) as u8, 1][..], body].concat()
}

fn px(mode: u32, nlink: u32, uid: u32, gid: u32) -> Vec<u8> {
    let body: Vec<u8> = [mode, nlink, uid, gid]
        .into_iter()
        .flat_map(both32)
        .collect();
    su(b"PX", &body)
}

fn nm(name: &[u8]) -> Vec<u8> {
    su(b"NM", &[&[0u8][..], name].concat())
}

fn ce(block: u32, offset: u32, len: u32) -> Vec<u8> {
    su(
        b"CE",
        &[both32(block), both32(offset), both32(len)].concat(),
    )
}

fn rr_root() -> Vec<u8> {
    [
        su(b"SP", &[0xBE, 0xEF, 0]),
        px(0o40_755, 3, 0, 0),
        su(
            b"ER",
            &[
                10, 0, 0, 1, b'R', b'R', b'I', b'P', b'_', b'1', b'9', b'9', b'1', b'A',
            ],
        ),
    ]
    .concat()
}

struct Iso {
    img: Vec<u8>,
}

impl Iso {
    /// Sectors 16 (primary descriptor, root at sector 18) and 17 (terminator).
    fn new(sectors: usize) -> Iso {
        let mut iso = Iso {
            img: vec![0; sectors * S],
        };
        iso.descriptor(16, 1, &rec(18, S as u32, DIR, &[0], &[]));
        iso.descriptor(17, 255, &[]);
        iso
    }

    fn descriptor(&mut self, sector: usize, kind: u8, root: &[u8]) {
        let d = &mut self.img[sector * S..(sector + 1) * S];
        d.fill(0);
        d[0] = kind;
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
        if !root.is_empty() {
            d[128..132].copy_from_slice(&both16(S as u16));
            d[156..156 + root.len()].copy_from_slice(root);
        }
    }

    /// Writes directory `lba` (one sector): `.`, `..`, then `entries`.
    fn dir(&mut self, lba: u32, parent: u32, dot_su: &[u8], entries: &[Vec<u8>]) {
        let mut bytes = rec(lba, S as u32, DIR, &[0], dot_su);
        bytes.extend(rec(parent, S as u32, DIR, &[1], &[]));
        for e in entries {
            bytes.extend_from_slice(e);
        }
        self.put(lba, &bytes);
    }

    fn put(&mut self, lba: u32, bytes: &[u8]) {
        let at = lba as usize * S;
        self.img[at..at + S].fill(0);
        self.img[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn open(&self) -> Result<IsoFs, IsoError> {
        IsoFs::open(self.mem())
    }

    fn mem(&self) -> Arc<Mem> {
        Arc::new(Mem {
            bytes: self.img.clone(),
            read: 0.into(),
        })
    }
}

/// Root: A/ (sector 19, holding B.TXT: 3000 bytes at 21), F.TXT (5 bytes at 20), G. (empty).
fn plain() -> Iso {
    let mut iso = Iso::new(24);
    iso.dir(
        18,
        18,
        &[],
        &[
            rec(19, S as u32, DIR, b"A", &[]),
            rec(20, 5, 0, b"F.TXT;1", &[]),
            rec(0, 0, 0, b"G.;1", &[]),
        ],
    );
    iso.dir(19, 18, &[], &[rec(21, 3000, 0, b"B.TXT;1", &[])]);
    iso.put(20, b"hello");
    let pattern: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    iso.put(21, &pattern[..S]);
    iso.put(22, &pattern[S..]);
    iso
}

fn names(fs: &IsoFs, ino: u64) -> Vec<String> {
    fs.readdir(ino)
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect()
}

/// Visits every node, reading every file and link; the error of the first failure.
fn walk(fs: &IsoFs) -> Result<usize, IsoError> {
    let mut todo = vec![ROOT_INO];
    let mut seen = 0usize;
    while let Some(dir) = todo.pop() {
        for e in fs.readdir(dir)? {
            seen += 1;
            assert!(seen < 100_000, "walk does not end");
            let attr = fs.getattr(e.ino)?;
            match e.kind {
                Kind::Dir => todo.push(e.ino),
                Kind::Symlink => {
                    fs.readlink(e.ino)?;
                }
                Kind::File => {
                    let data = fs.read(e.ino, 0, attr.size.min(1 << 20) as usize)?;
                    assert_eq!(data.len() as u64, attr.size.min(1 << 20));
                }
            }
        }
    }
    Ok(seen)
}

#[test]
fn plain_names_contents_and_attributes() {
    let iso = plain();
    let fs = iso.open().unwrap();
    assert_eq!(fs.naming(), Naming::Plain);
    assert_eq!(names(&fs, ROOT_INO), ["A", "F.TXT", "G"]);
    let a = fs.lookup(ROOT_INO, OsStr::new("A")).unwrap().unwrap();
    assert_eq!(
        (a.attr.kind, a.attr.mode, a.attr.nlink),
        (Kind::Dir, 0o555, 2)
    );
    assert_eq!(
        a.ino,
        18 * S as u64 + 68,
        "ino is the record's byte position"
    );
    let f = fs.lookup(ROOT_INO, OsStr::new("F.TXT")).unwrap().unwrap();
    assert_eq!(
        (f.attr.kind, f.attr.mode, f.attr.size),
        (Kind::File, 0o444, 5)
    );
    assert_eq!(f.attr.mtime, UNIX_EPOCH + Duration::from_secs(DATE_UNIX));
    assert_eq!(fs.read(f.ino, 0, 100).unwrap(), b"hello");
    assert_eq!(fs.read(f.ino, 2, 2).unwrap(), b"ll");
    assert_eq!(fs.read(f.ino, 9, 2).unwrap(), b"");
    assert_eq!(fs.extents(f.ino).unwrap(), [(20 * S as u64, 5)]);
    assert!(fs
        .lookup(ROOT_INO, OsStr::new("F.TXT;1"))
        .unwrap()
        .is_none());
    let b = fs.lookup(a.ino, OsStr::new("B.TXT")).unwrap().unwrap();
    let whole = fs.read(b.ino, 0, 5000).unwrap();
    assert_eq!(whole.len(), 3000);
    assert!(whole.iter().enumerate().all(|(i, &v)| v == (i % 251) as u8));
    assert_eq!(fs.read(b.ino, 2040, 16).unwrap(), &whole[2040..2056]);
    assert!(matches!(
        fs.read(a.ino, 0, 1),
        Err(IsoError::IsADirectory(_))
    ));
    assert!(matches!(fs.readdir(f.ino), Err(IsoError::NotADirectory(_))));
    assert!(matches!(fs.readlink(f.ino), Err(IsoError::NotASymlink(_))));
    assert_eq!(fs.resolve("/A/./B.TXT").unwrap().unwrap().ino, b.ino);
    assert_eq!(fs.resolve("A/../F.TXT").unwrap().unwrap().ino, f.ino);
    assert!(fs.resolve("/A/NOPE").unwrap().is_none());
    assert!(matches!(
        fs.resolve("/F.TXT/X"),
        Err(IsoError::NotADirectory(_))
    ));

    // A fresh volume finds the same nodes by inode number alone (no lookup first).
    let cold = iso.open().unwrap();
    assert_eq!(cold.getattr(b.ino).unwrap(), b.attr);
    assert_eq!(cold.read(b.ino, 0, 5000).unwrap(), whole);
    assert!(matches!(cold.getattr(3), Err(IsoError::NoSuchInode(3))));
}

#[test]
fn multi_extent_file_reads_across_records() {
    let mut iso = Iso::new(24);
    let mut root = vec![
        rec(20, S as u32, FLAG_MULTI_EXTENT, b"M;1", &[]),
        rec(22, S as u32, FLAG_MULTI_EXTENT, b"M;1", &[]),
        rec(21, 100, 0, b"M;1", &[]),
    ];
    root.push(rec(23, 1, 0, b"N;1", &[]));
    iso.dir(18, 18, &[], &root);
    for lba in 20..24u32 {
        iso.put(lba, &vec![lba as u8; S]);
    }
    let fs = iso.open().unwrap();
    assert_eq!(names(&fs, ROOT_INO), ["M", "N"]);
    let m = fs.lookup(ROOT_INO, OsStr::new("M")).unwrap().unwrap();
    assert_eq!(m.attr.size, 2 * S as u64 + 100);
    let data = fs.read(m.ino, 0, 10_000).unwrap();
    let expected: Vec<u8> = [vec![20u8; S], vec![22u8; S], vec![21u8; 100]].concat();
    assert_eq!(data, expected);
    assert_eq!(fs.read(m.ino, S as u64 - 2, 4).unwrap(), [20, 20, 22, 22]);
    let ext = fs.extents(m.ino).unwrap();
    assert_eq!(
        ext,
        [
            (20 * S as u64, S as u64),
            (22 * S as u64, S as u64),
            (21 * S as u64, 100)
        ]
    );
    let cold = iso.open().unwrap();
    assert_eq!(cold.read(m.ino, 0, 10_000).unwrap(), expected);
}

/// Root "." with SP/PX/ER; a named file with owner, mode and time; a symlink; a name continued
/// in a CE area; a relocated directory (CL in the root, RE on the hidden original).
fn rock_ridge() -> Iso {
    let mut iso = Iso::new(26);
    let tf = su(b"TF", &[&[0x02u8][..], &[100, 6, 7, 8, 9, 10, 0]].concat());
    let sl = su(b"SL", &[0, 8, 0, 0, 2, b'x', b'y', 0, 1, b'z']);
    iso.dir(
        18,
        18,
        &rr_root(),
        &[
            rec(
                20,
                5,
                0,
                b"F.TXT;1",
                &[nm(b"Hello World.txt"), px(0o100_640, 1, 1000, 100), tf].concat(),
            ),
            rec(
                0,
                0,
                0,
                b"L.;1",
                &[nm(b"link"), px(0o120_777, 1, 0, 0), sl].concat(),
            ),
            rec(20, 2, 0, b"C.;1", &[nm(b"con"), ce(23, 100, 47)].concat()),
            rec(
                0,
                0,
                0,
                b"DEEP.;1",
                &[nm(b"deep"), px(0o40_700, 2, 0, 0), su(b"CL", &both32(24))].concat(),
            ),
            rec(
                24,
                S as u32,
                DIR,
                b"MOVED",
                &[nm(b"moved"), su(b"RE", &[])].concat(),
            ),
        ],
    );
    iso.put(20, b"hello");
    let mut area = vec![0u8; 100];
    area.extend(nm(b"tinued"));
    area.extend(px(0o100_600, 1, 7, 8));
    iso.put(23, &area);
    iso.dir(
        24,
        18,
        &[su(b"PL", &both32(18))].concat(),
        &[rec(20, 5, 0, b"X.;1", &[nm(b"x")].concat())],
    );
    iso
}

#[test]
fn rock_ridge_names_modes_links_and_relocation() {
    let fs = rock_ridge().open().unwrap();
    assert_eq!(fs.naming(), Naming::RockRidge);
    assert_eq!(
        names(&fs, ROOT_INO),
        ["Hello World.txt", "link", "continued", "deep"]
    );
    let root = fs.getattr(ROOT_INO).unwrap();
    assert_eq!((root.mode, root.nlink), (0o755, 3));
    let f = fs.resolve("/Hello World.txt").unwrap().unwrap();
    assert_eq!((f.attr.mode, f.attr.uid, f.attr.gid), (0o640, 1000, 100));
    // TF modify time 2000-06-07 08:09:10 UTC; no access time, so it follows mtime.
    assert_eq!(f.attr.mtime, UNIX_EPOCH + Duration::from_secs(960_365_350));
    assert_eq!(f.attr.atime, f.attr.mtime);
    let l = fs.lookup(ROOT_INO, OsStr::new("link")).unwrap().unwrap();
    assert_eq!(l.attr.kind, Kind::Symlink);
    assert_eq!(fs.readlink(l.ino).unwrap(), "/xy/z");
    assert_eq!(l.attr.size, 5);
    let c = fs
        .lookup(ROOT_INO, OsStr::new("continued"))
        .unwrap()
        .unwrap();
    assert_eq!((c.attr.mode, c.attr.uid), (0o600, 7));
    assert_eq!(fs.read(c.ino, 0, 10).unwrap(), b"he");
    let deep = fs.lookup(ROOT_INO, OsStr::new("deep")).unwrap().unwrap();
    assert_eq!((deep.attr.kind, deep.attr.mode), (Kind::Dir, 0o700));
    assert_eq!(names(&fs, deep.ino), ["x"]);
    assert_eq!(walk(&fs).unwrap(), 5);
}

#[test]
fn joliet_names_without_rock_ridge() {
    let mut iso = Iso::new(24);
    iso.descriptor(17, 2, &rec(19, S as u32, DIR, &[0], &[]));
    iso.img[17 * S + 88..17 * S + 91].copy_from_slice(b"%/E");
    iso.descriptor(18, 255, &[]);
    iso.descriptor(16, 1, &rec(20, S as u32, DIR, &[0], &[]));
    let ucs2: Vec<u8> = "Mixed Case ü.txt;1"
        .encode_utf16()
        .flat_map(u16::to_be_bytes)
        .collect();
    iso.dir(19, 19, &[], &[rec(21, 3, 0, &ucs2, &[])]);
    iso.dir(20, 20, &[], &[rec(21, 3, 0, b"MIXED_CA.TXT;1", &[])]);
    iso.put(21, b"abc");
    let fs = iso.open().unwrap();
    assert_eq!(fs.naming(), Naming::Joliet);
    assert_eq!(names(&fs, ROOT_INO), ["Mixed Case ü.txt"]);
    let f = fs.resolve("Mixed Case ü.txt").unwrap().unwrap();
    assert_eq!(fs.read(f.ino, 0, 3).unwrap(), b"abc");
}

#[test]
fn cold_small_file_read_touches_few_sectors() {
    let iso = plain();
    let mem = iso.mem();
    let fs = IsoFs::open(mem.clone()).unwrap();
    let f = fs.resolve("/A/B.TXT").unwrap().unwrap();
    fs.read(f.ino, 0, 3000).unwrap();
    let read = mem.read.load(std::sync::atomic::Ordering::Relaxed);
    // One request for the descriptors (the rest of this small image, which holds the root's
    // "." record too), the root's listing, A's listing, 3000 bytes.
    assert_eq!(read, (24 - 16) * S as u64 + 2 * S as u64 + 3000);
}

type Mutation = fn(&mut Iso);

fn deep_chain(iso: &mut Iso) {
    let depth = MAX_DEPTH as usize + 5;
    iso.img.resize((20 + depth) * S, 0);
    for i in 0..depth as u32 {
        let lba = 18 + i;
        let parent = if i == 0 { 18 } else { lba - 1 };
        iso.dir(lba, parent, &[], &[rec(lba + 1, S as u32, DIR, b"D", &[])]);
    }
    let last = 18 + depth as u32;
    iso.dir(last, last - 1, &[], &[]);
}

#[test]
fn hostile_images_give_errors() {
    let plain_cases: &[(&str, Mutation)] = &[
        ("directory containing itself", |i| {
            i.dir(18, 18, &[], &[rec(18, S as u32, DIR, b"A", &[])])
        }),
        ("directory loop through a child", |i| {
            i.dir(19, 18, &[], &[rec(18, S as u32, DIR, b"UP", &[])])
        }),
        ("file extent past the end", |i| {
            i.dir(18, 18, &[], &[rec(10_000, 5, 0, b"F;1", &[])])
        }),
        ("file extent ending past the end", |i| {
            i.dir(18, 18, &[], &[rec(23, 4 * S as u32, 0, b"F;1", &[])])
        }),
        ("directory past the end", |i| {
            i.dir(18, 18, &[], &[rec(u32::MAX, S as u32, DIR, b"A", &[])])
        }),
        ("enormous directory", |i| {
            i.dir(18, 18, &[], &[rec(19, u32::MAX, DIR, b"A", &[])])
        }),
        ("directory in the system area", |i| {
            i.dir(18, 18, &[], &[rec(2, S as u32, DIR, b"A", &[])])
        }),
        ("record crossing its directory's end", |i| {
            i.img[18 * S + 10..18 * S + 18].copy_from_slice(&both32(120))
        }),
        ("record shorter than its header", |i| {
            let mut r = rec(20, 5, 0, b"F;1", &[]);
            r[0] = 20;
            i.dir(18, 18, &[], &[r]);
        }),
        ("identifier past the record", |i| {
            let mut r = rec(20, 5, 0, b"F;1", &[]);
            r[32] = 200;
            i.dir(18, 18, &[], &[r]);
        }),
        ("empty identifier", |i| {
            let mut r = rec(20, 5, 0, b"F;1", &[]);
            r[32] = 0;
            i.dir(18, 18, &[], &[r]);
        }),
        ("name with a slash", |i| {
            i.dir(18, 18, &[], &[rec(20, 5, 0, b"A/B;1", &[])])
        }),
        ("multi-extent file without a final record", |i| {
            i.dir(18, 18, &[], &[rec(20, 5, FLAG_MULTI_EXTENT, b"M;1", &[])])
        }),
        ("multi-extent records with two names", |i| {
            i.dir(
                18,
                18,
                &[],
                &[
                    rec(20, 5, FLAG_MULTI_EXTENT, b"M;1", &[]),
                    rec(20, 5, 0, b"N;1", &[]),
                ],
            )
        }),
        ("multi-extent directory", |i| {
            i.dir(
                18,
                18,
                &[],
                &[
                    rec(19, S as u32, DIR | FLAG_MULTI_EXTENT, b"A", &[]),
                    rec(19, S as u32, DIR, b"A", &[]),
                ],
            )
        }),
        ("interleaved file", |i| {
            let mut r = rec(20, 5, 0, b"F;1", &[]);
            r[26] = 1;
            i.dir(18, 18, &[], &[r]);
        }),
        ("no volume descriptor", |i| i.img[16 * S + 1] = b'X'),
        ("image smaller than the system area", |i| {
            i.img.truncate(10 * S)
        }),
        ("no primary descriptor", |i| i.descriptor(16, 0, &[])),
        ("no set terminator", |i| {
            i.img.resize(100 * S, 0);
            for s in 17..100 {
                i.descriptor(s, 0, &[]);
            }
        }),
        ("descriptor set running off the image", |i| {
            i.img.truncate(18 * S);
            i.descriptor(17, 0, &[]);
        }),
        ("block size 512", |i| {
            i.img[16 * S + 128..16 * S + 132].copy_from_slice(&both16(512))
        }),
        ("root record with a bad length", |i| i.img[16 * S + 156] = 3),
        ("root directory without its dot record", |i| {
            i.put(18, &rec(19, S as u32, DIR, b"A", &[]))
        }),
        ("directories nested too deep", deep_chain),
    ];
    let rr_cases: &[(&str, Mutation)] = &[
        ("continuation area loop", |i| {
            i.put(23, &ce(23, 0, 28));
            i.dir(18, 18, &rr_root(), &[rec(20, 5, 0, b"F;1", &ce(23, 0, 28))]);
        }),
        ("continuation area chain too long", |i| {
            let chain: Vec<u8> = (0..60).flat_map(|k| ce(23, 28 * (k + 1), 28)).collect();
            i.put(23, &chain);
            i.dir(18, 18, &rr_root(), &[rec(20, 5, 0, b"F;1", &ce(23, 0, 28))]);
        }),
        ("continuation area past the end", |i| {
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(20, 5, 0, b"F;1", &ce(1 << 30, 0, 28))],
            )
        }),
        ("huge continuation area", |i| {
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(20, 5, 0, b"F;1", &ce(19, 0, u32::MAX))],
            )
        }),
        ("system use entry with a bad length", |i| {
            let mut bad = nm(b"name");
            bad[2] = 60;
            i.dir(18, 18, &rr_root(), &[rec(20, 5, 0, b"F;1", &bad)]);
        }),
        ("system use entry shorter than its header", |i| {
            let mut bad = nm(b"name");
            bad[2] = 2;
            i.dir(18, 18, &rr_root(), &[rec(20, 5, 0, b"F;1", &bad)]);
        }),
        ("name too long across continuation areas", |i| {
            let mut area = Vec::new();
            for _ in 0..5 {
                area.extend(su(b"NM", &[&[1u8][..], &[b'n'; 240]].concat()));
            }
            i.put(23, &area);
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(20, 5, 0, b"F;1", &ce(23, 0, area.len() as u32))],
            );
        }),
        ("name with a slash", |i| {
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(20, 5, 0, b"F;1", &nm(b"../../etc/passwd"))],
            )
        }),
        ("name with a NUL byte", |i| {
            i.dir(18, 18, &rr_root(), &[rec(20, 5, 0, b"F;1", &nm(b"a\0b"))])
        }),
        ("name `..`", |i| {
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(19, S as u32, DIR, b"A", &nm(b".."))],
            )
        }),
        ("symlink without a target", |i| {
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(0, 0, 0, b"L;1", &px(0o120_777, 1, 0, 0))],
            )
        }),
        ("symlink target too long", |i| {
            let mut area = Vec::new();
            for _ in 0..20 {
                area.extend(su(b"SL", &[&[1u8, 0, 240][..], &[b's'; 240]].concat()));
            }
            i.img.resize(40 * S, 0);
            let at = 23 * S;
            i.img[at..at + area.len()].copy_from_slice(&area);
            let link = [px(0o120_777, 1, 0, 0), ce(23, 0, area.len() as u32)].concat();
            i.dir(18, 18, &rr_root(), &[rec(0, 0, 0, b"L;1", &link)]);
        }),
        ("relocation link to a non-directory", |i| {
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(0, 0, 0, b"D;1", &su(b"CL", &both32(20)))],
            )
        }),
        ("relocation link past the end", |i| {
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(0, 0, 0, b"D;1", &su(b"CL", &both32(1 << 30)))],
            )
        }),
        ("truncated PX", |i| {
            i.dir(
                18,
                18,
                &rr_root(),
                &[rec(20, 5, 0, b"F;1", &su(b"PX", &[0; 8]))],
            )
        }),
    ];
    let cases = plain_cases
        .iter()
        .map(|c| (c, plain()))
        .chain(rr_cases.iter().map(|c| (c, rock_ridge())));
    for ((what, mutate), mut iso) in cases {
        mutate(&mut iso);
        let outcome = iso.open().and_then(|fs| walk(&fs));
        assert!(
            outcome.is_err(),
            "{what}: expected an error, got {outcome:?}"
        );
    }
}

/// A file whose data runs past the end of the image (one extent of a multi-extent file, here) is
/// listed with its directory; only reading it fails, with an error naming it.
#[test]
fn a_file_past_the_end_fails_alone() {
    let image_size = 24 * S as u64;
    let cases: [(&str, Vec<Vec<u8>>, u64); 3] = [
        (
            "starting past the end",
            vec![rec(10_000, 5, 0, b"BAD;1", &[])],
            10_000 * S as u64,
        ),
        (
            "ending past the end",
            vec![rec(23, 4 * S as u32, 0, b"BAD;1", &[])],
            23 * S as u64,
        ),
        (
            "one extent of several past the end",
            vec![
                rec(20, S as u32, FLAG_MULTI_EXTENT, b"BAD;1", &[]),
                rec(u32::MAX, 100, 0, b"BAD;1", &[]),
            ],
            u64::from(u32::MAX) * S as u64,
        ),
    ];
    for (what, bad, bad_start) in cases {
        let mut iso = plain();
        let mut root = vec![rec(19, S as u32, DIR, b"A", &[])];
        root.extend(bad);
        root.push(rec(20, 5, 0, b"F.TXT;1", &[]));
        iso.dir(18, 18, &[], &root);
        let fs = iso.open().unwrap();
        assert_eq!(names(&fs, ROOT_INO), ["A", "BAD", "F.TXT"], "{what}");
        let f = fs.resolve("/F.TXT").unwrap().unwrap();
        assert_eq!(fs.read(f.ino, 0, 100).unwrap(), b"hello", "{what}");
        assert_eq!(names(&fs, fs.resolve("A").unwrap().unwrap().ino), ["B.TXT"]);
        let bad = fs.lookup(ROOT_INO, OsStr::new("BAD")).unwrap().unwrap();
        assert_eq!(fs.getattr(bad.ino).unwrap().kind, Kind::File, "{what}");
        for cold in [false, true] {
            let fresh;
            let fs = if cold {
                fresh = iso.open().unwrap();
                &fresh
            } else {
                &fs
            };
            let err = fs.read(bad.ino, 0, 5).unwrap_err();
            assert_eq!(err.errno(), libc::EIO, "{what}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("byte {}", bad.ino))
                    && text.contains("file `BAD`")
                    && text.contains(&format!("at bytes {bad_start}.."))
                    && text.contains(&format!("past the end of the {image_size}-byte image")),
                "{what}: {text}"
            );
            assert!(fs.extents(bad.ino).is_err(), "{what}");
        }
    }
}

#[test]
fn zisofs_files_are_refused_not_misread() {
    let mut iso = rock_ridge();
    let zf = su(b"ZF", &[b'p', b'z', 2, 15, 0, 0, 0, 0, 0, 0, 0, 0]);
    iso.dir(
        18,
        18,
        &rr_root(),
        &[rec(20, 5, 0, b"F;1", &[nm(b"z"), zf].concat())],
    );
    let fs = iso.open().unwrap();
    let z = fs.resolve("z").unwrap().unwrap();
    assert!(matches!(
        fs.read(z.ino, 0, 5),
        Err(IsoError::Unsupported(_))
    ));
}

#[test]
fn symlink_loops_end_with_an_error() {
    let mut iso = rock_ridge();
    let sl = su(b"SL", &[0, 0, 4, b'l', b'o', b'o', b'p']);
    iso.dir(
        18,
        18,
        &rr_root(),
        &[rec(
            0,
            0,
            0,
            b"L;1",
            &[nm(b"loop"), px(0o120_777, 1, 0, 0), sl].concat(),
        )],
    );
    let fs = iso.open().unwrap();
    assert!(matches!(fs.resolve("/loop"), Err(IsoError::SymlinkLoop(_))));
    assert_eq!(IsoError::SymlinkLoop(String::new()).errno(), libc::ELOOP);
}
