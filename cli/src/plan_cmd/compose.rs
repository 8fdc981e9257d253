//! The GPU placement of a compose file: which Platter service reserves which GPUs, and the
//! settings in its command or environment that change its memory.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Serialize;

use super::budget::{Dtype, Sam2Size};

/// What a GPU-holding service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    LearnerRank,
    RolloutWorker,
    RewardServer,
}

/// A compose service that reserves GPUs, with the settings that change its budget.
#[derive(Debug, Clone)]
pub(super) struct GpuService {
    pub name: String,
    pub role: Role,
    pub gpus: Vec<usize>,
    pub concurrency: Option<u64>,
    pub sam2: Option<Option<Sam2Size>>,
    pub dtype: Option<Dtype>,
}

/// `${NAME:-default}`, `${NAME-default}` and `${NAME}` with this process's environment, as
/// Compose substitutes them.
fn substitute(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &rest[start + 2..start + end];
        let (name, default, empty_is_unset) = if let Some((n, d)) = inner.split_once(":-") {
            (n, d, true)
        } else if let Some((n, d)) = inner.split_once('-') {
            (n, d, false)
        } else if let Some((n, _)) = inner.split_once(":?") {
            (n, "", true)
        } else {
            (inner, "", false)
        };
        let value = std::env::var(name)
            .ok()
            .filter(|v| !(empty_is_unset && v.is_empty()));
        out.push_str(value.as_deref().unwrap_or(default));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

fn yaml_str(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(substitute(s)),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        serde_norway::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The service's command as words (`command:` as a list or a string).
fn command_words(service: &serde_norway::Value) -> Vec<String> {
    match service.get("command") {
        Some(serde_norway::Value::Sequence(items)) => items.iter().filter_map(yaml_str).collect(),
        Some(serde_norway::Value::String(s)) => substitute(s)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The service's environment (`environment:` as a map or a list of `K=V`).
fn environment(service: &serde_norway::Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match service.get("environment") {
        Some(serde_norway::Value::Mapping(m)) => {
            for (k, v) in m {
                if let (Some(k), Some(v)) = (yaml_str(k), yaml_str(v)) {
                    env.insert(k, v);
                }
            }
        }
        Some(serde_norway::Value::Sequence(items)) => {
            for item in items.iter().filter_map(yaml_str) {
                if let Some((k, v)) = item.split_once('=') {
                    env.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        _ => {}
    }
    env
}

/// A flag's value in a command (`--flag VALUE` or `--flag=VALUE`).
fn flag_value(words: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    words.iter().enumerate().find_map(|(i, w)| {
        if w == flag {
            words.get(i + 1).cloned()
        } else {
            w.strip_prefix(&eq).map(str::to_owned)
        }
    })
}

/// Parses a compose file with its YAML merge keys (`<<: *anchor`) applied, nested ones too.
pub fn parse_compose(text: &str) -> anyhow::Result<serde_norway::Value> {
    let mut doc: serde_norway::Value = serde_norway::from_str(text)?;
    // One pass merges one level: a merged anchor may itself hold a `<<` key.
    for _ in 0..8 {
        doc.apply_merge()?;
        if !has_merge_key(&doc) {
            return Ok(doc);
        }
    }
    bail!("merge keys nested more than 8 deep")
}

fn has_merge_key(v: &serde_norway::Value) -> bool {
    match v {
        serde_norway::Value::Mapping(m) => m.contains_key("<<") || m.values().any(has_merge_key),
        serde_norway::Value::Sequence(items) => items.iter().any(has_merge_key),
        serde_norway::Value::Tagged(t) => has_merge_key(&t.value),
        _ => false,
    }
}

/// Reads the GPU services of a compose file: their role, GPUs and memory-relevant settings.
pub(super) fn compose_services(path: &Path, gpus: usize) -> anyhow::Result<Vec<GpuService>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading compose file {}", path.display()))?;
    let doc =
        parse_compose(&text).with_context(|| format!("parsing compose file {}", path.display()))?;
    let Some(services) = doc.get("services").and_then(|s| s.as_mapping()) else {
        bail!("compose file {}: no `services` map", path.display());
    };
    let mut out = Vec::new();
    for (name, service) in services {
        let name = yaml_str(name).unwrap_or_default();
        let devices = service
            .get("deploy")
            .and_then(|d| d.get("resources"))
            .and_then(|r| r.get("reservations"))
            .and_then(|r| r.get("devices"))
            .and_then(|d| d.as_sequence());
        let Some(devices) = devices else { continue };
        let mut ids = Vec::new();
        for device in devices {
            if let Some(list) = device.get("device_ids").and_then(|d| d.as_sequence()) {
                for id in list {
                    let id = yaml_str(id).unwrap_or_default();
                    let n: usize = id.parse().with_context(|| {
                        format!("compose service `{name}`: device id `{id}` is not a GPU index")
                    })?;
                    ids.push(n);
                }
            } else {
                let count = device.get("count").and_then(yaml_str);
                let n = match count.as_deref() {
                    None | Some("all") => gpus,
                    Some(c) => c
                        .parse()
                        .with_context(|| format!("compose service `{name}`: device count `{c}`"))?,
                };
                ids.extend(0..n);
            }
        }
        if let Some(bad) = ids.iter().find(|&&g| g >= gpus) {
            bail!("compose service `{name}` reserves GPU {bad}, but the node has {gpus} (--gpus)");
        }
        let words = command_words(service);
        let env = environment(service);
        let binary = words
            .first()
            .map(|w| w.rsplit('/').next().unwrap_or(w).to_owned())
            .unwrap_or_else(|| name.clone());
        let role = if binary.starts_with("learner") {
            Role::LearnerRank
        } else if binary.starts_with("rollout-worker") {
            Role::RolloutWorker
        } else if binary.starts_with("reward-server") {
            Role::RewardServer
        } else {
            bail!(
                "compose service `{name}` reserves GPUs but runs `{binary}`, which the plan does not know"
            );
        };
        let setting =
            |flag: &str, var: &str| flag_value(&words, flag).or_else(|| env.get(var).cloned());
        let concurrency = match role {
            Role::RolloutWorker => {
                setting("--max-concurrent-groups", "PLATTER_ROLLOUT_CONCURRENCY")
            }
            Role::RewardServer => setting("--max-concurrent-groups", "PLATTER_REWARD_CONCURRENCY"),
            Role::LearnerRank => None,
        }
        .map(|c| {
            c.parse::<u64>()
                .with_context(|| format!("compose service `{name}`: concurrency `{c}`"))
        })
        .transpose()?;
        let sam2 = if role == Role::RewardServer {
            match setting("--segmenter", "PLATTER_SEGMENTER").as_deref() {
                Some("box") => Some(None),
                _ => setting("--sam2-checkpoint", "PLATTER_SAM2_CHECKPOINT")
                    .map(|c| Sam2Size::from_checkpoint(&c)),
            }
        } else {
            None
        };
        let dtype = setting("--dtype", "PLATTER_POLICY_DTYPE").and_then(|d| Dtype::parse(&d));
        out.push(GpuService {
            name,
            role,
            gpus: ids,
            concurrency,
            sam2,
            dtype,
        });
    }
    Ok(out)
}

/// The layout of deploy/docker-compose.yml for `gpus` GPUs and `ranks` learner ranks: rank r
/// on GPU r, a rollout worker on every GPU but the last, the reward server on the last.
pub(super) fn default_services(gpus: usize, ranks: usize) -> Vec<GpuService> {
    let mut out = vec![GpuService {
        name: "learner".into(),
        role: Role::LearnerRank,
        gpus: (0..ranks.min(gpus)).collect(),
        concurrency: None,
        sam2: None,
        dtype: None,
    }];
    // The last GPU holds SAM2 instead of a worker (on one GPU, both).
    for g in 0..gpus.saturating_sub(1).max(1) {
        out.push(GpuService {
            name: format!("rollout-worker-{g}"),
            role: Role::RolloutWorker,
            gpus: vec![g],
            concurrency: None,
            sam2: None,
            dtype: None,
        });
    }
    out.push(GpuService {
        name: "reward-server".into(),
        role: Role::RewardServer,
        gpus: vec![gpus.saturating_sub(1)],
        concurrency: None,
        sam2: None,
        dtype: None,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_variables_take_their_defaults() {
        assert_eq!(
            substitute("${PLATTER_PLAN_TEST_UNSET:-4}"),
            "4",
            "unset variable with a default"
        );
        assert_eq!(substitute("a${PLATTER_PLAN_TEST_UNSET}b"), "ab");
        assert_eq!(substitute("/m/${PLATTER_PLAN_TEST_UNSET-x}/y"), "/m/x/y");
    }

    #[test]
    fn flags_are_read_in_both_forms() {
        let words: Vec<String> = [
            "rollout-worker",
            "--max-concurrent-groups",
            "3",
            "--dtype=f32",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            flag_value(&words, "--max-concurrent-groups").as_deref(),
            Some("3")
        );
        assert_eq!(flag_value(&words, "--dtype").as_deref(), Some("f32"));
        assert_eq!(flag_value(&words, "--device"), None);
    }
}
