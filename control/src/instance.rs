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
/// then `#HOST:PID:STARTED` (when the process first asked, in nanoseconds since the epoch). No
/// two processes share an owner, not even two under one name and one process number (in
/// containers, each process 1, with one host name), so none ever holds another's claims; a
/// rerun tells its killed predecessor's claims (same name, same host, process gone) from a
/// live namesake's ([`left_by_a_dead_namesake`]).
#[must_use]
pub fn claim_owner(name: &str) -> String {
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    });
    format!("{name}#{}:{}:{started}", host_name(), std::process::id())
}

/// The instance name in a claim's owner (the whole owner when it has no process part).
#[must_use]
pub fn owner_name(owner: &str) -> &str {
    owner.rsplit_once('#').map_or(owner, |(name, _)| name)
}

/// Whether `owner`'s claims were left by a process that bore the same instance name as `own`
/// (a [`claim_owner`]) on this host and is gone: its chunks may be taken back at once rather
/// than after their lease. An owner without a process part (written by an earlier version)
/// under the same name counts as left. One on another host, one whose process still runs, one
/// whose number this process has (a container restarted, or a twin in another process
/// namespace: which, this process cannot tell), and any where `/proc` is not there to ask, do
/// not: their chunks are taken over once their lease runs out.
#[must_use]
pub fn left_by_a_dead_namesake(owner: &str, own: &str) -> bool {
    if owner == own || owner_name(owner) != owner_name(own) {
        return false;
    }
    let Some((_, process)) = owner.rsplit_once('#') else {
        return true;
    };
    let mut parts = process.rsplitn(3, ':');
    let (Some(_started), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    host == host_name()
        && std::path::Path::new("/proc/self").exists()
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
        assert!(owner.contains(&format!(":{}:", std::process::id())));
        assert_eq!(
            owner,
            claim_owner("host-a:backfill"),
            "one owner per process"
        );
        assert_eq!(owner_name("legacy"), "legacy");
    }

    #[test]
    fn only_a_gone_namesake_on_this_host_has_left_its_claims() {
        let own = claim_owner("b");
        let host = host_name();
        // Beyond the kernel's largest process number: never a running process.
        let dead = format!("b#{host}:{}:1", u32::MAX);
        assert!(left_by_a_dead_namesake(&dead, &own));
        assert!(
            left_by_a_dead_namesake("b", &own),
            "an owner an earlier version wrote"
        );
        assert!(!left_by_a_dead_namesake(&own, &own), "its own claims");
        let same_number = format!("b#{host}:{}:1", std::process::id());
        assert!(
            !left_by_a_dead_namesake(&same_number, &own),
            "a process with this one's number: restarted, or a twin elsewhere"
        );
        let live = format!("b#{host}:1:1");
        assert!(
            !left_by_a_dead_namesake(&live, &own),
            "a namesake still running"
        );
        let elsewhere = format!("b#{host}-other:{}:1", u32::MAX);
        assert!(!left_by_a_dead_namesake(&elsewhere, &own), "another host's");
        let other = format!("a#{host}:{}:1", u32::MAX);
        assert!(!left_by_a_dead_namesake(&other, &own), "another name's");
        assert!(!left_by_a_dead_namesake("b#nonsense", &own));
    }
}
