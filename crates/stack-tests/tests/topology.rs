//! The compose stack's topology without containers: three smtp-ingress processes behind a
//! real HAProxy (Debian's package) that passes client addresses with PROXY protocol v2, two
//! delivery-queue processes, one pop3-access, all exporting OTLP to a receiver in the test.
//!
//! Clients connect from 127.0.0.2 and 127.0.0.3 while HAProxy reaches the ingresses from
//! 127.0.0.1, so the address the ingress uses shows whether the PROXY header was honoured.
//! Each service logs in with its own least-privilege database role, as deployed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pochta_store::Store;
use pochta_testkit::{
    ServiceProcess, ServiceUrls, TestDb, free_addr, python, until, workspace_binary,
};
use stack_tests::Receiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// HAProxy in the foreground, killed with the test.
struct Haproxy {
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Balances `listen` round-robin over `servers`, each sent a PROXY v2 header and checked
    /// with SMTP health checks (as deploy/haproxy/haproxy.cfg does).
    async fn start(listen: SocketAddr, servers: &[SocketAddr]) -> Haproxy {
        let mut config = format!(
            "global\n    maxconn 1000\n\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 5m\n    timeout server 5m\n\n\
             frontend smtp\n    bind {listen}\n    default_backend ingress\n\n\
             backend ingress\n    balance roundrobin\n    option smtpchk EHLO haproxy.test\n"
        );
        for (i, server) in servers.iter().enumerate() {
            config.push_str(&format!(
                "    server ingress{i} {server} send-proxy-v2 check check-send-proxy inter 2s\n"
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = tokio::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy (Debian package `haproxy`) must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Haproxy {
            _child: child,
            _dir: dir,
        }
    }
}

fn telemetry(otlp: SocketAddr) -> String {
    format!("[telemetry]\notlp_endpoint = \"http://{otlp}\"\nmetrics_interval_secs = 1\n\n")
}

async fn start(binary: &str, config: String, grpc: SocketAddr) -> ServiceProcess {
    let mut process =
        ServiceProcess::start(&workspace_binary(binary).unwrap(), &config, &[]).unwrap();
    process
        .wait_healthy(grpc, Duration::from_secs(30))
        .await
        .unwrap();
    process
}

/// The stack's processes, as compose runs them.
struct Topology {
    _queues: Vec<ServiceProcess>,
    _ingresses: Vec<ServiceProcess>,
    _pop3_access: ServiceProcess,
    /// The ingresses' MX listeners.
    mx: Vec<SocketAddr>,
    pop3: SocketAddr,
}

/// The `[store]` section for a service logging in at `url`.
fn store_section(url: &str) -> String {
    format!("[store]\nurl = \"{url}\"\nmax_connections = 4\n\n")
}

/// Two queues, three ingresses (each told one queue, accepting PROXY headers from 127.0.0.1
/// and relaying for 127.0.0.3) and a POP3 server, each with its database role's URL and
/// `common` configuration.
async fn topology(urls: &ServiceUrls, common: &str) -> Topology {
    let mut queues = Vec::new();
    let mut queue_grpc = Vec::new();
    for i in 1..=2 {
        let grpc = free_addr();
        let config = format!(
            "{}{common}[queue]\ngrpc_listen = \"{grpc}\"\nscan_interval_secs = 1\nhostname = \"queue-{i}.test\"\nsmarthost = \"{}\"\n",
            store_section(&urls.queue),
            free_addr()
        );
        queues.push(start("delivery-queue", config, grpc).await);
        queue_grpc.push(grpc);
    }
    let mut ingresses = Vec::new();
    let mut mx = Vec::new();
    for i in 1..=3 {
        let (grpc, listen) = (free_addr(), free_addr());
        let config = format!(
            "{}{common}[smtp]\ngrpc_listen = \"{grpc}\"\nqueue_endpoint = \"http://{}\"\nhostname = \"ingress-{i}.test\"\n\
             mx_listen = [\"{listen}\"]\nsubmission_listen = []\nsubmissions_listen = []\n\
             proxy_protocol_from = [\"127.0.0.1/32\"]\ntrusted_networks = [\"127.0.0.3/32\"]\n",
            store_section(&urls.ingress),
            queue_grpc[i % 2]
        );
        ingresses.push(start("smtp-ingress", config, grpc).await);
        mx.push(listen);
    }
    let (pop3_grpc, pop3) = (free_addr(), free_addr());
    let pop3_access = start(
        "pop3-access",
        format!(
            "{}{common}[pop3]\ngrpc_listen = \"{pop3_grpc}\"\npop3_listen = [\"{pop3}\"]\npop3s_listen = []\nplaintext_auth = \"loopback\"\n",
            store_section(&urls.pop3)
        ),
        pop3_grpc,
    )
    .await;
    Topology {
        _queues: queues,
        _ingresses: ingresses,
        _pop3_access: pop3_access,
        mx,
        pop3,
    }
}

/// A trace in which a queue's delivery span is the child of an ingress's SMTP transaction.
fn has_joined_trace(otlp: &Receiver) -> bool {
    let spans = otlp.spans();
    spans
        .iter()
        .filter(|s| s.service == "smtp-ingress" && s.name == "smtp.transaction")
        .any(|t| {
            spans.iter().any(|d| {
                d.service == "delivery-queue"
                    && d.name == "queue.delivery"
                    && d.trace_id == t.trace_id
                    && d.parent_span_id == t.span_id
                    && d.attribute("queue_id").is_some()
                    && d.attribute("queue_id") == t.attribute("queue_id")
            })
        })
}

const SEND: &str = r#"
import smtplib, sys
host, port, source, count, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
for i in range(count):
    with smtplib.SMTP(host, port, local_hostname="client.test", source_address=(source, 0), timeout=30) as s:
        s.sendmail("sender@outside.test", [rcpt], "Subject: via the balancer %d\r\n\r\nbody %d\r\n" % (i, i))
print("sent")
"#;

/// RCPT for a remote domain: prints the reply code (250 relays, 554 refuses).
const RELAY: &str = r#"
import smtplib, sys
host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with smtplib.SMTP(host, port, local_hostname="client.test", source_address=(source, 0), timeout=30) as s:
    s.ehlo()
    s.mail("sender@outside.test")
    code, _ = s.rcpt("friend@elsewhere.test")
    print(code)
"#;

const RETRIEVE: &str = r#"
import poplib, sys
p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=30)
p.user("alice@example.org")
p.pass_("secret")
count, _ = p.stat()
for i in range(1, count + 1):
    for line in p.retr(i)[1]:
        if line.startswith(b"Subject:"):
            print(line.decode())
p.quit()
"#;

/// Opens a connection from `source` to `to` and returns what arrives within a second.
async fn first_bytes(source: &str, to: SocketAddr, send: &[u8]) -> Vec<u8> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut tcp = socket.connect(to).await.unwrap();
    tcp.write_all(send).await.unwrap();
    let mut buf = vec![0u8; 512];
    match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].to_vec(),
        _ => b"(nothing)".to_vec(),
    }
}

#[tokio::test]
async fn mail_through_the_balancer_is_delivered_traced_and_measured() {
    let (otlp, otlp_addr) = Receiver::start().await.unwrap();
    let db = TestDb::new().await.unwrap();
    let store: &Store = db.store();
    let alice = db.add_account("alice@example.org", "secret").await.unwrap();
    let urls = db.service_roles().await.unwrap();
    let stack = topology(&urls, &telemetry(otlp_addr)).await;
    let (mx, pop3) = (&stack.mx, stack.pop3);
    let balancer = free_addr();
    let _haproxy = Haproxy::start(balancer, mx).await;
    let (host, port) = (balancer.ip().to_string(), balancer.port().to_string());

    // Six messages through the balancer, from 127.0.0.2.
    let sent = python(SEND, &[&host, &port, "127.0.0.2", "6", "alice@example.org"])
        .await
        .unwrap();
    assert_eq!(sent.trim(), "sent");
    until("six deliveries", Duration::from_secs(30), async || {
        store.maildrop_entries(alice).await.unwrap().len() == 6
    })
    .await;
    let mut ingresses_used = std::collections::BTreeSet::new();
    for entry in store.maildrop_entries(alice).await.unwrap() {
        let (_, content) = store
            .maildrop_entry_content(alice, entry.id)
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(content).unwrap();
        // The real client address, not the balancer's, in the Received header and in the
        // authentication checks above it (SPF was asked about 127.0.0.2).
        let (checks, received) = text.split_once("\r\nReceived: ").unwrap();
        assert!(
            received.starts_with("from client.test ([127.0.0.2])")
                && checks.starts_with("Authentication-Results: ingress-")
                && checks.contains("smtp.remote-ip=127.0.0.2"),
            "the real client address, not the balancer's: {text}"
        );
        let by = text.split("\tby ").nth(1).unwrap();
        ingresses_used.insert(by.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(
        ingresses_used.len(),
        3,
        "round robin over every ingress: {ingresses_used:?}"
    );

    // Retrievable over POP3, by Python's poplib.
    let subjects = python(
        RETRIEVE,
        &[&pop3.ip().to_string(), &pop3.port().to_string()],
    )
    .await
    .unwrap();
    for i in 0..6 {
        assert!(
            subjects.contains(&format!("Subject: via the balancer {i}")),
            "{subjects}"
        );
    }

    // Relay decisions use the real client address: 127.0.0.3 is trusted, 127.0.0.2 is not.
    let code = |source: &'static str| {
        let (host, port) = (host.clone(), port.clone());
        async move {
            python(RELAY, &[&host, &port, source])
                .await
                .unwrap()
                .trim()
                .to_owned()
        }
    };
    assert_eq!(code("127.0.0.3").await, "250");
    assert_eq!(code("127.0.0.2").await, "554");

    // Straight to an ingress: the trusted balancer's address without a header is cut off;
    // another address gets a plain session, and a header from it is not honoured.
    let cut = first_bytes("127.0.0.1", mx[0], b"EHLO sneaky.test\r\n\r\n").await;
    assert!(!cut.starts_with(b"220"), "{cut:?}");
    let direct = first_bytes("127.0.0.2", mx[0], b"").await;
    assert!(direct.starts_with(b"220 ingress-1.test"), "{direct:?}");

    // One trace joins the SMTP transaction in an ingress and the delivery in a queue.
    let trace = "a joined trace in the OTLP receiver";
    until(trace, Duration::from_secs(30), async || {
        has_joined_trace(&otlp)
    })
    .await;

    // Metrics from every service.
    until(
        "metrics from every service",
        Duration::from_secs(30),
        async || {
            otlp.has_metric("smtp-ingress", "pochta.smtp.messages.accepted")
                && otlp.has_metric("delivery-queue", "pochta.queue.delivery.attempts")
                && otlp.has_metric("delivery-queue", "pochta.queue.delivery.latency")
                && otlp.has_metric("delivery-queue", "pochta.queue.depth")
                && otlp.has_metric("pop3-access", "pochta.pop3.retrievals")
        },
    )
    .await;
}
