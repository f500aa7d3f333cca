//! `Conn::readable` over real TLS: input rustls has already taken off the socket counts as
//! input, so a session waiting for readiness (holding no read buffer) is not left hanging
//! while the socket stays quiet.

use std::sync::Arc;
use std::time::Duration;

use pochta_config::TlsConfig;
use pochta_service::conn::Conn;
use pochta_testkit::TestCerts;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

fn connector(certs: &TestCerts) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&certs.ca_path).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn input_rustls_already_holds_is_readable_though_the_socket_is_quiet() {
    let certs = TestCerts::generate().unwrap();
    let acceptor = pochta_service::tls::acceptor(&TlsConfig {
        cert_path: Some(certs.cert_path.clone()),
        key_path: Some(certs.key_path.clone()),
    })
    .unwrap()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connector = connector(&certs);
    let client = tokio::spawn(async move {
        let mut conn = Conn::Plain(TcpStream::connect(addr).await.unwrap());
        let name = ServerName::try_from("localhost").unwrap();
        conn.connect_tls(&connector, name).await.unwrap();
        // One record of 5,000 octets, then silence (the connection stays open).
        conn.write_all(&[b'x'; 5000]).await.unwrap();
        let mut rest = [0u8; 1];
        let _ = conn.read(&mut rest).await;
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let mut server = Conn::Plain(tcp);
    server.accept_tls(&acceptor).await.unwrap();
    // Small reads: after the first, rustls holds the rest of the record, decrypted, and the
    // socket has nothing more to say.
    let mut got = 0;
    let mut buf = [0u8; 1000];
    while got < 5000 {
        tokio::time::timeout(Duration::from_secs(5), server.readable())
            .await
            .expect("readable while rustls holds input")
            .unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got += n;
    }
    assert_eq!(got, 5000);
    // Nothing more: now readiness does wait for the socket.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), server.readable())
            .await
            .is_err()
    );
    server.shutdown().await;
    client.await.unwrap();
}
