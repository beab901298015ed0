//! How a child ended, and the code microinit itself exits with.
//!
//! Owns: the n / 128+s convention and exit-code remapping. Does not own: reaping (`reaper`).

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// From a raw wait status; None for stop/continue reports.
    pub fn from_raw(status: i32) -> Option<ExitStatus> {
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signal(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// The shell's convention, which Docker reports too: n, or 128+s.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(n) => n,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    /// True when the process exited 0 (a signal death is always a failure, even if remapped later).
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// `-e CODE`: codes the user declared successful become 0. microinit applies it to exit codes only (a
    /// death by signal stays a failure); tini to 128+signal too (`signal_deaths`).
    pub fn remapped(self, remap: &[i32], signal_deaths: bool) -> i32 {
        match self {
            ExitStatus::Code(n) if remap.contains(&n) => 0,
            ExitStatus::Signal(_) if signal_deaths && remap.contains(&self.code()) => 0,
            other => other.code(),
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        match self {
            ExitStatus::Code(n) => serde_json::json!({"code": n, "signal": null, "status": n}),
            ExitStatus::Signal(s) => {
                serde_json::json!({"code": null, "signal": s, "status": 128 + s})
            }
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(n) => write!(f, "exit code {n}"),
            ExitStatus::Signal(s) => write!(
                f,
                "killed by {} (status {})",
                crate::init::signals::signal_name(*s),
                128 + s
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_remap() {
        assert_eq!(ExitStatus::Code(3).code(), 3);
        assert_eq!(ExitStatus::Signal(15).code(), 143);
        assert_eq!(ExitStatus::Code(143).remapped(&[143], false), 0);
        assert_eq!(ExitStatus::Signal(15).remapped(&[143], false), 143);
        assert_eq!(ExitStatus::Signal(15).remapped(&[143], true), 0);
        assert!(!ExitStatus::Signal(9).success());
    }
}
