//! Codec micro-benchmarks: the per-byte work on the read path of every Data-In PDU (RFC 7143
//! §11.7): CRC32C data digests, and decoding a full data segment from a receive buffer; and the
//! per-byte work of verifying every chunk, whatever its source: the chunk hash, sha256 beside
//! BLAKE3 (`publish --hash`), at the default chunk size and the others.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use isomount::iscsi::digest::crc32c;
use isomount::iscsi::pdu::{self, Bhs, DataIn, Framing, Pdu};
use isomount::manifest::HashAlg;

const SEGMENTS: [usize; 3] = [8 * 1024, 64 * 1024, 256 * 1024];

fn data_in(len: usize) -> Pdu {
    let data: Bytes = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    Pdu::with_data(
        Bhs::DataIn(DataIn {
            fin: true,
            status: Some(0),
            lun: 1 << 48,
            itt: 42,
            ttt: 0xffff_ffff,
            stat_sn: 7,
            exp_cmd_sn: 8,
            max_cmd_sn: 40,
            buffer_offset: 0,
            ..DataIn::default()
        }),
        data,
    )
}

fn crc(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for len in SEGMENTS {
        let data = vec![0x5au8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &data, |b, data| {
            b.iter(|| crc32c(black_box(data)))
        });
    }
    group.finish();
}

fn decode_data_in(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_data_in");
    for digests in [false, true] {
        for len in SEGMENTS {
            let framing = Framing {
                header_digest: digests,
                data_digest: digests,
                max_recv_data: len as u32,
            };
            let wire = data_in(len).to_bytes(&framing);
            group.throughput(Throughput::Bytes(len as u64));
            let id = BenchmarkId::new(if digests { "crc32c" } else { "none" }, len);
            group.bench_with_input(id, &wire, |b, wire| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&wire[..]);
                    let pdu = pdu::decode(&mut buf, &framing)
                        .expect("well formed")
                        .expect("complete");
                    black_box(pdu.data.len())
                })
            });
        }
    }
    group.finish();
}

fn encode_data_in(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_data_in");
    let framing = Framing {
        header_digest: true,
        data_digest: true,
        max_recv_data: 256 * 1024,
    };
    for len in SEGMENTS {
        let pdu = data_in(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &pdu, |b, pdu| {
            b.iter(|| black_box(pdu.to_bytes(&framing)).len())
        });
    }
    group.finish();
}

fn chunk_hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk_hash");
    for len in [16 * 1024, 64 * 1024, 1024 * 1024] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        for alg in [HashAlg::Sha256, HashAlg::Blake3] {
            group.bench_with_input(BenchmarkId::new(alg.name(), len), &data, |b, data| {
                b.iter(|| alg.hash_chunk(black_box(data)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, crc, decode_data_in, encode_data_in, chunk_hash);
criterion_main!(benches);
