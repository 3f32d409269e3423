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
