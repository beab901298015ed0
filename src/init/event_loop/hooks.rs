//! Running the hooks (pre-start, pre-stop, post-stop) and the shell children they share with the health
//! command.
//!
//! Owns: starting a `sh -c` child in its own process group and killing a hook's group when the lifecycle
//! says its time is up. Does not own: when a hook runs or what its failure means (`lifecycle`).

use std::os::fd::RawFd;

use super::{children::Owner, EventLoop};
use crate::config::Isolation;
use crate::init::lifecycle::{Event, Hook, HookEnd};
use crate::init::spawn::{self, SpawnSpec, Started};

impl EventLoop {
    /// A hook or the health command in its own process group (a timeout kills it and whatever it started):
    /// a JSON array of strings (`["/bin/check","--fast"]`) is run as that argv, with no shell (a `FROM
    /// scratch` image has none); anything else as `sh -c CMD`.
    pub(super) fn shell_spawn(
        &self,
        cmd: &str,
        output: Option<RawFd>,
    ) -> Result<Started, spawn::SpawnError> {
        let (path, argv) = match crate::config::discovery::json_argv(cmd) {
            Some(argv) => {
                let path = crate::runtime_check::which::resolve(
                    &argv[0],
                    std::env::var_os("PATH").as_deref(),
                )
                .unwrap_or_else(|_| std::path::PathBuf::from(&argv[0]));
                (path, argv)
            }
            None => (
                std::path::PathBuf::from("/bin/sh"),
                vec!["sh".into(), "-c".into(), cmd.into()],
            ),
        };
        spawn::spawn(&SpawnSpec {
            path: &path,
            argv: &argv,
            isolation: Isolation::ProcessGroup,
            take_tty: false,
            pdeathsig: Some(libc::SIGKILL),
            output,
            mask: self.mask,
            default_dispositions: false,
            notify_fd: None,
            extra_env: &[],
        })
    }

    pub(super) fn start_hook(&mut self, hook: Hook) {
        let hooks = &self.cfg.hooks;
        let cmd = match hook {
            Hook::PreStart => &hooks.pre_start,
            Hook::PreStop => &hooks.pre_stop,
            Hook::PostStop => &hooks.post_stop,
        };
        let Some(cmd) = cmd.as_deref() else { return };
        match self.shell_spawn(cmd, None) {
            Ok(started) => {
                log::info!("{} hook started (pid {})", hook.name(), started.pid);
                self.children.insert(
                    started.pid,
                    Owner::Hook {
                        hook,
                        exec_pipe: started.exec_pipe,
                    },
                );
            }
            Err(e) => {
                eprintln!(
                    "microinit: {} hook failed: could not start: {e}",
                    hook.name()
                );
                // Nothing was forked: no SIGCHLD will come, so let the reaper look (ECHILD).
                self.reap_due = true;
                self.dispatch(Event::HookExited {
                    hook,
                    end: HookEnd::NotStarted(e.exit_code()),
                });
            }
        }
    }

    pub(super) fn kill_hook(&self, hook: Hook) {
        for (pid, owner) in &self.children {
            if matches!(owner, Owner::Hook { hook: h, .. } if *h == hook) {
                log::warn!(
                    "{} hook (pid {pid}) timed out; killing its process group",
                    hook.name()
                );
                spawn::kill(-pid, libc::SIGKILL);
            }
        }
    }
}
