//! The web half of the test harness, checked with an independent client: curl against the nginx,
//! Python, odd-server and proxy instances it starts.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// curl ARGS… with a time limit; returns (exit code, stdout bytes, stderr).
fn curl(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "--noproxy", ""])
        .args(args)
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .output()
        .expect("run curl");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The body of a ranged GET and, from `-w`, "STATUS HTTP-VERSION".
fn ranged(url: &str, range: &str, extra: &[&str]) -> (Vec<u8>, String) {
    let dir = test_dir("curl");
    let body = dir.path().join("body");
    let mut args = vec!["-r", range, "-o", body.to_str().unwrap()];
    args.extend(["-w", "%{http_code} %{http_version}"]);
    args.extend(extra);
    args.push(url);
    let (code, out, err) = curl(&args);
    assert_eq!(code, 0, "curl {url}: {err}");
    (
        std::fs::read(&body).unwrap(),
        String::from_utf8(out).unwrap(),
    )
}

fn root_with_image(dir: &Path, size: u64) -> Vec<u8> {
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let path = random_file(&root, "image.iso", size, 7);
    std::fs::read(path).unwrap()
}

#[test]
fn nginx_serves_ranges_over_http_and_over_https_with_http2() {
    let dir = test_dir("nginx_ranges");
    let data = root_with_image(dir.path(), 1 << 20);
    let ca = TestCa::generate();
    let plain = Nginx::start("nginx_ranges", &dir.path().join("www"));
    let tls = Nginx::start_tls("nginx_ranges", &dir.path().join("www"), &ca);

    let (body, status) = ranged(&plain.url("image.iso"), "1000-1999", &[]);
    assert_eq!(status, "206 1.1");
    assert_eq!(body, &data[1000..2000]);

    let cacert = ca.ca_pem();
    let args = ["--cacert", cacert.to_str().unwrap(), "--http2"];
    let (body, status) = ranged(&tls.url("/image.iso"), "65536-", &args);
    assert_eq!(status, "206 2");
    assert_eq!(body, &data[65536..]);

    // Without the test CA, the certificate is refused: the CA is what makes it trusted.
    let (code, _, err) = curl(&["-o", "/dev/null", &tls.url("image.iso")]);
    assert_ne!(code, 0, "an untrusted certificate was accepted: {err}");

    let served = tls.served();
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served[0].status, 206);
    assert_eq!(served[0].range, "bytes=65536-");
    assert_eq!(served[0].bytes, (1 << 20) - 65536);
    assert!(served[0].request.ends_with("HTTP/2.0"), "{served:?}");
}

#[test]
fn python_http_server_answers_a_range_with_the_whole_file() {
    let dir = test_dir("python_range");
    let data = root_with_image(dir.path(), 300_000);
    let server = PythonHttp::start("python_range", &dir.path().join("www"));
    let (body, status) = ranged(&server.url("image.iso"), "100-199", &[]);
    assert!(
        status.starts_with("200 "),
        "this Python's http.server honours Range now: {status}"
    );
    assert_eq!(body, data);
    assert_eq!(server.requests(), ["GET /image.iso HTTP/1.1"]);
}

#[test]
fn forward_proxy_tunnels_https_and_forwards_http() {
    let dir = test_dir("forward_proxy");
    let data = root_with_image(dir.path(), 100_000);
    let ca = TestCa::generate();
    let plain = Nginx::start("forward_proxy", &dir.path().join("www"));
    let tls = Nginx::start_tls("forward_proxy", &dir.path().join("www"), &ca);
    let proxy = ForwardProxy::start();
    let cacert = ca.ca_pem();
    let via = ["-x", &proxy.url(), "--cacert", cacert.to_str().unwrap()];
    let (body, status) = ranged(&tls.url("image.iso"), "10-19", &via);
    assert_eq!((status.as_str(), &body[..]), ("206 2", &data[10..20]));
    let (body, status) = ranged(&plain.url("image.iso"), "20-29", &via);
    assert_eq!((status.as_str(), &body[..]), ("206 1.1", &data[20..30]));
    assert_eq!(
        proxy.asked(),
        [
            format!("CONNECT {} HTTP/1.1", tls.authority()),
            format!("GET {} HTTP/1.1", plain.url("image.iso")),
        ]
    );
    assert_eq!(plain.served().len(), 1);
}

#[test]
fn odd_server_quirks_are_what_curl_sees() {
    let dir = test_dir("odd_server");
    let data = root_with_image(dir.path(), 200_000);
    let file = dir.path().join("www/image.iso");
    let headers = |server: &OddServer| {
        let (code, out, err) = curl(&[
            "-r",
            "1000-1999",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &server.url("x"),
        ]);
        (
            code,
            String::from_utf8_lossy(&out).to_ascii_lowercase(),
            err,
        )
    };

    let odd = OddServer::start(&file, Quirk::NoContentLength);
    let (code, head, _) = headers(&odd);
    assert_eq!(code, 0);
    assert!(
        head.contains("content-range: bytes 1000-1999/200000") && !head.contains("content-length"),
        "{head}"
    );
    assert_eq!(ranged(&odd.url("x"), "1000-1999", &[]).0, &data[1000..2000]);

    let odd = OddServer::start(&file, Quirk::Chunked);
    let (_, head, _) = headers(&odd);
    assert!(
        head.contains("transfer-encoding: chunked") && !head.contains("content-length"),
        "{head}"
    );
    assert_eq!(
        ranged(&odd.url("x"), "1000-99999", &[]).0,
        &data[1000..100_000]
    );

    let odd = OddServer::start(&file, Quirk::WrongContentRange);
    let (_, head, _) = headers(&odd);
    assert!(
        head.contains("content-range: bytes 1512-2511/200000"),
        "{head}"
    );
    assert_eq!(ranged(&odd.url("x"), "1000-1999", &[]).0, &data[1512..2512]);

    let odd = OddServer::start(&file, Quirk::ShortBody);
    let (code, _, err) = headers(&odd);
    assert_eq!(code, 18, "curl should see a partial file: {err}");
    assert_eq!(odd.requests(), 1);
}

#[test]
fn fault_proxy_counts_client_turns_per_request() {
    let dir = test_dir("proxy_turns");
    root_with_image(dir.path(), 100_000);
    let nginx = Nginx::start("proxy_turns", &dir.path().join("www"));
    let proxy = FaultProxy::start(
        &nginx.authority(),
        Faults::delayed(Duration::from_millis(5)),
    );
    let url = format!("http://{}/image.iso", proxy.portal());
    // One curl, three requests: one connection, reused.
    let (code, _, err) = curl(&[
        "-r",
        "0-9",
        "-o",
        "/dev/null",
        &url,
        "-o",
        "/dev/null",
        &url,
        "-o",
        "/dev/null",
        &url,
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.client_turns(), 3);
    let served = nginx.served();
    assert_eq!(served.len(), 3);
    assert!(served
        .iter()
        .all(|s| s.connection == served[0].connection && s.bytes == 10));
    assert!(proxy.bytes_to_server() > 3 * 20 && proxy.bytes_to_server() < 3 * 1000);
}

#[test]
fn corrupt_copy_inverts_exactly_the_bytes_asked() {
    let dir = test_dir("corrupt_copy");
    let src = random_file(dir.path(), "a", 10_000, 3);
    let dst = corrupt_copy(&src, &dir.path().join("b"), 4096, 10);
    let (a, b) = (std::fs::read(src).unwrap(), std::fs::read(dst).unwrap());
    let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(differ, (4096..4106).collect::<Vec<_>>());
    assert_eq!(b[4096], !a[4096]);
}

#[test]
fn a_dead_portal_refuses_connections() {
    let portal = dead_portal();
    assert!(
        std::net::TcpStream::connect(&portal).is_err(),
        "{portal} answered"
    );
}
