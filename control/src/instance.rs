//! How a process names itself in records other instances read (claims, counts).

/// `HOST:PID`: unique among the processes sharing a control store.
#[must_use]
pub fn instance_name() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// The machine's name (`localhost` when it cannot be read): where a process's local files
/// are, for a person reading a record.
#[must_use]
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What a process writes as the owner of the backfill chunks it claims: the instance `name`,
/// then `#HOST:PID`. Two processes started under one name never hold each other's claims, and
/// a rerun tells its killed predecessor's claims (same name, same host, process gone) from a
/// live namesake's ([`left_by_a_dead_namesake`]).
#[must_use]
pub fn claim_owner(name: &str) -> String {
    format!("{name}#{}:{}", host_name(), std::process::id())
}

/// The instance name in a claim's owner (the whole owner when it has no process part).
#[must_use]
pub fn owner_name(owner: &str) -> &str {
    owner.rsplit_once('#').map_or(owner, |(name, _)| name)
}

/// Whether `owner`'s claims were left by a process that bore the same instance name as `own`
/// (a [`claim_owner`]) on this host and is gone: its chunks may be taken back at once rather
/// than after their lease. Asked when a process begins a table, holding none of its chunks
/// yet: an owner equal to `own` was a process of this host whose number this one now has
/// (a container restarted with the same host name, its process 1 again), gone. An owner
/// without a process part (written by an earlier version) under the same name counts as left;
/// one on another host, or whose process still runs (or whose number another process took),
/// does not.
#[must_use]
pub fn left_by_a_dead_namesake(owner: &str, own: &str) -> bool {
    if owner == own {
        return true;
    }
    if owner_name(owner) != owner_name(own) {
        return false;
    }
    let Some((_, process)) = owner.rsplit_once('#') else {
        return true;
    };
    let Some((host, pid)) = process.rsplit_once(':') else {
        return false;
    };
    host == host_name()
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_owner_names_its_instance_and_process() {
        let owner = claim_owner("host-a:backfill");
        assert_eq!(owner_name(&owner), "host-a:backfill");
        assert!(owner.ends_with(&format!(":{}", std::process::id())));
        assert_eq!(owner_name("legacy"), "legacy");
    }

    #[test]
    fn only_a_gone_namesake_on_this_host_has_left_its_claims() {
        let own = claim_owner("b");
        let host = host_name();
        // Beyond the kernel's largest process number: never a running process.
        let dead = format!("b#{host}:{}", u32::MAX);
        assert!(left_by_a_dead_namesake(&dead, &own));
        assert!(
            left_by_a_dead_namesake("b", &own),
            "an owner an earlier version wrote"
        );
        assert!(
            left_by_a_dead_namesake(&own, &own),
            "a predecessor whose process number this one has"
        );
        let live = format!("b#{host}:1");
        assert!(
            !left_by_a_dead_namesake(&live, &own),
            "a namesake still running"
        );
        let elsewhere = format!("b#{host}-other:{}", u32::MAX);
        assert!(!left_by_a_dead_namesake(&elsewhere, &own), "another host's");
        let other = format!("a#{host}:{}", u32::MAX);
        assert!(!left_by_a_dead_namesake(&other, &own), "another name's");
        assert!(!left_by_a_dead_namesake("b#nonsense", &own));
    }
}
