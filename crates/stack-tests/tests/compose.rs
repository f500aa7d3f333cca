//! The deployment files, checked where no Docker engine runs: each is parsed by a tool that
//! understands it (docker-compose, hadolint, haproxy -c, serde for YAML and JSON), and the
//! stack's invariants are asserted on what they parsed.

use std::path::{Path, PathBuf};
use std::process::Command;

use pochta_config::{Cidr, Config};
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The secrets compose refuses to start without (`deploy/make-secrets` writes them to .env).
const SECRETS: [&str; 7] = [
    "POCHTA_PG_SUPERUSER_PASSWORD",
    "POCHTA_DB_PASSWORD",
    "POCHTA_INGRESS_DB_PASSWORD",
    "POCHTA_QUEUE_DB_PASSWORD",
    "POCHTA_POP3_DB_PASSWORD",
    "POCHTA_IMAP_DB_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
];

/// Runs a tool from the repository root, with each secret set to `secret-NAME`; panics with
/// its output unless it succeeds.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .envs(SECRETS.map(|name| (name, format!("secret-{name}"))))
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (see .ci/run): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stack_config() -> Config {
    Config::from_toml_str(&read("deploy/pochta.toml")).unwrap()
}

/// The compose file as docker-compose resolves it (anchors merged, defaults filled).
fn compose() -> Value {
    let resolved = tool("docker-compose", &["-f", "docker-compose.yml", "config"]);
    serde_yaml::from_str(&resolved).unwrap()
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let s = &compose["services"][name];
    assert!(!s.is_null(), "service {name} missing");
    s
}

fn depends(compose: &Value, name: &str, on: &str) -> String {
    service(compose, name)["depends_on"][on]["condition"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} does not depend on {on}"))
        .to_owned()
}

/// The strings of a YAML list (empty if it is not one).
fn strings(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn published_ports(s: &Value) -> Vec<u64> {
    s["ports"]
        .as_sequence()
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    p["published"]
                        .as_u64()
                        .or_else(|| p["published"].as_str()?.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default()
}

const POCHTA_SERVICES: [&str; 4] = [
    "smtp-ingress",
    "delivery-queue",
    "pop3-access",
    "imap-access",
];

#[test]
fn scalable_services_have_no_fixed_name_or_port() {
    let compose = compose();
    for name in ["smtp-ingress", "delivery-queue"] {
        let s = service(&compose, name);
        assert!(s["container_name"].is_null(), "{name} has a container_name");
        assert!(s["ports"].is_null(), "{name} publishes ports");
    }
    let haproxy = service(&compose, "haproxy");
    let mut ports = published_ports(haproxy);
    ports.sort();
    assert_eq!(
        ports,
        [25, 465, 587],
        "the balancer publishes the SMTP ports"
    );
}

#[test]
fn services_start_in_order_and_report_health() {
    let compose = compose();
    assert_eq!(depends(&compose, "migrate", "postgres"), "service_healthy");
    for name in POCHTA_SERVICES.iter().chain(&["pochtactl"]) {
        assert_eq!(
            depends(&compose, name, "migrate"),
            "service_completed_successfully",
            "{name}"
        );
    }
    assert_eq!(
        depends(&compose, "haproxy", "smtp-ingress"),
        "service_healthy"
    );
    assert!(!service(&compose, "postgres")["healthcheck"]["test"].is_null());
    assert!(
        !service(&compose, "postgres")["volumes"].is_null(),
        "a volume for the data"
    );

    // Each service's health check asks its own gRPC health endpoint with pochtactl.
    let config = stack_config();
    for (name, grpc) in [
        ("smtp-ingress", config.smtp.grpc_listen),
        ("delivery-queue", config.queue.grpc_listen),
        ("pop3-access", config.pop3.grpc_listen),
        ("imap-access", config.imap.grpc_listen),
    ] {
        let test = strings(&service(&compose, name)["healthcheck"]["test"]);
        assert_eq!(
            test,
            [
                "CMD",
                "pochtactl",
                "health",
                &format!("127.0.0.1:{}", grpc.port())
            ],
            "{name}"
        );
    }
}

/// No default passwords: without each secret compose refuses to start, and every service logs
/// in to PostgreSQL with its own role and password; only the queue and pochtactl see the admin
/// token, where the config says it is.
#[test]
fn secrets_are_required_and_each_service_has_its_own_role() {
    for missing in SECRETS {
        let out = Command::new("docker-compose")
            .args(["-f", "docker-compose.yml", "config"])
            .envs(
                SECRETS
                    .iter()
                    .filter(|name| **name != missing)
                    .map(|name| (*name, "x")),
            )
            .env_remove(missing)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(!out.status.success(), "compose started without {missing}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("run deploy/make-secrets"),
            "{missing}: {stderr}"
        );
    }
    let compose = compose();
    let url = |name: &str| {
        service(&compose, name)["environment"]["POCHTA_STORE__URL"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no store URL"))
            .to_owned()
    };
    for (name, role, secret) in [
        (
            "smtp-ingress",
            "pochta_ingress",
            "POCHTA_INGRESS_DB_PASSWORD",
        ),
        ("delivery-queue", "pochta_queue", "POCHTA_QUEUE_DB_PASSWORD"),
        ("pop3-access", "pochta_pop3", "POCHTA_POP3_DB_PASSWORD"),
        ("imap-access", "pochta_imap", "POCHTA_IMAP_DB_PASSWORD"),
        ("migrate", "pochta", "POCHTA_DB_PASSWORD"),
        ("pochtactl", "pochta", "POCHTA_DB_PASSWORD"),
    ] {
        assert_eq!(
            url(name),
            format!("postgres://{role}:secret-{secret}@postgres:5432/pochta"),
            "{name}"
        );
    }
    let migrate = strings(&service(&compose, "migrate")["command"]);
    assert_eq!(migrate, ["pochtactl", "migrate", "--grant-roles"]);
    // The roles the grants name are the ones the init script creates.
    let init = read("deploy/postgres/init-roles.sh");
    let roles = pochta_store::ServiceRoles::default();
    for role in ["pochta"].into_iter().chain(roles.all()) {
        assert!(
            init.contains(&format!("CREATE ROLE {role} LOGIN NOSUPERUSER")),
            "{role}"
        );
    }
    tool("sh", &["-n", "deploy/postgres/init-roles.sh"]);
    tool("sh", &["-n", "deploy/postgres/init-settings.sh"]);
    // Pochta's PostgreSQL settings reach a new cluster: the file where the init script
    // reads it, the script where the entrypoint runs it.
    let mounts = strings(&service(&compose, "postgres")["volumes"]);
    for mount in [
        "/deploy/postgres/pochta.conf:/etc/pochta/postgres.conf:ro",
        "/deploy/postgres/init-settings.sh:/docker-entrypoint-initdb.d/init-settings.sh:ro",
    ] {
        assert!(
            mounts.iter().any(|m| m.ends_with(mount)),
            "{mount} in {mounts:?}"
        );
    }
    tool("sh", &["-n", "deploy/make-secrets"]);

    let with_token: Vec<&str> = POCHTA_SERVICES
        .iter()
        .chain(&["migrate", "pochtactl"])
        .copied()
        .filter(|name| !service(&compose, name)["secrets"].is_null())
        .collect();
    assert_eq!(with_token, ["delivery-queue", "pochtactl"]);
    assert_eq!(
        stack_config().queue.admin_token_file.as_deref(),
        Some(Path::new("/run/secrets/admin_token"))
    );
    assert!(
        !read("docker-compose.yml").contains(":-"),
        "no variable falls back to a default"
    );
}

#[test]
fn shutdown_grace_fits_in_the_stop_period() {
    let compose = compose();
    let config = stack_config();
    for (name, grace) in [
        ("smtp-ingress", config.smtp.shutdown_grace_secs),
        ("delivery-queue", config.queue.shutdown_grace_secs),
        ("pop3-access", config.pop3.shutdown_grace_secs),
        ("imap-access", config.imap.shutdown_grace_secs),
    ] {
        let period = service(&compose, name)["stop_grace_period"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no stop_grace_period"));
        let secs: u64 = period.trim_end_matches('s').parse().unwrap();
        assert!(
            secs > grace,
            "{name}: docker would kill it before its {grace} s grace ends"
        );
    }
}

#[test]
fn only_the_balancer_may_send_proxy_headers() {
    let compose = compose();
    let config = stack_config();
    let haproxy: std::net::IpAddr =
        service(&compose, "haproxy")["networks"]["pochta"]["ipv4_address"]
            .as_str()
            .expect("haproxy has a fixed address")
            .parse()
            .unwrap();
    let trusted = &config.smtp.proxy_protocol_from;
    assert!(trusted.iter().any(|net| net.contains(haproxy)));
    let subnet: Cidr = compose["networks"]["pochta"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(subnet.contains(haproxy));
    // Nothing else in the subnet is trusted: a trusted network as wide as the subnet would let
    // any container claim any client address.
    let neighbour = match haproxy {
        std::net::IpAddr::V4(v4) => {
            std::net::IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4) + 1))
        }
        v6 => v6,
    };
    assert!(!trusted.iter().any(|net| net.contains(neighbour)));

    let cfg = read("deploy/haproxy/haproxy.cfg");
    for port in ["25", "587", "465"] {
        assert!(
            cfg.lines()
                .any(|l| l.contains(&format!("smtp-ingress:{port} send-proxy-v2"))),
            "port {port} is balanced with PROXY v2"
        );
    }
    tool("haproxy", &["-c", "-q", "-f", "deploy/haproxy/haproxy.cfg"]);
}

#[test]
fn telemetry_flows_from_services_to_jaeger_and_prometheus() {
    let compose = compose();
    for name in POCHTA_SERVICES {
        assert_eq!(
            service(&compose, name)["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str(),
            Some("http://otel-collector:4317"),
            "{name}"
        );
    }
    let collector = yaml("deploy/otel/collector.yaml");
    assert_eq!(
        collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].as_str(),
        Some("0.0.0.0:4317")
    );
    let pipelines = &collector["service"]["pipelines"];
    assert_eq!(
        pipelines["traces"]["exporters"][0].as_str(),
        Some("otlp/jaeger")
    );
    assert_eq!(
        pipelines["metrics"]["exporters"][0].as_str(),
        Some("prometheus")
    );
    assert_eq!(
        collector["exporters"]["otlp/jaeger"]["endpoint"].as_str(),
        Some("jaeger:4317")
    );
    let scrape = collector["exporters"]["prometheus"]["endpoint"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(
        prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(),
        Some(format!("otel-collector:{scrape}").as_str())
    );
    for name in ["otel-collector", "jaeger", "prometheus", "grafana"] {
        service(&compose, name);
    }
    let datasources = yaml("deploy/grafana/provisioning/datasources/pochta.yaml");
    let urls: Vec<&str> = datasources["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|d| d["url"].as_str())
        .collect();
    assert_eq!(urls, ["http://prometheus:9090", "http://jaeger:16686"]);
}

/// Every `pochta_*` metric a query names, as the OTel instrument name it comes from.
fn instruments_in(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("pochta_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let prom = &tail[..end];
        let base = ["_seconds_bucket", "_total"]
            .iter()
            .find_map(|suffix| prom.strip_suffix(suffix))
            .unwrap_or(prom);
        names.push(base.replace('_', "."));
        rest = &tail[end..];
    }
    names
}

/// Every string literal of the services' sources, joined.
fn sources() -> String {
    let mut all = String::new();
    for service in POCHTA_SERVICES {
        let dir = root().join("crates").join(service).join("src");
        for entry in std::fs::read_dir(dir).unwrap() {
            all.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
    }
    all
}

#[test]
fn dashboard_and_alerts_use_metrics_the_services_export() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/pochta.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Messages accepted per second",
        "SMTP rejections by reply code",
        "Queue depth by state",
        "Delivery attempts by result",
        "Accept-to-delivery latency",
        "POP3 sessions per second",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?}: {titles:?}");
    }
    let sources = sources();
    let mut queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let alerts = yaml("deploy/prometheus/alerts.yml");
    for rule in alerts["groups"][0]["rules"].as_sequence().unwrap() {
        queries.push(rule["expr"].as_str().unwrap().to_owned());
    }
    for query in &queries {
        let names = instruments_in(query);
        assert!(!names.is_empty(), "{query}");
        for name in names {
            assert!(
                sources.contains(&format!("\"{name}\"")),
                "{query} uses {name}, which no service exports"
            );
        }
    }
}

#[test]
fn the_image_builds_in_stages_and_runs_unprivileged() {
    tool("hadolint", &["deploy/Dockerfile"]);
    let dockerfile = read("deploy/Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    let runtime_at = instructions
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap();
    let runtime = &instructions[runtime_at..];
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets a USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.trim()),
        "runs as root: {user}"
    );
    // The dependency layer lists every workspace member's manifest before any source.
    let first_source = instructions
        .iter()
        .position(|l| l.starts_with("COPY crates crates"))
        .expect("sources copied");
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let manifest = format!("COPY crates/{name}/Cargo.toml");
        let at = instructions
            .iter()
            .position(|l| l.starts_with(&manifest))
            .unwrap_or_else(|| panic!("deploy/Dockerfile does not copy {name}'s manifest"));
        assert!(at < first_source);
    }
    // The runtime image gets the binaries, not the toolchain or the sources.
    let copied: Vec<&&str> = runtime.iter().filter(|l| l.starts_with("COPY ")).collect();
    assert!(
        copied
            .iter()
            .all(|l| l.starts_with("COPY --from=build /src/target/release/")
                || l.starts_with("COPY deploy/pochta.toml")),
        "{copied:?}"
    );
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        "the target dir stays out of the context"
    );
}

/// The compose stack's database set-up, run for real on a private cluster: the init script
/// creates the owner and the service roles (passwords with quotes in them survive), the owner
/// migrates and grants, each service role can then check the schema, and the owner cannot
/// create databases or roles (no superuser powers).
#[tokio::test]
async fn the_init_script_and_the_grants_work_on_a_real_server() {
    let cluster = pochta_testkit::cluster::Cluster::start_new(false).unwrap();
    let out = Command::new("sh")
        .arg("deploy/postgres/init-roles.sh")
        .current_dir(root())
        .env("POSTGRES_USER", "postgres")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", cluster.port.to_string())
        .env("POCHTA_DB_PASSWORD", "it's \"owner\"")
        .env("POCHTA_INGRESS_DB_PASSWORD", "a'b")
        .env("POCHTA_QUEUE_DB_PASSWORD", "c;d")
        .env("POCHTA_POP3_DB_PASSWORD", "e\\f")
        .env("POCHTA_IMAP_DB_PASSWORD", "g$h")
        .output()
        .expect("psql (Debian: postgresql-client) must be installed");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let url = |role: &str| format!("postgres://{role}@127.0.0.1:{}/pochta", cluster.port);
    let options = pochta_store::StoreOptions::default();
    let owner = pochta_store::Store::connect(&url("pochta"), &options)
        .await
        .unwrap();
    owner.migrate().await.unwrap();
    let roles = pochta_store::ServiceRoles::default();
    owner.grant_service_roles(&roles).await.unwrap();
    for role in roles.all() {
        let store = pochta_store::Store::connect(&url(role), &options)
            .await
            .unwrap();
        store.check_schema().await.unwrap();
    }
    assert!(owner.create_database("another").await.is_err());
    assert!(owner.ensure_login_role("intruder").await.is_err());
}

/// The init script's settings take effect on a real server: a new cluster, the script run on
/// its data directory as the entrypoint runs it, a restart; then every setting the file names
/// reads back as the file gives it.
#[test]
fn the_settings_script_configures_a_real_server() {
    let cluster = pochta_testkit::cluster::Cluster::start_new(false).unwrap();
    cluster
        .stop(pochta_testkit::cluster::StopMode::Fast)
        .unwrap();
    let file = root().join("deploy/postgres/pochta.conf");
    let out = Command::new("sh")
        .arg("deploy/postgres/init-settings.sh")
        .current_dir(root())
        .env("PGDATA", cluster.data_dir())
        .env("POCHTA_PG_SETTINGS", &file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.start().unwrap();
    let settings: Vec<(String, String)> = read("deploy/postgres/pochta.conf")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.split_once('=').expect("name = value");
            (name.trim().to_string(), value.trim().to_string())
        })
        .collect();
    assert!(!settings.is_empty());
    for (name, value) in settings {
        let shown = tool(
            "psql",
            &[&cluster.url("postgres"), "-Atc", &format!("SHOW {name}")],
        );
        assert_eq!(shown.trim(), value, "{name}");
    }
}
