//! The default service ID: unique per replica on one host, stable across restarts of the same container.
//!
//! Owns: the default ID (`NAME-HOSTNAME[-CONTAINER][-PORT]`) and finding the container's id in what the
//! kernel shows the container about itself. Does not own: an ID the user gives (`--service-id`, the service
//! file's `id`), which is used as is, nor the address (`address`).
//!
//! Why each part: with `--network host` every replica has the host's hostname, so the hostname alone makes
//! replicas share one ID and stopping one removes the other's entry. The container id tells replicas apart
//! on one host and survives `docker restart`; Docker's default hostname already is its first 12 characters,
//! so it is added only when the hostname is something else. The port tells apart replicas whose container id
//! cannot be seen (another runtime, a private cgroup namespace without Docker's bind mounts) and is stable
//! too. The address is deliberately not part of it: a restarted container may get another one.

use std::io::Read;

/// What is read of /proc at most: mountinfo of a container is a few KiB; this bounds a pathological one.
const PROC_READ_CAP: u64 = 1 << 20;

/// `NAME-HOSTNAME`, then `-` and the first 12 characters of the container id when the hostname does not
/// already start with them, then `-PORT` when the service has a port.
pub fn default_service_id(
    name: &str,
    hostname: &str,
    container_id: Option<&str>,
    port: Option<u16>,
) -> String {
    let mut id = format!("{name}-{hostname}");
    if let Some(short) = container_id.and_then(|c| c.get(..12)) {
        if !hostname.starts_with(short) {
            id.push('-');
            id.push_str(short);
        }
    }
    if let Some(p) = port {
        id.push('-');
        id.push_str(&p.to_string());
    }
    id
}

/// This container's id (64 hex digits), if the runtime lets it be seen: first the source directory of the
/// `/etc/hostname`, `/etc/hosts` or `/etc/resolv.conf` bind mounts (Docker and Podman mount them from the
/// container's own directory, whatever the cgroup setup), then a cgroup path naming it (cgroup v1, or v2
/// with the host's cgroup namespace: `/docker/ID`, `/system.slice/docker-ID.scope`).
pub fn container_id() -> Option<String> {
    read_capped("/proc/self/mountinfo")
        .and_then(|t| id_in_mountinfo(&t))
        .or_else(|| read_capped("/proc/self/cgroup").and_then(|t| id_in_cgroup(&t)))
}

fn read_capped(path: &str) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(PROC_READ_CAP)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// mountinfo fields: id, parent, major:minor, root (the source path inside its filesystem), mount point, …
fn id_in_mountinfo(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut f = line.split(' ');
        let root = f.nth(3)?;
        let point = f.next()?;
        matches!(point, "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf")
            .then(|| hex64_segment(root))
            .flatten()
    })
}

/// /proc/self/cgroup lines: `hierarchy:controllers:path`.
fn id_in_cgroup(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find_map(hex64_segment)
}

/// The first path segment that is a container id, allowing systemd's `docker-ID.scope` wrapping.
fn hex64_segment(path: &str) -> Option<String> {
    path.split('/').find_map(|seg| {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        let seg = seg.rsplit('-').next().unwrap_or(seg);
        (seg.len() == 64 && seg.bytes().all(|b| b.is_ascii_hexdigit())).then(|| seg.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f4e8a2b9c1d0e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

    #[test]
    fn replicas_on_one_host_get_different_ids_that_survive_a_restart() {
        // --network host: same hostname, different containers and ports.
        let a = default_service_id("web", "node7", Some(CID), Some(8001));
        let b = default_service_id("web", "node7", Some(&CID.replace('3', "4")), Some(8002));
        assert_eq!(a, "web-node7-3f4e8a2b9c1d-8001");
        assert_ne!(a, b);
        // Same container again (docker restart): same inputs, same id.
        assert_eq!(a, default_service_id("web", "node7", Some(CID), Some(8001)));
        // Docker's default hostname is the short container id: not repeated.
        assert_eq!(
            default_service_id("web", "3f4e8a2b9c1d", Some(CID), None),
            "web-3f4e8a2b9c1d"
        );
        // No container id visible: the port still tells replicas apart.
        assert_ne!(
            default_service_id("web", "node7", None, Some(8001)),
            default_service_id("web", "node7", None, Some(8002))
        );
    }

    #[test]
    fn container_id_is_found_in_docker_mountinfo_and_cgroup_paths() {
        let mountinfo = format!(
            "1010 980 0:52 / / rw,relatime master:1 - overlay overlay rw\n\
             1021 1010 254:1 /var/lib/docker/containers/{CID}/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(id_in_mountinfo(&mountinfo).as_deref(), Some(CID));
        // An unrelated 64-hex path elsewhere (an overlay layer) is not taken for the container.
        let layer = format!("5 1 0:1 /layers/{CID} /data rw - ext4 /dev/vda1 rw\n");
        assert_eq!(id_in_mountinfo(&layer), None);
        for cgroup in [
            format!("12:pids:/docker/{CID}\n"),
            format!("0::/system.slice/docker-{CID}.scope\n"),
        ] {
            assert_eq!(id_in_cgroup(&cgroup).as_deref(), Some(CID), "{cgroup}");
        }
        assert_eq!(id_in_cgroup("0::/\n"), None);
        assert_eq!(id_in_cgroup("0::/user.slice/short-abc.scope\n"), None);
    }
}
