//! `https_proxy`, `http_proxy` and `no_proxy` honoured by the HTTP range client. One test in
//! its own binary: it sets the process environment, which every client built after reads.

mod common;

use std::time::Duration;

use common::*;
use isomount::http::{client, WebMirror, WebOptions};

#[test]
fn proxies_from_the_environment_are_used_unless_no_proxy_names_the_host() {
    let dir = test_dir("web_proxy");
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let data = std::fs::read(random_file(&root, "image.iso", 500_000, 5)).unwrap();
    let ca = TestCa::generate();
    let tls = Nginx::start_tls("web_proxy", &root, &ca);
    let plain = Nginx::start("web_proxy", &root);
    let proxy = ForwardProxy::start();
    let options = WebOptions {
        ca_file: Some(ca.ca_pem()),
        stall: Duration::from_secs(5),
        ..WebOptions::default()
    };
    let read_both = || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = client::build(&options).unwrap();
        for url in [tls.url("image.iso"), plain.url("image.iso")] {
            let m =
                WebMirror::new(&url, data.len() as u64, client.clone(), options.clone()).unwrap();
            let got = runtime.block_on(async { m.read(1000, 2000).all().await });
            let got = got.unwrap().concat();
            assert!(got == data[1000..3000], "{url}");
        }
    };
    // SAFETY (edition 2021: set_var is safe, but racy with threads reading the environment):
    // this binary runs this one test, and no other thread of it reads the environment now.
    for var in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("https_proxy", proxy.url());
    std::env::set_var("http_proxy", proxy.url());
    read_both();
    assert_eq!(
        proxy.asked(),
        [
            format!("CONNECT {} HTTP/1.1", tls.authority()),
            format!("GET {} HTTP/1.1", plain.url("image.iso")),
        ]
    );
    std::env::set_var("no_proxy", "localhost,127.0.0.1");
    read_both();
    assert_eq!(proxy.asked().len(), 2, "no_proxy was not honoured");
    assert_eq!(tls.served().len() + plain.served().len(), 4);
}
