//! Can the Redis holding the outbox keep it? During dual-write the outbox holds every event
//! the target has not committed yet, and it grows while the target is down. A Redis without
//! persistence loses it (and the dual-write flag) on restart; one near `maxmemory` refuses
//! writes or, with an `allkeys-*` policy, evicts the outbox. `status`, `prepare` and
//! `dual-write start` print [`OutboxDurability::warnings`].
//!
//! Evicting is worse than a warning: an `allkeys-*` policy with a `maxmemory` evicts the
//! outbox (and its consumer group), the sorted set and the flag when Redis fills up, so events
//! ingest answered 202 for end up in neither system. [`OutboxDurability::evicting`] refuses
//! `dual-write start` (unless forced, audited) and makes `status` failing during dual-write.
//! `volatile-*` policies evict only keys with an expiry — none of those three — and then
//! refuse writes like `noeviction` (ingest answers 503, nothing is lost); they are not
//! evicting here (they may evict the resend-window keys of ingest, see README).

use crate::connect::RedisConn;
use serde::Serialize;

/// Above this share of `maxmemory` the headroom for an outage is too small.
pub const MEMORY_WARN_RATIO: f64 = 0.8;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OutboxDurability {
    /// Append-only file on.
    pub aof: Option<bool>,
    /// RDB snapshot rules (`CONFIG GET save`); empty = no snapshots; `None` when the server
    /// does not allow `CONFIG` (managed services often rename it).
    pub rdb_save: Option<String>,
    pub used_memory: Option<u64>,
    /// 0 = no limit.
    pub maxmemory: Option<u64>,
    pub maxmemory_policy: Option<String>,
    /// `INFO stats` `evicted_keys`: keys evicted since the server started.
    pub evicted_keys: Option<u64>,
    /// Redis evicts keys without an expiry when full: an `allkeys-*` policy with a `maxmemory`.
    pub evicting: bool,
    pub warnings: Vec<String>,
    /// Each master's own figures (one on a single server; on a Redis Cluster every master,
    /// and the fields above are the weakest of them: AOF only when all have it, the fullest
    /// master's memory, evictions summed, evicting when any does).
    #[serde(default)]
    pub masters: Vec<MasterDurability>,
}

/// One master's persistence and memory.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MasterDurability {
    pub address: String,
    pub aof: Option<bool>,
    pub rdb_save: Option<String>,
    pub used_memory: Option<u64>,
    pub maxmemory: Option<u64>,
    pub maxmemory_policy: Option<String>,
    pub evicted_keys: Option<u64>,
    /// `INFO server` `run_id`: changes when the process behind the address changes.
    pub run_id: Option<String>,
}

impl MasterDurability {
    fn memory_ratio(&self) -> f64 {
        match (self.used_memory, self.maxmemory.filter(|m| *m > 0)) {
            (Some(used), Some(max)) => used as f64 / max as f64,
            _ => 0.0,
        }
    }
}

/// The figures of several masters as one: the weakest of each. Pure.
pub fn combine(masters: Vec<MasterDurability>) -> OutboxDurability {
    let fullest = masters.iter().max_by(|a, b| a.memory_ratio().total_cmp(&b.memory_ratio()).then(a.used_memory.cmp(&b.used_memory)));
    let aof = masters.iter().map(|m| m.aof).try_fold(true, |all, aof| aof.map(|a| all && a));
    let rdb_save = masters.iter().map(|m| m.rdb_save.clone()).try_fold(None::<String>, |weakest, rules| {
        rules.map(|r| match weakest {
            Some(w) if w.trim().is_empty() => Some(w),
            _ => Some(r),
        })
    });
    let evicting_one = masters.iter().find(|m| evicts_any_key(m.maxmemory_policy.as_deref(), m.maxmemory));
    let policy_of = evicting_one.or(fullest);
    let evicted: Option<u64> = masters.iter().map(|m| m.evicted_keys).sum();
    let mut facts = OutboxDurability {
        aof: if masters.is_empty() { None } else { aof },
        rdb_save: rdb_save.flatten(),
        used_memory: fullest.and_then(|m| m.used_memory),
        maxmemory: fullest.and_then(|m| m.maxmemory),
        maxmemory_policy: policy_of.and_then(|m| m.maxmemory_policy.clone()),
        evicted_keys: evicted,
        evicting: evicting_one.is_some(),
        warnings: vec![],
        masters: vec![],
    };
    facts.warnings = warnings(&facts);
    if masters.len() > 1 {
        if let Some(m) = fullest.filter(|m| m.memory_ratio() > MEMORY_WARN_RATIO) {
            facts.warnings.push(format!("the fullest Redis Cluster master is {}", m.address));
        }
    }
    facts.masters = masters;
    facts
}

/// True for a policy that evicts keys without an expiry (the outbox, the sorted set, the
/// flag) once `maxmemory` (non-zero) is reached. Pure.
pub fn evicts_any_key(policy: Option<&str>, maxmemory: Option<u64>) -> bool {
    policy.is_some_and(|p| p.starts_with("allkeys")) && maxmemory.is_some_and(|m| m > 0)
}

impl OutboxDurability {
    /// Why Redis refuses writes, when it is at `maxmemory` and will not evict: every ingest
    /// batch gets OOM (503, nothing written) until memory is freed or the limit raised.
    pub fn refusing_writes_reason(&self) -> Option<String> {
        let (used, max) = (self.used_memory?, self.maxmemory.filter(|m| *m > 0)?);
        (used >= max && !self.evicting).then(|| {
            format!(
                "Redis is at maxmemory ({used} of {max} bytes, maxmemory-policy {}): it refuses writes, so ingest answers 503 to every batch; \
                 raise maxmemory or free memory (the outbox shrinks as the relay catches up)",
                self.maxmemory_policy.as_deref().unwrap_or("?")
            )
        })
    }

    /// Why dual-write must not rely on this Redis, when it evicts.
    pub fn evicting_reason(&self) -> Option<String> {
        self.evicting.then(|| {
            format!(
                "Redis evicts any key when full (maxmemory-policy {}, maxmemory {} bytes): it can evict the outbox, its consumer group, \
                 the events and the dual-write flag, and events accepted with 202 are then in neither system; \
                 set `maxmemory-policy noeviction` (or a volatile-* policy) on the Redis holding the outbox",
                self.maxmemory_policy.as_deref().unwrap_or_default(),
                self.maxmemory.unwrap_or_default()
            )
        })
    }
}

/// Reads the persistence and memory settings of every master (`INFO`, and `CONFIG GET save`
/// when allowed).
pub async fn inspect(redis: &mut RedisConn) -> redis::RedisResult<OutboxDurability> {
    let infos = redis.per_master(&redis::cmd("INFO")).await?;
    let saves = redis.per_master(redis::cmd("CONFIG").arg("GET").arg("save")).await.unwrap_or_default();
    let mut masters = Vec::with_capacity(infos.len());
    for (address, info) in infos {
        let info: redis::InfoDict = redis::from_redis_value(&info)?;
        let save = saves.iter().find(|(a, _)| *a == address).and_then(|(_, v)| redis::from_redis_value::<Vec<String>>(v).ok());
        masters.push(MasterDurability {
            aof: info.get::<i64>("aof_enabled").map(|v| v == 1),
            rdb_save: save.and_then(|pair| pair.get(1).cloned()),
            used_memory: info.get("used_memory"),
            maxmemory: info.get("maxmemory"),
            maxmemory_policy: info.get("maxmemory_policy"),
            evicted_keys: info.get("evicted_keys"),
            run_id: info.get("run_id"),
            address,
        });
    }
    Ok(combine(masters))
}

/// What is risky about these settings, in words an operator can act on. Pure.
pub fn warnings(facts: &OutboxDurability) -> Vec<String> {
    let mut out = Vec::new();
    let rdb_off = facts.rdb_save.as_deref().map(|s| s.trim().is_empty());
    match (facts.aof, rdb_off) {
        (Some(false), Some(true)) => out.push(
            "Redis has no persistence (no AOF, no RDB snapshots): a restart loses the outbox (events not yet in the target) and the dual-write flag; \
             turn on `appendonly yes` (runbooks/02-dual-write-backfill.md)"
                .into(),
        ),
        (Some(false), None) => out.push(
            "Redis has no AOF, and whether it takes RDB snapshots is unknown (CONFIG is not allowed): make sure the Redis holding the outbox persists it"
                .into(),
        ),
        _ => {}
    }
    if let (Some(used), Some(max)) = (facts.used_memory, facts.maxmemory.filter(|m| *m > 0)) {
        let ratio = used as f64 / max as f64;
        if ratio > MEMORY_WARN_RATIO {
            out.push(format!(
                "Redis uses {:.0}% of maxmemory ({} of {}): the outbox grows while the target is down and may not fit; \
                 raise maxmemory (runbooks/02-dual-write-backfill.md has the headroom formula)",
                ratio * 100.0,
                crate::human::bytes(used),
                crate::human::bytes(max)
            ));
        }
    }
    out.extend(facts.evicting_reason());
    if let Some(evicted) = facts.evicted_keys.filter(|n| *n > 0) {
        out.push(format!(
            "Redis has evicted {evicted} key(s) since it started (INFO stats evicted_keys): events evicted before they were copied are in neither system \
             and no copy can read them; `tsmigrate status` lists the windows recorded as possible loss during dual-write"
        ));
    }
    out
}

/// Like [`inspect`], but a server that refuses `INFO` (ACLs) gives a warning, not an error.
pub async fn inspect_or_warn(redis: &mut RedisConn) -> OutboxDurability {
    inspect(redis).await.unwrap_or_else(|e| OutboxDurability { warnings: vec![cannot_check(&e.to_string())], ..Default::default() })
}

fn cannot_check(error: &str) -> String {
    format!("could not check whether Redis persists the outbox: {}", error.lines().next().unwrap_or_default())
}

/// The warnings for the Redis of `ctx`, or one saying it could not be checked.
pub async fn warnings_for(ctx: &crate::context::Context) -> Vec<String> {
    let checked = async {
        let mut redis = ctx.redis().await?;
        anyhow::Ok(inspect(&mut redis).await?)
    };
    match checked.await {
        Ok(facts) => facts.warnings,
        Err(e) => vec![cannot_check(&e.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(aof: bool, save: &str, used: u64, max: u64, policy: &str) -> OutboxDurability {
        OutboxDurability {
            aof: Some(aof),
            rdb_save: Some(save.into()),
            used_memory: Some(used),
            maxmemory: Some(max),
            maxmemory_policy: Some(policy.into()),
            evicted_keys: Some(0),
            evicting: evicts_any_key(Some(policy), Some(max)),
            warnings: vec![],
            masters: vec![],
        }
    }

    fn master(address: &str, aof: bool, save: &str, used: u64, max: u64, policy: &str) -> MasterDurability {
        MasterDurability {
            address: address.into(),
            aof: Some(aof),
            rdb_save: Some(save.into()),
            used_memory: Some(used),
            maxmemory: Some(max),
            maxmemory_policy: Some(policy.into()),
            evicted_keys: Some(2),
            run_id: None,
        }
    }

    #[test]
    fn a_cluster_is_as_durable_as_its_weakest_master() {
        let all = combine(vec![
            master("a:1", true, "3600 1", 10, 100, "noeviction"),
            master("b:1", false, "", 90, 100, "noeviction"),
            master("c:1", true, "", 50, 0, "allkeys-lru"),
        ]);
        assert_eq!(all.aof, Some(false), "AOF only when every master has it");
        assert_eq!(all.rdb_save.as_deref(), Some(""), "no snapshots on one master");
        assert_eq!((all.used_memory, all.maxmemory), (Some(90), Some(100)), "the fullest master's memory");
        assert_eq!(all.evicted_keys, Some(6), "evictions summed");
        assert!(!all.evicting, "allkeys without maxmemory does not evict");
        assert_eq!(all.masters.len(), 3);
        assert!(all.warnings.iter().any(|w| w.contains("b:1")), "{:?}", all.warnings);
        let one = combine(vec![master("a:1", true, "", 10, 0, "noeviction")]);
        assert_eq!((one.aof, one.masters.len()), (Some(true), 1));
    }

    #[test]
    fn no_persistence_and_little_headroom_are_reported() {
        assert!(warnings(&facts(true, "", 10, 0, "noeviction")).is_empty(), "AOF alone is persistence");
        assert!(warnings(&facts(false, "3600 1", 10, 0, "noeviction")).is_empty(), "RDB alone is persistence");
        let none = warnings(&facts(false, "", 10, 0, "noeviction"));
        assert_eq!(none.len(), 1);
        assert!(none[0].contains("no persistence"), "{none:?}");
        assert!(warnings(&facts(true, "", 79, 100, "noeviction")).is_empty());
        let full = warnings(&facts(true, "", 81, 100, "noeviction"));
        assert!(full[0].contains("81% of maxmemory"), "{full:?}");
        let evicting = warnings(&facts(true, "", 1, 100, "allkeys-lru"));
        assert!(evicting[0].contains("evict"), "{evicting:?}");
        assert!(facts(true, "", 1, 100, "allkeys-lfu").evicting);
        assert!(!facts(true, "", 1, 0, "allkeys-lru").evicting, "no maxmemory: never full, never evicts");
        assert!(!facts(true, "", 1, 100, "volatile-lru").evicting, "volatile-* evicts only keys with an expiry");
        assert!(facts(true, "", 100, 100, "noeviction").refusing_writes_reason().unwrap().contains("refuses writes"));
        assert_eq!(facts(true, "", 99, 100, "noeviction").refusing_writes_reason(), None);
        assert_eq!(facts(true, "", 100, 0, "noeviction").refusing_writes_reason(), None, "no limit");
        let evicted = warnings(&OutboxDurability { evicted_keys: Some(7), ..facts(true, "", 1, 0, "noeviction") });
        assert!(evicted[0].contains("evicted 7 key(s)"), "{evicted:?}");
        let unknown = warnings(&OutboxDurability { rdb_save: None, ..facts(false, "", 1, 0, "noeviction") });
        assert!(unknown[0].contains("unknown"), "{unknown:?}");
    }
}
