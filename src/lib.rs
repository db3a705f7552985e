//! isomount: a portable userspace iSCSI initiator for published read-only images.
//!
//! # The path of a byte
//! A read of the mounted image, from the FUSE callback to a cache hit or an iSCSI READ:
//! ```text
//!  fs/fuse.rs        read(ino, offset, size)            the FUSE adapter: one tokio task per read
//!   └► fs/mod.rs     Tree::read → ImageView::read       the mounted tree; the image file is…
//!       └► image/    Image::read_parts                  …the image core (image/mod.rs draws it):
//!           ├► image/chunks.rs    offset → chunks
//!           ├► image/cached.rs    hit: memory, or the store (cache/store.rs), CRC32C-checked
//!           └► image/fetch.rs     miss: one fetch per chunk, adjacent misses in one run
//!               └► image/sources.rs   the best source; failover, hedging, fault budget
//!                   └► source/iscsi.rs    BlockSource over one portal (source/ is the seam)
//!                       └► iscsi/lun.rs → iscsi/transport.rs → TCP    READ(10), Data-In
//!               ◄┘ image/verify.rs     each chunk against the manifest, as it lands
//!           ◄┘ image/cached.rs    kept in memory, written behind to the store (image/writer.rs)
//!   ◄┘ verified bytes back to the kernel
//! ```
//! A miss copies its bytes once, out of the socket: `iscsi/reader.rs` lands each Data-In segment
//! in a page-aligned buffer from `iobuf::pool`, and the same memory is hashed, written to the
//! store with direct I/O and handed to the reader (a FUSE read of several pieces is joined into
//! one pooled buffer: fuser replies from one slice). A cache hit writes nothing: recency for
//! eviction is kept in memory and written in batches by the writer thread, and store reads go
//! into reused buffers (`iobuf::pool`). When every chunk
//! is in the store and verified, opening the image file may hand the kernel the store's data
//! file instead (`image/passthrough.rs`: read back and checked at open, or for a large store
//! sealed by `cache/store.rs`, behind its first open), and reads then never reach isomount.
//! Each arrow points down: no layer reaches back up. The protocol (`iscsi`, `scsi`) knows no
//! image core, cache or FUSE; the cache knows no network; FUSE and the target read only through
//! the image core or a [`source::BlockSource`].
//!
//! # The modules, top down
//! - [`cli`]: clap definitions → a validated [`config::Config`], and dispatch to [`commands`].
//! - [`commands`]: one module per command (mount, cat, fetch, serve, publish, …).
//! - [`fs`]: the mounted tree over one image (`fs/fuse.rs` adapts it to `/dev/fuse`).
//! - [`target`]: the read-only iSCSI target behind `isomount serve`.
//! - [`image`]: the image core: verified bytes of one image from cache and sources.
//! - [`source`]: where bytes come from (iSCSI portals, local files; web mirrors in [`http`]).
//! - [`cache`]: the persistent verified chunk store, bounded with LRU eviction.
//! - [`catalog`], [`manifest`], [`tree`]: catalog files, chunk manifests, image trees.
//! - [`iscsi`]: the iSCSI protocol, initiator side and the codec shared with the target.
//! - [`scsi`]: the SCSI vocabulary (opcodes, sense, VPD) for initiator and target.
//! - [`iso9660`]: the reader behind `files/`; [`iobuf`]: buffers for file I/O;
//!   [`config`]: the shared settings.

pub mod cache;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod fs;
pub mod http;
pub mod image;
pub mod iobuf;
pub mod iscsi;
pub mod iso9660;
pub mod manifest;
pub mod platform;
pub mod scsi;
pub mod signature;
pub mod source;
pub mod target;
pub mod tree;

pub use cli::run;
