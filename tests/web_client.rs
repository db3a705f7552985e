//! The HTTP range client (`isomount::http`) against real web servers on loopback: nginx over
//! http and https (HTTP/2), Python's http.server, the harness's odd server, redirects, a file
//! replaced under us, a file over 4 GiB, the first bytes a web source reads while opening.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use isomount::http::{client, Fault, HttpError, WebMirror, WebOptions};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn options() -> WebOptions {
    WebOptions {
        stall: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..WebOptions::default()
    }
}

fn mirror(url: &str, size: u64, options: WebOptions) -> Arc<WebMirror> {
    let client = client::build(&options).unwrap();
    WebMirror::new(url, size, client, options).unwrap()
}

/// A web root holding `image.iso` of `size` random bytes; returns (root, bytes).
fn web_root(dir: &Path, size: u64) -> (PathBuf, Vec<u8>) {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let path = random_file(&root, "image.iso", size, 11);
    (root, std::fs::read(path).unwrap())
}

/// nginx serving an 8 MiB `image.iso` through the fault proxy with `delay` each way: the test's
/// directory, the image's bytes, the server and the link (each kept alive by the caller), and
/// the image's URL through the link.
fn nginx_behind(
    test: &str,
    delay: Duration,
) -> (tempfile::TempDir, Vec<u8>, Nginx, FaultProxy, String) {
    let dir = test_dir(test);
    let (root, data) = web_root(dir.path(), 8 << 20);
    let nginx = Nginx::start(test, &root);
    let link = FaultProxy::start(&nginx.authority(), Faults::delayed(delay));
    let url = format!("http://{}/image.iso", link.portal());
    (dir, data, nginx, link, url)
}

async fn read(m: &Arc<WebMirror>, offset: u64, len: u64) -> Result<Vec<u8>, HttpError> {
    Ok(m.read(offset, len).all().await?.concat())
}

#[test]
fn nginx_over_http_serves_exact_ranges_and_coalesces_queued_reads() {
    // 30 ms each way: the reads below are all queued long before the first two requests end.
    let (_dir, data, nginx, link, url) = nginx_behind("web_nginx_http", Duration::from_millis(30));
    let opts = WebOptions {
        max_in_flight: 2,
        max_range: 1 << 20,
        ..options()
    };
    let m = mirror(&url, data.len() as u64, opts);
    runtime().block_on(async {
        m.probe().await.unwrap();
        // Odd offsets and lengths, the last byte, a range across most of the file.
        for (at, len) in [
            (0u64, 1u64),
            (12_345, 54_321),
            ((8 << 20) - 1, 1),
            (1, (8 << 20) - 2),
        ] {
            let got = read(&m, at, len).await.unwrap();
            assert!(got == data[at as usize..(at + len) as usize], "{at}+{len}");
        }
        // 128 reads of 64 KiB at once, two requests in flight: adjacent waiting reads go out
        // together, at most 1 MiB per request, and every read gets exactly its bytes.
        let reads: Vec<_> = (0..128u64).map(|i| m.read(i * 65536, 65536)).collect();
        for (i, r) in reads.into_iter().enumerate() {
            let got = r.all().await.unwrap().concat();
            assert!(got == data[i * 65536..(i + 1) * 65536], "read {i}");
        }
    });
    let served = nginx.served();
    let batch = &served[5..];
    assert!(
        batch.iter().all(|s| s.status == 206 && s.bytes <= 1 << 20),
        "{batch:?}"
    );
    // Two go out at once; the other 126 wait and leave 16 at a time (1 MiB).
    assert!(
        batch.len() <= 12,
        "{} requests for 128 queued reads",
        batch.len()
    );
    assert_eq!(batch.iter().map(|s| s.bytes).sum::<u64>(), 8 << 20);
    // Requests reuse connections: far fewer connections than requests.
    let mut conns: Vec<u64> = served.iter().map(|s| s.connection).collect();
    conns.sort();
    conns.dedup();
    assert!(
        conns.len() <= 3,
        "{} connections for {} requests",
        conns.len(),
        served.len()
    );
    // (A connection raced for a request that another one served may open and go unused.)
    assert!(
        link.connections() <= 3,
        "{} connections",
        link.connections()
    );
}

/// Reads waiting for the only request slot go out lowest offset first, whatever order they
/// came in; with no patience for order (`in_order_at_most` zero), oldest first.
#[test]
fn waiting_reads_go_out_lowest_offset_first_unless_one_has_waited_too_long() {
    let (_dir, data, nginx, _link, url) =
        nginx_behind("web_lowest_first", Duration::from_millis(20));
    let arrivals = [7u64, 6, 3, 5, 1, 4, 2];
    for (patience, expected) in [
        (Duration::from_secs(60), [7u64, 1, 2, 3, 4, 5, 6]),
        (Duration::ZERO, arrivals),
    ] {
        let before = nginx.served().len();
        let opts = WebOptions {
            max_in_flight: 1,
            in_order_at_most: patience,
            ..options()
        };
        let m = mirror(&url, data.len() as u64, opts);
        runtime().block_on(async {
            // Each read 4 KiB at a whole MiB: none adjacent to another, so none coalesce.
            let reads: Vec<_> = arrivals
                .iter()
                .map(|&k| (k, m.read(k << 20, 4096)))
                .collect();
            for (k, r) in reads {
                let got = r.all().await.unwrap().concat();
                let at = (k << 20) as usize;
                assert!(got == data[at..at + 4096], "read at {k} MiB");
            }
        });
        let order: Vec<u64> = nginx.served()[before..]
            .iter()
            .map(|s| {
                let from = s
                    .range
                    .trim_start_matches("bytes=")
                    .split('-')
                    .next()
                    .unwrap();
                from.parse::<u64>().unwrap() >> 20
            })
            .collect();
        assert_eq!(
            order,
            expected,
            "patience {patience:?}: {:?}",
            nginx.served()
        );
    }
}

#[test]
fn nginx_over_https_speaks_http2_with_the_test_ca_and_refuses_without_it() {
    let dir = test_dir("web_nginx_https");
    let (root, data) = web_root(dir.path(), 3 << 20);
    let ca = TestCa::generate();
    let nginx = Nginx::start_tls("web_nginx_https", &root, &ca);
    let size = data.len() as u64;
    let trusted = mirror(
        &nginx.url("image.iso"),
        size,
        WebOptions {
            ca_file: Some(ca.ca_pem()),
            ..options()
        },
    );
    let untrusted = mirror(&nginx.url("image.iso"), size, options());
    runtime().block_on(async {
        trusted.probe().await.unwrap();
        let reads: Vec<_> = (0..48u64).map(|i| trusted.read(i * 65536, 65536)).collect();
        for (i, r) in reads.into_iter().enumerate() {
            assert!(r.all().await.unwrap().concat() == data[i * 65536..(i + 1) * 65536]);
        }
        let err = untrusted.probe().await.unwrap_err();
        assert_eq!(err.fault(), Fault::Network, "{err}");
        assert!(err.to_string().contains("certificate"), "{err}");
    });
    let facts = trusted.facts();
    assert!(
        facts.contains(&("http-version".into(), "HTTP/2.0".into())),
        "{facts:?}"
    );
    let served = nginx.served();
    assert!(served
        .iter()
        .all(|s| s.request.ends_with("HTTP/2.0") && s.status == 206));
    let conns: std::collections::HashSet<u64> = served.iter().map(|s| s.connection).collect();
    assert_eq!(conns.len(), 1, "HTTP/2 multiplexes on one connection");
    let bad = std::fs::write(dir.path().join("not-a-cert.pem"), "junk");
    bad.unwrap();
    let err = client::build(&WebOptions {
        ca_file: Some(dir.path().join("not-a-cert.pem")),
        ..options()
    })
    .unwrap_err();
    assert!(err.to_string().contains("ISOMOUNT_CA_FILE="), "{err}");
}

#[test]
fn a_server_that_ignores_range_is_stopped_at_once_without_downloading_the_file() {
    let dir = test_dir("web_python");
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    // A sparse 1 GiB file: Python would send all of it if we let it.
    let file = std::fs::File::create(root.join("image.iso")).unwrap();
    file.set_len(1 << 30).unwrap();
    let python = PythonHttp::start("web_python", &root);
    let proxy = FaultProxy::start(&format!("127.0.0.1:{}", python.port()), Faults::default());
    let url = format!("http://{}/image.iso", proxy.portal());
    let m = mirror(&url, 1 << 30, options());
    runtime().block_on(async {
        let err = read(&m, 4096, 4096).await.unwrap_err();
        assert_eq!(err.fault(), Fault::Stopped, "{err}");
        assert!(err.to_string().contains("ignores Range"), "{err}");
        let again = read(&m, 0, 4096).await.unwrap_err();
        assert!(matches!(again, HttpError::Stopped { .. }), "{again}");
    });
    // Give anything still in flight a moment to arrive, then count it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(python.requests().len(), 1, "{:?}", python.requests());
    let sent = proxy.bytes_to_client();
    assert!(sent < 64 << 20, "{sent} bytes of a 1 GiB file came through");
    assert!(m.stopped().unwrap().contains("ignores Range"));
}

#[test]
fn bodies_without_content_length_are_counted_and_wrong_answers_classified() {
    let dir = test_dir("web_odd");
    let (root, data) = web_root(dir.path(), 1 << 20);
    let file = root.join("image.iso");
    let size = data.len() as u64;
    runtime().block_on(async {
        for quirk in [Quirk::NoContentLength, Quirk::Chunked] {
            let odd = OddServer::start(&file, quirk);
            let m = mirror(&odd.url("image.iso"), size, options());
            for (at, len) in [(0u64, 300_000u64), (700_000, 348_576)] {
                let got = read(&m, at, len).await.unwrap();
                assert!(
                    got == data[at as usize..(at + len) as usize],
                    "{quirk:?} {at}"
                );
            }
        }
        let odd = OddServer::start(&file, Quirk::WrongContentRange);
        let m = mirror(&odd.url("image.iso"), size, options());
        let err = read(&m, 4096, 4096).await.unwrap_err();
        assert_eq!(err.fault(), Fault::Protocol, "{err}");
        assert!(
            err.to_string().contains("Content-Range `bytes 4608-"),
            "{err}"
        );
        assert!(
            m.stopped().is_none(),
            "a protocol fault alone does not stop the mirror"
        );
        // Reads coalesced into one request share one answer: its fault is counted once. (The
        // first read goes out alone; the others usually wait for its slot and go out together.)
        let one_at_a_time = WebOptions {
            max_in_flight: 1,
            ..options()
        };
        let m = mirror(&odd.url("image.iso"), size, one_at_a_time);
        let before = odd.requests();
        let reads: Vec<_> = (0..6u64).map(|i| m.read(i * 8192, 8192)).collect();
        let mut faults = Vec::new();
        for r in reads {
            faults.push(r.all().await.unwrap_err().fault());
        }
        let answers = (odd.requests() - before) as usize;
        let counted = faults.iter().filter(|f| **f == Fault::Protocol).count();
        assert_eq!(counted, answers, "{faults:?}");
        assert!(faults
            .iter()
            .all(|f| matches!(f, Fault::Protocol | Fault::Network)));
        assert!(answers < 6, "no read was coalesced: {faults:?}");

        let odd = OddServer::start(&file, Quirk::ShortBody);
        let m = mirror(&odd.url("image.iso"), size, options());
        let err = read(&m, 0, 100_000).await.unwrap_err();
        assert_eq!(err.fault(), Fault::Network, "{err}");
        assert!(
            matches!(
                err,
                HttpError::Truncated {
                    got: 50_000,
                    want: 100_000,
                    ..
                }
            ),
            "{err}"
        );

        // The catalog's size is not the file's.
        let odd = OddServer::start(&file, Quirk::Chunked);
        let m = mirror(&odd.url("image.iso"), size + 512, options());
        let err = m.probe().await.unwrap_err();
        assert_eq!(err.fault(), Fault::Stopped, "{err}");
        assert!(
            err.to_string()
                .contains("the file is 1048576 bytes, the image 1049088"),
            "{err}"
        );
    });
}

#[test]
fn redirects_are_followed_a_few_times_and_never_down_to_http() {
    let dir = test_dir("web_redirects");
    let (root, data) = web_root(dir.path(), 300_000);
    let ca = TestCa::generate();
    let plain = Nginx::start("web_redirects", &root);
    let conf = format!(
        "location = /moved.iso {{ return 302 /image.iso; }}\n\
         location = /loop {{ return 302 /loop; }}\n\
         location = /down.iso {{ return 302 {}; }}\n",
        plain.url("image.iso")
    );
    let tls = Nginx::start_with("web_redirects", &root, Some(&ca), &conf);
    let opts = WebOptions {
        ca_file: Some(ca.ca_pem()),
        ..options()
    };
    let size = data.len() as u64;
    runtime().block_on(async {
        let moved = mirror(&tls.url("moved.iso"), size, opts.clone());
        assert!(read(&moved, 10, 20).await.unwrap() == data[10..30]);
        assert!(read(&moved, 1000, 20).await.unwrap() == data[1000..1020]);
        let facts = moved.facts();
        assert!(
            facts.contains(&("location".into(), tls.url("image.iso"))),
            "{facts:?}"
        );

        let looping = mirror(&tls.url("loop"), size, opts.clone());
        let err = looping.probe().await.unwrap_err();
        assert_eq!(err.fault(), Fault::Stopped, "{err}");
        assert!(err.to_string().contains("more than 5 redirects"), "{err}");

        let down = mirror(&tls.url("down.iso"), size, opts.clone());
        let err = down.probe().await.unwrap_err();
        assert_eq!(err.fault(), Fault::Stopped, "{err}");
        assert!(
            err.to_string().contains("from https to plain http"),
            "{err}"
        );
    });
    // The second read of the moved file went straight to where the redirect led.
    let moved: Vec<_> = tls
        .served()
        .into_iter()
        .filter(|s| s.request.contains("moved"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(plain.served().is_empty(), "the downgrade was followed");
}

#[test]
fn a_file_replaced_under_us_stops_the_mirror_for_the_image() {
    let dir = test_dir("web_changed");
    let (root, data) = web_root(dir.path(), 200_000);
    let nginx = Nginx::start("web_changed", &root);
    let size = data.len() as u64;
    let m = mirror(&nginx.url("image.iso"), size, options());
    runtime().block_on(async {
        assert!(read(&m, 0, 100).await.unwrap() == data[..100]);
        // Another file of the same size, renamed into place, with another mtime (so ETag and
        // Last-Modified change, as when a mirror syncs a new release).
        let new = random_file(dir.path(), "new.iso", size, 99);
        let f = std::fs::File::options().write(true).open(&new).unwrap();
        f.set_modified(std::time::SystemTime::now() + Duration::from_secs(100))
            .unwrap();
        std::fs::rename(&new, root.join("image.iso")).unwrap();
        let err = read(&m, 100, 100).await.unwrap_err();
        assert_eq!(err.fault(), Fault::Stopped, "{err}");
        assert!(
            err.to_string().contains("the file changed under us (ETag"),
            "{err}"
        );
        let again = read(&m, 0, 100).await.unwrap_err();
        assert!(matches!(again, HttpError::Stopped { .. }), "{again}");
    });
    assert_eq!(nginx.served().len(), 2);
}

#[test]
fn files_over_4_gib_are_read_at_offsets_past_4_gib() {
    let dir = test_dir("web_big");
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let size: u64 = (5 << 30) + 12_345;
    let path = root.join("image.iso");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    let marks = [(1u64 << 32) - 3, (4 << 30) + (512 << 20), size - 7];
    for (i, at) in marks.iter().enumerate() {
        file.write_all_at(format!("mark{i}!").as_bytes(), *at)
            .unwrap();
    }
    let nginx = Nginx::start("web_big", &root);
    let m = mirror(&nginx.url("image.iso"), size, options());
    runtime().block_on(async {
        for (i, at) in marks.iter().enumerate() {
            let want = format!("mark{i}!");
            let len = want.len() as u64;
            assert_eq!(
                read(&m, *at, len).await.unwrap(),
                want.as_bytes(),
                "at {at}"
            );
        }
        let zeros = read(&m, (4 << 30) + 4096, 65536).await.unwrap();
        assert!(zeros.iter().all(|&b| b == 0));
        let err = read(&m, size - 1, 2).await.unwrap_err();
        assert_eq!(err.fault(), Fault::OutOfRange);
    });
}

#[test]
fn the_first_bytes_read_while_opening_answer_the_first_reads_once() {
    use isomount::source::http::WebClient;
    use isomount::source::{read_all, BlockSource};
    let dir = test_dir("web_first_read");
    let (root, data) = web_root(dir.path(), 2 << 20);
    let nginx = Nginx::start("web_first_read", &root);
    let web = WebClient::new(options()).unwrap();
    let source = web
        .source(&nginx.url("image.iso"), data.len() as u64)
        .unwrap()
        .reading_first(256 << 10);
    runtime().block_on(async {
        let identity = source.open().await.unwrap();
        assert_eq!(identity.size, data.len() as u64);
        // Within the first bytes: no request.
        let got = read_all(&source, 32 << 10, 64 << 10).await.unwrap();
        assert!(got[..] == data[32 << 10..96 << 10]);
        // Across their end: only the rest is asked for, and they are let go.
        let got = read_all(&source, 128 << 10, 256 << 10).await.unwrap();
        assert!(got[..] == data[128 << 10..384 << 10]);
        let got = read_all(&source, 0, 4096).await.unwrap();
        assert!(got[..] == data[..4096]);
    });
    let ranges: Vec<String> = nginx.served().into_iter().map(|s| s.range).collect();
    assert_eq!(
        ranges,
        ["bytes=0-262143", "bytes=262144-393215", "bytes=0-4095"],
    );
}

#[test]
fn bodies_are_handed_on_piece_by_piece_as_they_stream_in() {
    let dir = test_dir("web_streaming");
    let (root, data) = web_root(dir.path(), 4 << 20);
    let nginx = Nginx::start("web_streaming", &root);
    // The link goes silent once 1 MiB has come through, for longer than the stall bound.
    let link = FaultProxy::start(
        &nginx.authority(),
        Faults {
            stall_after: Some((1 << 20, Duration::from_secs(60))),
            ..Faults::default()
        },
    );
    let opts = WebOptions {
        stall: Duration::from_secs(1),
        ..options()
    };
    let url = format!("http://{}/image.iso", link.portal());
    let m = mirror(&url, data.len() as u64, opts);
    let (got, err) = runtime().block_on(async {
        let mut body = m.read(0, 4 << 20);
        let mut got = Vec::new();
        loop {
            match body.next().await {
                Some(Ok(piece)) => got.extend_from_slice(&piece),
                Some(Err(e)) => return (got, Some(e)),
                None => return (got, None),
            }
        }
    });
    // The body never ended, yet what came before the silence was handed on as it came.
    let err = err.expect("a 4 MiB body through a link silent after 1 MiB ended");
    // (Stalled, or Truncated when reqwest's own read timeout ends the body first.)
    assert_eq!(err.fault(), Fault::Network, "{err}");
    assert!(link.stalled());
    assert!(got.len() >= 768 << 10, "only {} bytes handed on", got.len());
    assert!(
        got[..] == data[..got.len()],
        "the pieces are not the file's start"
    );
}
