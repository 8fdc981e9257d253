//! The deploy files agree with the code: the compose files reference only services, ports,
//! volumes, flags and environment variables that exist; Prometheus scrapes ports the services
//! listen on; Grafana's datasource is the one the dashboard uses; and every metric name in the
//! dashboard and the alert rules is declared in the code and documented in docs/metrics.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_norway::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// YAML with merge keys applied, nested ones too (Compose resolves `<<: *anchor` the same way).
fn yaml(rel: &str) -> Value {
    let mut v: Value = serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    for _ in 0..8 {
        v.apply_merge().unwrap();
    }
    v
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn seq(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(items)) => items.iter().map(s).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// `${NAME}`, `${NAME:-default}`, `${NAME:?message}` → NAME and whether it has a default.
fn variables(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let end = rest[i..].find('}').expect("unclosed ${");
        let inner = &rest[i + 2..i + end];
        let name_end = inner
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(inner.len());
        let has_default = inner[name_end..].starts_with(":-") || inner[name_end..].starts_with('-');
        out.push((inner[..name_end].to_owned(), has_default));
        rest = &rest[i + end + 1..];
    }
    out
}

/// Replaces `${NAME...}` by its default (or by `x` without one), as a deployment would.
fn expand(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').unwrap();
        let inner = &rest[i + 2..i + end];
        match inner.split_once(":-").or_else(|| inner.split_once('-')) {
            Some((_, d)) => out.push_str(d),
            None => out.push('x'),
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Flags and environment variables a binary's clap parser accepts, read from its source.
#[derive(Debug, Default)]
struct Cli {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

fn clap_args(source: &str) -> Cli {
    let mut cli = Cli::default();
    let mut attr: Option<String> = None;
    for line in source.lines() {
        let t = line.trim();
        if let Some(a) = attr.as_mut() {
            if a.ends_with(")]") {
                // The attribute is complete: this line holds the field.
                if t.starts_with("///") || t.starts_with("#[") {
                    if t.starts_with("#[arg(") {
                        *a = t.to_owned();
                    }
                    continue;
                }
                let a = attr.take().unwrap();
                let field = t
                    .trim_start_matches("pub ")
                    .split(':')
                    .next()
                    .unwrap()
                    .trim();
                if a.contains("long") {
                    let long = match a.split_once("long = \"") {
                        Some((_, rest)) => rest.split('"').next().unwrap().to_owned(),
                        None => field.replace('_', "-"),
                    };
                    cli.flags.insert(format!("--{long}"));
                }
                if let Some((_, rest)) = a.split_once("env = \"") {
                    cli.env.insert(rest.split('"').next().unwrap().to_owned());
                }
                continue;
            }
            a.push(' ');
            a.push_str(t);
            continue;
        }
        if t.starts_with("#[arg(") {
            attr = Some(t.to_owned());
        }
    }
    cli
}

/// The source files of a workspace binary: `src/bin/NAME.rs` of a member, or the crate's
/// `src/` for a `[[bin]]` at `src/main.rs`.
fn binary_sources(name: &str) -> Vec<PathBuf> {
    let root: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let members = root["workspace"]["members"].as_array().unwrap();
    for m in members {
        let dir = repo().join(m.as_str().unwrap());
        for candidate in [
            dir.join(format!("src/bin/{name}.rs")),
            dir.join(format!("src/bin/{name}/main.rs")),
        ] {
            if candidate.is_file() {
                return vec![candidate];
            }
        }
        let manifest: toml::Value =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        let bins = manifest.get("bin").and_then(|b| b.as_array());
        for bin in bins.into_iter().flatten() {
            if bin["name"].as_str() == Some(name) {
                let path = dir.join(bin["path"].as_str().unwrap_or("src/main.rs"));
                let src = path.parent().unwrap();
                return std::fs::read_dir(src)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                    .collect();
            }
        }
    }
    panic!("no workspace binary `{name}` (looked for src/bin/{name}.rs and [[bin]] entries)");
}

fn binary_cli(name: &str) -> Cli {
    let text: String = binary_sources(name)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    clap_args(&text)
}

/// One service of a merged compose configuration.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    value: Value,
}

impl Service {
    fn command(&self) -> Vec<String> {
        seq(self.value.get("command"))
            .iter()
            .map(|w| expand(w))
            .collect()
    }
    fn flag(&self, flag: &str) -> Option<String> {
        let words = self.command();
        let eq = format!("{flag}=");
        words.iter().enumerate().find_map(|(i, w)| {
            if w == flag {
                words.get(i + 1).cloned()
            } else {
                w.strip_prefix(&eq).map(str::to_owned)
            }
        })
    }
    fn profiles(&self) -> Vec<String> {
        seq(self.value.get("profiles"))
    }
    fn aliases(&self) -> Vec<String> {
        let mut names = vec![self.name.clone()];
        if let Some(Value::Mapping(nets)) = self.value.get("networks") {
            for net in nets.values() {
                names.extend(seq(net.get("aliases")));
            }
        }
        names
    }
    /// Ports this service listens on, from `--listen=`, `--metrics-listen=` and Prometheus'
    /// `--web.listen-address=`.
    fn listen_ports(&self) -> BTreeSet<u16> {
        ["--listen", "--metrics-listen", "--web.listen-address"]
            .iter()
            .filter_map(|f| self.flag(f))
            .map(|addr| {
                addr.rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: bad listen address {addr}", self.name))
            })
            .collect()
    }
    fn environment(&self) -> BTreeMap<String, String> {
        match self.value.get("environment") {
            Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (s(k), expand(&s(v)))).collect(),
            None => BTreeMap::new(),
            Some(other) => panic!("{}: environment must be a map, found {other:?}", self.name),
        }
    }
    fn gpu_reserved(&self) -> bool {
        self.value
            .get("deploy")
            .and_then(|d| d.get("resources"))
            .and_then(|r| r.get("reservations"))
            .and_then(|r| r.get("devices"))
            .is_some()
    }
}

/// Merges an override the way Compose does for the keys these files use: mappings merge,
/// sequences (command, profiles) are replaced, except `profiles` which Compose unions.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) if k.as_str() == Some("profiles") => {
                        let mut all = seq(Some(existing));
                        all.extend(seq(Some(v)));
                        *existing = Value::Sequence(all.into_iter().map(Value::String).collect());
                    }
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The services a `docker compose -f FILES... up` starts (no profile) plus the parked ones.
fn stack(files: &[&str]) -> (Value, Vec<Service>) {
    let mut doc = yaml(files[0]);
    for f in &files[1..] {
        merge(&mut doc, &yaml(f));
    }
    let services = doc["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| Service {
            name: s(k),
            value: v.clone(),
        })
        .collect();
    (doc, services)
}

const GPU: &[&str] = &["deploy/docker-compose.yml"];
const CPU: &[&str] = &["deploy/docker-compose.yml", "deploy/docker-compose.cpu.yml"];
const PLATTER_BINARIES: &[&str] = &["coordinator", "learner", "reward-server", "rollout-worker"];

#[test]
fn compose_services_use_flags_and_env_their_binaries_accept() {
    let platter = binary_cli("platter");
    for files in [GPU, CPU] {
        let (_, services) = stack(files);
        for svc in &services {
            let cmd = svc.command();
            let Some(binary) = cmd.first() else { continue };
            if !PLATTER_BINARIES.contains(&binary.as_str()) {
                continue;
            }
            let cli = binary_cli(binary);
            for word in cmd.iter().filter(|w| w.starts_with("--")) {
                let flag = word.split('=').next().unwrap();
                assert!(
                    cli.flags.contains(flag),
                    "{files:?} service `{}`: `{binary}` has no flag {flag} (it has {:?})",
                    svc.name,
                    cli.flags
                );
            }
            for var in svc
                .environment()
                .keys()
                .filter(|k| k.starts_with("PLATTER_"))
            {
                assert!(
                    cli.env.contains(var),
                    "{files:?} service `{}`: `{binary}` reads no {var} (it reads {:?})",
                    svc.name,
                    cli.env
                );
            }
            // The healthcheck is `platter health` against a port this service listens on.
            let test = seq(svc.value.get("healthcheck").and_then(|h| h.get("test")));
            assert_eq!(
                test.get(..3),
                Some(&["CMD".to_owned(), "platter".to_owned(), "health".to_owned()][..]),
                "{files:?} service `{}`: healthcheck {test:?}",
                svc.name
            );
            for flag in test.iter().filter(|w| w.starts_with("--")) {
                assert!(
                    platter.flags.contains(flag.as_str()),
                    "`platter health` has no flag {flag}"
                );
            }
            let url = test.iter().find(|w| w.starts_with("http://")).unwrap();
            let port: u16 = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                svc.listen_ports().contains(&port),
                "{files:?} service `{}`: healthcheck port {port} is not one it listens on {:?}",
                svc.name,
                svc.listen_ports()
            );
            if let Some(i) = test.iter().position(|w| w == "--service") {
                let name = &test[i + 1];
                let expected = match binary.as_str() {
                    "coordinator" => "platter.v1.Coordinator",
                    "learner" => "platter.v1.Learner",
                    "reward-server" => "platter.v1.RewardServer",
                    other => panic!("`{other}` serves no gRPC health"),
                };
                assert_eq!(name, expected, "service `{}`", svc.name);
                assert!(
                    read("proto/src/lib.rs").contains(&format!("\"{expected}\"")),
                    "{expected} is not a name in platter_proto::service_names"
                );
            }
        }
    }
}

#[test]
fn compose_references_resolve_to_services_ports_volumes_and_files() {
    for files in [GPU, CPU] {
        let (doc, services) = stack(files);
        let cpu = files.len() > 1;
        // What `up` starts: services without a profile.
        let active: Vec<&Service> = services
            .iter()
            .filter(|s| s.profiles().is_empty())
            .collect();
        let names: BTreeSet<String> = services.iter().map(|s| s.name.clone()).collect();
        let declared_volumes: BTreeSet<String> = doc["volumes"]
            .as_mapping()
            .map(|m| m.keys().map(s).collect())
            .unwrap_or_default();
        // Host and alias → ports, among the services that run together.
        let mut listeners: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
        for svc in &active {
            for alias in svc.aliases() {
                listeners
                    .entry(alias)
                    .or_default()
                    .extend(svc.listen_ports());
            }
        }
        // The registry images' own ports: Prometheus 9090, Grafana 3000.
        listeners
            .entry("prometheus".into())
            .or_default()
            .insert(9090);
        listeners.entry("grafana".into()).or_default().insert(3000);

        for svc in &active {
            if cpu {
                assert!(
                    !svc.gpu_reserved(),
                    "CPU stack: `{}` reserves a GPU but is not parked in a profile",
                    svc.name
                );
            }
            if let Some(Value::Mapping(deps)) = svc.value.get("depends_on") {
                for dep in deps.keys().map(s) {
                    assert!(
                        active.iter().any(|a| a.name == dep),
                        "{files:?}: `{}` depends on `{dep}`, which does not run in this stack",
                        svc.name
                    );
                }
            }
            if let Some(Value::Sequence(deps)) = svc.value.get("depends_on") {
                for dep in deps.iter().map(s) {
                    assert!(
                        names.contains(&dep),
                        "`{}` depends on unknown `{dep}`",
                        svc.name
                    );
                }
            }
            // Every URL a service is given points at a service (or alias) listening there.
            for word in svc.command() {
                let Some(url) = word.split_once("=http://").map(|(_, u)| u) else {
                    continue;
                };
                let (host, port) = url.split_once(':').unwrap();
                let port: u16 = port.trim_end_matches('/').parse().unwrap();
                let ports = listeners.get(host).unwrap_or_else(|| {
                    panic!(
                        "{files:?}: `{}` points at `{host}`, which no service is",
                        svc.name
                    )
                });
                assert!(
                    ports.contains(&port),
                    "{files:?}: `{}` points at {host}:{port}, but `{host}` listens on {ports:?}",
                    svc.name
                );
            }
            for mount in seq(svc.value.get("volumes")) {
                let mount = expand(&mount);
                let source = mount.split(':').next().unwrap();
                if source.starts_with("./") {
                    assert!(
                        repo().join("deploy").join(source).exists(),
                        "`{}` mounts {source}, which is not under deploy/",
                        svc.name
                    );
                } else if !source.starts_with('/') {
                    assert!(
                        declared_volumes.contains(source),
                        "`{}` mounts the volume `{source}`, which is not declared",
                        svc.name
                    );
                }
            }
            for port in seq(svc.value.get("ports")) {
                let target: u16 = expand(&port).rsplit(':').next().unwrap().parse().unwrap();
                assert!(
                    listeners[&svc.name].contains(&target),
                    "`{}` publishes {target}, which it does not listen on",
                    svc.name
                );
            }
        }
        // Prometheus scrapes ports the services listen on.
        let prom = yaml("deploy/prometheus/prometheus.yml");
        for job in prom["scrape_configs"].as_sequence().unwrap() {
            let job_name = s(&job["job_name"]);
            let mut targets = Vec::new();
            for sc in job
                .get("static_configs")
                .and_then(|v| v.as_sequence())
                .into_iter()
                .flatten()
            {
                targets.extend(seq(sc.get("targets")));
            }
            for dns in job
                .get("dns_sd_configs")
                .and_then(|v| v.as_sequence())
                .into_iter()
                .flatten()
            {
                for name in seq(dns.get("names")) {
                    targets.push(format!("{name}:{}", s(&dns["port"])));
                }
            }
            for target in targets {
                let (host, port) = target.split_once(':').unwrap();
                if host == "localhost" {
                    continue;
                }
                let port: u16 = port.parse().unwrap();
                let ports = listeners.get(host).unwrap_or_else(|| {
                    panic!("{files:?}: job `{job_name}` scrapes unknown `{host}`")
                });
                assert!(
                    ports.contains(&port),
                    "{files:?}: job `{job_name}` scrapes {host}:{port}; `{host}` listens on {ports:?}"
                );
            }
        }
    }
}

#[test]
fn compose_variables_are_documented_in_the_env_example() {
    let example = read("deploy/.env.example");
    let documented: BTreeSet<String> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .collect();
    let mut used = BTreeSet::new();
    for file in ["deploy/docker-compose.yml", "deploy/docker-compose.cpu.yml"] {
        for (var, has_default) in variables(&read(file)) {
            if !has_default {
                assert!(
                    documented.contains(&var),
                    "{file} needs ${{{var}}} (no default), but deploy/.env.example does not set it"
                );
            }
            used.insert(var);
        }
    }
    for var in &documented {
        assert!(
            used.contains(var),
            "deploy/.env.example sets {var}, which no compose file uses"
        );
    }
    assert!(
        documented.contains("PLATTER_TOKEN"),
        "the token is the env file's secret"
    );
}

#[test]
fn grafana_provisioning_matches_the_dashboard_and_the_stack() {
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let source = &ds["datasources"][0];
    let uid = s(&source["uid"]);
    assert_eq!(s(&source["url"]), "http://prometheus:9090");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/platter.json")).unwrap();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], uid,
            "panel `{}` uses another datasource",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], uid);
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
            exprs += 1;
        }
    }
    assert!(exprs > 30, "the dashboard has {exprs} queries");
    // The provider's path is where the compose file mounts the dashboards.
    let provider = yaml("deploy/grafana/provisioning/dashboards/platter.yml");
    let path = s(&provider["providers"][0]["options"]["path"]);
    let (_, services) = stack(GPU);
    let grafana = services.iter().find(|s| s.name == "grafana").unwrap();
    let mounts = seq(grafana.value.get("volumes"));
    assert!(
        mounts.contains(&format!("./grafana/dashboards:{path}:ro")),
        "grafana mounts {mounts:?}, the provider reads {path}"
    );
}

/// `platter_*` names in PromQL expressions, with summary suffixes mapped to the metric.
fn metric_names(expr: &str, declared: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("platter_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if boundary {
            let name = &expr[start..end];
            let base = ["_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|b| declared.contains(*b) && !declared.contains(name))
                .unwrap_or(name);
            out.insert(base.to_owned());
        }
        i = end;
    }
    out
}

/// Every `"platter_..."` string literal in the crates' sources.
fn declared_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![repo()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !["target", ".git", "fuzz", "tests", "node_modules"].contains(&name.as_str()) {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") && path.components().any(|c| c.as_os_str() == "src") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("\"platter_").skip(1) {
                    if let Some(end) = piece.find('"') {
                        let lit = &piece[..end];
                        if lit
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                        {
                            out.insert(format!("platter_{lit}"));
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn dashboard_and_alert_metrics_are_declared_and_documented() {
    let declared = declared_metrics();
    assert!(
        declared.contains("platter_steps_total"),
        "found {declared:?}"
    );
    let documented = read("docs/metrics.md");
    let mut exprs = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/platter.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(("dashboard", target["expr"].as_str().unwrap().to_owned()));
        }
    }
    let rules = yaml("deploy/prometheus/alerts.yml");
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(("alerts.yml", s(&rule["expr"])));
        }
    }
    let mut used = BTreeSet::new();
    for (file, expr) in &exprs {
        for name in metric_names(expr, &declared) {
            assert!(
                declared.contains(&name),
                "{file} uses {name}, which no crate declares: {expr}"
            );
            assert!(
                documented.contains(&format!("`{name}`")),
                "{file} uses {name}, which docs/metrics.md does not document"
            );
            used.insert(name);
        }
    }
    // The summary suffixes resolve to the declared histogram.
    assert!(used.contains("platter_reward_stage_seconds"));
    assert!(
        !used
            .iter()
            .any(|n| n.ends_with("_sum") || n.ends_with("_count"))
    );
}

#[test]
fn metric_name_extraction_handles_suffixes_and_boundaries() {
    let declared: BTreeSet<String> = ["platter_step_stage_seconds", "platter_steps_total"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let names = metric_names(
        "rate(platter_step_stage_seconds_sum[5m]) / rate(platter_steps_total[5m]) + x_platter_y",
        &declared,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["platter_step_stage_seconds", "platter_steps_total"]
    );
    let cli = clap_args(
        "    /// Doc.\n    #[arg(long, env = \"PLATTER_X\", default_value = \"a\")]\n    pub some_flag: String,\n    #[arg(\n        long = \"other\",\n    )]\n    b: u32,\n    #[arg(short)]\n    c: bool,\n",
    );
    assert_eq!(
        cli.flags.into_iter().collect::<Vec<_>>(),
        ["--other", "--some-flag"]
    );
    assert_eq!(cli.env.into_iter().collect::<Vec<_>>(), ["PLATTER_X"]);
}
