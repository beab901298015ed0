//! The runtime check end to end, with the static binary inside real root filesystems built in temporary
//! directories (busybox-static, a C++ program linked to libstdc++, node, a musl program) and entered with
//! `unshare --mount --fork chroot`, so every path is exactly as in a microcontainer image.
//!
//! Needs (root, Debian): busybox-static, g++, musl-tools (for the musl case), and /usr/bin/node (nodejs).
//! Fixture helpers live here rather than in tests/common because only this file uses them.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{bin, target_dir};

const LIBDIR: &str = "/lib/x86_64-linux-gnu";
const LD_SO: &str = "ld-linux-x86-64.so.2";
/// The C++ program's libraries (what `ldd` shows for a g++ -O1 hello world on Debian).
const APP_LIBS: &[&str] = &["libstdc++.so.6", "libm.so.6", "libgcc_s.so.1", "libc.so.6"];
const NODE_LIBS: &[&str] = &[
    "libdl.so.2",
    "libstdc++.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libc.so.6",
];
/// No test may take longer than this (a hang is a failure, not a stuck CI).
const DEADLINE: Duration = Duration::from_secs(60);

/// Test programs compiled once per run: the C++ app, a library + program using RUNPATH $ORIGIN, and a
/// musl program.
struct Programs {
    dir: PathBuf,
}

fn programs() -> &'static Programs {
    static P: OnceLock<Programs> = OnceLock::new();
    P.get_or_init(|| {
        // In the target directory, so nothing is left behind in /tmp; rebuilt on every run.
        let dir = target_dir().join("runtime-check-programs");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("app.cpp"),
            "#include <iostream>\n#include <string>\nint main() { std::string s = \"hello from c++\"; std::cout << s << std::endl; }\n",
        )
        .unwrap();
        fs::write(dir.join("greet.cpp"), "#include <string>\nstd::string greet() { return \"hello greet\"; }\n").unwrap();
        fs::write(
            dir.join("greeter.cpp"),
            "#include <iostream>\n#include <string>\nstd::string greet();\nint main() { std::cout << greet() << std::endl; }\n",
        )
        .unwrap();
        fs::write(dir.join("hello.c"), "#include <stdio.h>\nint main(void) { puts(\"hello musl\"); return 0; }\n").unwrap();
        let sh = |cmd: &str| {
            let st = Command::new("sh").arg("-c").arg(cmd).current_dir(&dir).status().unwrap();
            assert!(st.success(), "`{cmd}` failed: install g++ and musl-tools");
        };
        sh("g++ -O1 -o app app.cpp");
        sh("g++ -O1 -shared -fPIC -o libgreet.so greet.cpp");
        // Debian's linker emits DT_RUNPATH for -rpath (new dtags); force it so the test means what it says.
        sh("g++ -O1 -o greeter greeter.cpp -L. -lgreet -Wl,--enable-new-dtags,-rpath,'$ORIGIN/lib'");
        sh("musl-gcc -O1 -o hello-musl hello.c");
        Programs { dir }
    })
}

/// A microcontainer root filesystem: busybox-static, /microinit, and whatever the test adds.
struct Image {
    dir: PathBuf,
}

impl Image {
    fn new(name: &str) -> Image {
        let dir = std::env::temp_dir().join(format!("microinit-rc-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in [
            "bin",
            "usr/bin",
            "lib",
            "lib64",
            "opt/files",
            "etc",
            "tmp",
            "app",
            "proc",
        ] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        let img = Image { dir };
        img.copy_in(Path::new("/bin/busybox"), "/bin/busybox");
        for applet in ["sh", "true", "env", "cat", "echo", "ls"] {
            img.link(&format!("/bin/{applet}"), "busybox");
        }
        img.link("/usr/bin/env", "/bin/busybox");
        img.copy_in(&bin(), "/microinit");
        img
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    fn link(&self, link: &str, target: &str) {
        let l = self.path(link);
        fs::create_dir_all(l.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&l);
        symlink(target, &l).unwrap();
    }

    fn write(&self, p: &str, bytes: &[u8], mode: u32) {
        let f = self.path(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, bytes).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn copy_in(&self, from: &Path, to: &str) {
        let t = self.path(to);
        fs::create_dir_all(t.parent().unwrap()).unwrap();
        fs::copy(from, &t)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), t.display()));
    }

    fn remove(&self, p: &str) {
        fs::remove_file(self.path(p)).unwrap();
    }

    /// The links a microcontainer image carries for a glibc program `name`: /usr/bin/NAME, the loader and
    /// each library, all pointing into /opt/files (the volume), which is left empty.
    fn glibc_links(&self, name: &str, libs: &[&str]) {
        self.link(&format!("/usr/bin/{name}"), &format!("/opt/files/{name}"));
        self.link(&format!("/lib64/{LD_SO}"), &format!("/opt/files/{LD_SO}"));
        for lib in libs {
            self.link(&format!("/lib/{lib}"), &format!("/opt/files/{lib}"));
        }
    }

    /// What `docker run --volumes-from filebox` brings: the program, the loader and the libraries, except
    /// those named in `except`.
    fn fill_volume(&self, name: &str, program: &Path, libs: &[&str], except: &[&str]) {
        let mut files: Vec<(PathBuf, String)> = vec![(program.into(), name.into())];
        files.push((Path::new(LIBDIR).join(LD_SO), LD_SO.into()));
        files.extend(
            libs.iter()
                .map(|l| (Path::new(LIBDIR).join(l), l.to_string())),
        );
        for (from, to) in files {
            if !except.contains(&to.as_str()) {
                self.copy_in(&from, &format!("/opt/files/{to}"));
            }
        }
    }

    /// A complete image for the C++ app.
    fn with_app(name: &str) -> Image {
        let img = Image::new(name);
        img.glibc_links("app", APP_LIBS);
        img.fill_volume("app", &programs().dir.join("app"), APP_LIBS, &[]);
        img
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)], user: Option<&str>) -> Command {
        // /proc as in a container: glibc finds the program's $ORIGIN through /proc/self/exe.
        let mut c = Command::new("unshare");
        c.arg("--fork")
            .arg(format!("--mount-proc={}", self.path("/proc").display()))
            .arg("/usr/sbin/chroot");
        if let Some(u) = user {
            c.arg(format!("--userspec={u}"));
        }
        c.arg(&self.dir).arg("/microinit").args(args);
        c.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
        c.envs(env.iter().copied());
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[], None)
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)], user: Option<&str>) -> Run {
        finish(self.command(args, env, user).spawn().unwrap())
    }

    fn check_json(&self, args: &[&str]) -> (i32, Value) {
        let mut a = vec!["check", "--json"];
        a.extend_from_slice(args);
        let r = self.run(&a);
        let v: Value =
            serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
        (r.code, v)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    /// The "runtime missing" lines, wherever they were printed.
    fn missing_lines(&self) -> Vec<String> {
        self.all()
            .lines()
            .filter(|l| l.starts_with("microinit: runtime missing:"))
            .map(String::from)
            .collect()
    }
}

/// Waits for the child with DEADLINE; a hang kills it and fails the test.
fn finish(child: Child) -> Run {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out: Output = match rx.recv_timeout(DEADLINE) {
        Ok(r) => r.unwrap(),
        Err(_) => {
            // SAFETY: pid is our own child, still unreaped (its waiter thread is blocked on it).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("microinit did not finish within {DEADLINE:?}");
        }
    };
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !run.all().contains("panicked"),
        "microinit panicked:\n{}",
        run.all()
    );
    run
}

/// The C++ test app ran and printed its line.
fn assert_app_said_hello(r: &Run) {
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "hello from c++"),
        "{}",
        r.all()
    );
}

fn kinds(v: &Value, list: &str, kind: &str) -> Vec<Value> {
    v[list]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

#[test]
fn all_present_app_runs_and_check_reports_everything() {
    let img = Image::with_app("present");
    let r = img.run(&["--", "app"]);
    assert_app_said_hello(&r);

    let (code, v) = img.check_json(&["app"]);
    assert_eq!(code, 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["command"], "/usr/bin/app");
    assert_eq!(v["missing"].as_array().unwrap().len(), 0);
    let cmd = kinds(&v, "resolved", "command");
    assert_eq!(cmd.len(), 1);
    assert_eq!(
        (cmd[0]["path"].as_str(), cmd[0]["found"].as_str()),
        (Some("/usr/bin/app"), Some("/opt/files/app"))
    );
    let interp = kinds(&v, "resolved", "interpreter");
    assert_eq!(interp[0]["path"], format!("/lib64/{LD_SO}"));
    assert_eq!(interp[0]["found"], format!("/opt/files/{LD_SO}"));
    assert_eq!(interp[0]["needed_by"], "/opt/files/app");
    let libs = kinds(&v, "resolved", "library");
    for lib in APP_LIBS {
        let e = libs
            .iter()
            .find(|e| e["path"] == format!("/lib/{lib}"))
            .unwrap_or_else(|| panic!("{lib}: {v:#}"));
        assert_eq!(e["found"], format!("/opt/files/{lib}"));
    }
    // Every entry has exactly the schema's keys.
    for e in v["resolved"].as_array().unwrap() {
        let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["found", "kind", "needed_by", "path"]);
    }

    let text = img.run(&["check", "app"]);
    assert_eq!(text.code, 0);
    assert!(
        text.stdout
            .contains("library            /lib/libstdc++.so.6 -> /opt/files/libstdc++.so.6"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("result: ok"));
}

#[test]
fn node_from_the_volume_runs() {
    let img = Image::new("node");
    img.glibc_links("node", NODE_LIBS);
    let r = img.run(&["--", "node", "-e", "console.log(6*7)"]);
    assert_eq!(r.code, 127);
    assert!(
        r.missing_lines().contains(
            &"microinit: runtime missing: /usr/bin/node -> /opt/files/node (no such file)"
                .to_string()
        ),
        "{}",
        r.all()
    );
    img.fill_volume("node", Path::new("/usr/bin/node"), NODE_LIBS, &[]);
    let r = img.run(&["--", "node", "-e", "console.log(6*7)"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "42"), "{}", r.stderr);
}

#[test]
fn dangling_command_link() {
    let img = Image::new("dangling");
    img.glibc_links("app", APP_LIBS);
    // With the opt-in scan (flag, or its env twin), every link into the volume is checked, not only the app's.
    let scan = [("MICROINIT_SCAN_RUNTIME_LINKS", "1")];
    for (args, env) in [
        (&["check", "--scan-runtime-links", "app"][..], &[][..]),
        (&["--", "app"], &scan[..]),
    ] {
        let r = img.run_with(args, env, None);
        assert_eq!(r.code, 127, "{}", r.all());
        let lines = r.missing_lines();
        assert_eq!(
            lines[0],
            "microinit: runtime missing: /usr/bin/app -> /opt/files/app (no such file)"
        );
        // The unrelated-but-dangling links into the volume are reported too, all at once.
        assert!(lines.contains(&format!(
            "microinit: runtime missing: /lib64/{LD_SO} -> /opt/files/{LD_SO} (no such file)"
        )));
        assert!(
            r.all()
                .contains("hint: the runtime volume is not mounted: /opt/files is empty")
                && r.all().contains("--volumes-from"),
            "{}",
            r.all()
        );
    }
    // Without it, the start costs what the app needs: its own chain only.
    let r = img.run(&["--", "app"]);
    assert_eq!(
        r.missing_lines(),
        ["microinit: runtime missing: /usr/bin/app -> /opt/files/app (no such file)"]
    );
    let (_, v) = img.check_json(&["app"]);
    let m = &v["missing"][0];
    assert_eq!(
        (m["kind"].as_str(), m["path"].as_str()),
        (Some("command"), Some("/usr/bin/app"))
    );
    assert_eq!(m["detail"], "dangling link -> /opt/files/app");
    assert_eq!(m["needed_by"], Value::Null);
}

/// The seeds' broken image: the app and its library links are there, the volume lacks libstdc++.
fn image_without_libstdcxx(name: &str) -> Image {
    let img = Image::new(name);
    img.glibc_links("app", APP_LIBS);
    img.fill_volume(
        "app",
        &programs().dir.join("app"),
        APP_LIBS,
        &["libstdc++.so.6"],
    );
    img
}

#[test]
fn missing_libstdcxx_is_named() {
    // The seeds' case: the link is there, the volume lacks the library.
    let img = image_without_libstdcxx("nolibstdcxx");
    let r = img.run(&["--", "app"]);
    assert_eq!(r.code, 127);
    assert_eq!(
        r.missing_lines(),
        ["microinit: runtime missing: /lib/libstdc++.so.6 -> /opt/files/libstdc++.so.6 needed by /opt/files/app (no such file)"],
        "{}",
        r.all()
    );
    // Without any link: the library is named with every directory searched.
    img.remove("/lib/libstdc++.so.6");
    let r = img.run(&["check", "app"]);
    assert_eq!(r.code, 127);
    assert_eq!(
        r.missing_lines(),
        ["microinit: runtime missing: libstdc++.so.6 needed by /opt/files/app (searched /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib64, /usr/lib64, /lib, /usr/lib)"]
    );
    // And the real loader agrees that it cannot start.
    let r = img.run(&["--no-runtime-check", "--", "app"]);
    assert!(
        r.code != 0 && r.stderr.contains("libstdc++.so.6"),
        "{}",
        r.all()
    );
}

#[test]
fn missing_elf_interpreter() {
    let img = Image::new("nointerp");
    img.glibc_links("app", APP_LIBS);
    img.fill_volume("app", &programs().dir.join("app"), APP_LIBS, &[LD_SO]);
    let r = img.run(&["check", "app"]);
    assert_eq!(r.code, 127);
    assert_eq!(
        r.missing_lines(),
        [format!("microinit: runtime missing: /lib64/{LD_SO} -> /opt/files/{LD_SO} needed by /opt/files/app (no such file)")]
    );
    let (_, v) = img.check_json(&["app"]);
    assert_eq!(v["missing"][0]["kind"], "interpreter");
}

#[test]
fn script_with_missing_interpreter() {
    let img = Image::new("script");
    img.glibc_links("app", APP_LIBS);
    img.write("/app/direct.sh", b"#!/usr/bin/app\n", 0o755);
    img.write("/app/via-env.sh", b"#!/usr/bin/env app\n", 0o755);
    img.write("/app/busybox.sh", b"#!/bin/sh\necho script ran\n", 0o755);
    let r = img.run(&["check", "/app/direct.sh"]);
    assert_eq!(r.code, 127);
    assert_eq!(r.missing_lines()[0], "microinit: runtime missing: /usr/bin/app -> /opt/files/app needed by /app/direct.sh (no such file)");
    let (_, v) = img.check_json(&["/app/via-env.sh"]);
    assert_eq!(v["missing"][0]["kind"], "script-interpreter");
    assert_eq!(v["missing"][0]["path"], "/usr/bin/app");
    assert_eq!(v["missing"][0]["needed_by"], "/app/via-env.sh");
    assert!(
        kinds(&v, "resolved", "script-interpreter")
            .iter()
            .any(|e| e["path"] == "/usr/bin/env"),
        "{v:#}"
    );

    img.fill_volume("app", &programs().dir.join("app"), APP_LIBS, &[]);
    let (code, v) = img.check_json(&["/app/via-env.sh"]);
    assert_eq!(code, 0, "{v:#}");
    assert!(kinds(&v, "resolved", "library")
        .iter()
        .any(|e| e["path"] == "/lib/libstdc++.so.6"));
    // A script that is its own interpreter: the kernel's nesting limit, not a hang.
    img.write("/app/self.sh", b"#!/app/self.sh\n", 0o755);
    let r = img.run(&["check", "/app/self.sh"]);
    assert_eq!(r.code, 127);
    assert!(
        r.missing_lines()[0].ends_with("(more than 4 nested #! interpreters (the kernel refuses))"),
        "{}",
        r.all()
    );
    let r = img.run(&["--", "/app/busybox.sh"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "script ran"), "{}", r.all());
}

#[test]
fn static_binary_needs_nothing() {
    let img = Image::new("static");
    let (code, v) = img.check_json(&["busybox"]);
    assert_eq!(code, 0);
    assert_eq!(v["command"], "/bin/busybox");
    let resolved = v["resolved"].as_array().unwrap();
    assert_eq!(resolved.len(), 1, "{v:#}");
    assert_eq!(resolved[0]["kind"], "command");
    let r = img.run(&["--", "true"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn runpath_with_origin() {
    let img = Image::new("runpath");
    let progs = &programs().dir;
    img.glibc_links("greeter", APP_LIBS);
    img.fill_volume("greeter", &progs.join("greeter"), APP_LIBS, &[]);
    img.copy_in(&progs.join("libgreet.so"), "/opt/files/lib/libgreet.so");
    let (code, v) = img.check_json(&["greeter"]);
    assert_eq!(code, 0, "{v:#}");
    // $ORIGIN is the real directory of the program (/opt/files), not the link's (/usr/bin).
    let greet = kinds(&v, "resolved", "library")
        .into_iter()
        .find(|e| e["found"] == "/opt/files/lib/libgreet.so");
    assert!(greet.is_some(), "{v:#}");
    let r = img.run(&["--", "greeter"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "hello greet"), "{}", r.all());

    img.remove("/opt/files/lib/libgreet.so");
    let r = img.run(&["check", "greeter"]);
    assert_eq!(r.code, 127);
    assert!(
        r.missing_lines()[0].starts_with("microinit: runtime missing: libgreet.so needed by /opt/files/greeter (searched /opt/files/lib, /lib/x86_64-linux-gnu"),
        "{}",
        r.all()
    );
}

#[test]
fn musl_program_and_its_path_file() {
    let img = Image::new("musl");
    let progs = &programs().dir;
    img.copy_in(&progs.join("hello-musl"), "/opt/files/hello");
    img.link("/usr/bin/hello", "/opt/files/hello");
    img.link("/lib/ld-musl-x86_64.so.1", "/opt/files/ld-musl-x86_64.so.1");
    let r = img.run(&["check", "hello"]);
    assert_eq!(r.missing_lines(), ["microinit: runtime missing: /lib/ld-musl-x86_64.so.1 -> /opt/files/ld-musl-x86_64.so.1 needed by /opt/files/hello (no such file)"]);
    img.copy_in(
        Path::new("/usr/lib/x86_64-linux-musl/libc.so"),
        "/opt/files/ld-musl-x86_64.so.1",
    );
    // libc.so (the program's only DT_NEEDED) is the loader itself for musl.
    let (code, v) = img.check_json(&["hello"]);
    assert_eq!(code, 0, "{v:#}");
    assert!(kinds(&v, "resolved", "library").is_empty(), "{v:#}");
    let r = img.run(&["--", "hello"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "hello musl"), "{}", r.all());
}

#[test]
fn require_paths() {
    let img = Image::new("require");
    img.write("/etc/present.conf", b"x", 0o644);
    let r = img.run(&[
        "check",
        "--require",
        "/etc/app.conf",
        "--require",
        "/etc/present.conf",
        "--require",
        "/data/db",
        "true",
    ]);
    assert_eq!(r.code, 127);
    assert_eq!(
        r.missing_lines(),
        [
            "microinit: runtime missing: /etc/app.conf (no such file)",
            "microinit: runtime missing: /data/db (no such file)"
        ]
    );
    let r = img.run_with(
        &["check", "true"],
        &[("MICROINIT_REQUIRE", "/etc/present.conf:/etc/app.conf")],
        None,
    );
    assert_eq!(
        r.missing_lines(),
        ["microinit: runtime missing: /etc/app.conf (no such file)"]
    );
    let r = img.run(&["check", "--require", "/etc/present.conf"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn the_opt_in_scan_catches_an_unrelated_dangling_link() {
    let img = Image::new("rtdir");
    img.link("/usr/bin/python3", "/opt/files/python3");
    img.link("/usr/local/bin/tool", "../../../opt/files/tool");
    img.link("/usr/bin/elsewhere", "/srv/nothing");
    let r = img.run(&["--", "true"]);
    assert_eq!(
        r.code, 0,
        "no manifest and no --scan-runtime-links: only the app's chain is checked"
    );
    let r = img.run(&["--scan-runtime-links", "--", "true"]);
    assert_eq!(r.code, 127);
    let lines = r.missing_lines();
    assert!(
        lines.contains(
            &"microinit: runtime missing: /usr/bin/python3 -> /opt/files/python3 (no such file)"
                .to_string()
        ),
        "{lines:?}"
    );
    assert!(
        lines.contains(
            &"microinit: runtime missing: /usr/local/bin/tool -> /opt/files/tool (no such file)"
                .to_string()
        ),
        "{lines:?}"
    );
    // A dangling link that does not point into the runtime directory is not our business.
    assert_eq!(lines.len(), 2, "{lines:?}");
    let r = img.run(&[
        "--scan-runtime-links",
        "--runtime-dir",
        "/srv/runtime",
        "--",
        "true",
    ]);
    assert_eq!(r.code, 0, "{}", r.all());
    let r = img.run_with(
        &["check", "--scan-runtime-links"],
        &[("MICROINIT_RUNTIME_DIR", "/srv")],
        None,
    );
    assert_eq!(
        r.missing_lines(),
        ["microinit: runtime missing: /usr/bin/elsewhere -> /srv/nothing (no such file)"]
    );
    let r = img.run(&["--scan-runtime-links", "--no-runtime-check", "--", "true"]);
    assert_eq!(r.code, 0);
}

#[test]
fn wait_runtime_succeeds_when_the_volume_arrives_late() {
    let img = Image::new("waitok");
    img.glibc_links("app", APP_LIBS);
    let mut child = img
        .command(&["--wait-runtime", "30s", "--", "app"], &[], None)
        .spawn()
        .unwrap();
    // The volume arrives late (the start-order race this option exists for), one file after the other.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "microinit gave up instead of waiting"
    );
    img.fill_volume("app", &programs().dir.join("app"), APP_LIBS, &[]);
    let r = finish(child);
    assert_app_said_hello(&r);
}

#[test]
fn wait_runtime_fails_with_the_report() {
    let img = Image::new("waitfail");
    img.glibc_links("app", APP_LIBS);
    let started = Instant::now();
    let r = img.run(&["--wait-runtime", "400ms", "--", "app"]);
    assert_eq!(r.code, 127);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        r.missing_lines()[0],
        "microinit: runtime missing: /usr/bin/app -> /opt/files/app (no such file)"
    );
    let r = img.run_with(
        &["check", "app"],
        &[("MICROINIT_WAIT_RUNTIME", "200ms")],
        None,
    );
    assert_eq!(r.code, 127);
}

/// The test app's bytes, to corrupt.
fn app_bytes() -> Vec<u8> {
    fs::read(programs().dir.join("app")).unwrap()
}

#[test]
fn bad_elf_files_give_a_clear_report() {
    let img = Image::with_app("badelf");
    let good = app_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..1000].to_vec(), "truncated ELF: "),
        (
            "empty-with-magic",
            b"\x7fELF".to_vec(),
            "truncated ELF: e_ident",
        ),
        (
            "wrong-class",
            {
                let mut b = good.clone();
                b[4] = 3;
                b
            },
            "unknown class 3",
        ),
        (
            "huge-phoff",
            {
                let mut b = good.clone();
                b[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            },
            "malformed ELF: program headers offset",
        ),
        (
            "bad-phentsize",
            {
                let mut b = good.clone();
                b[54] = 7;
                b
            },
            "program header size 7",
        ),
    ];
    for (name, bytes, want) in cases {
        img.write("/opt/files/app", &bytes, 0o755);
        let r = img.run(&["check", "app"]);
        assert_eq!(r.code, 127, "{name}: {}", r.all());
        let lines = r.missing_lines();
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert!(
            lines[0].starts_with("microinit: runtime missing: /usr/bin/app -> /opt/files/app (")
                && lines[0].contains(want),
            "{name}: {lines:?}"
        );
    }
    // Garbage without ELF magic is not a runtime question: the check notes it and lets exec report it.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    img.write("/opt/files/app", &garbage, 0o755);
    let r = img.run(&["check", "app"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains("note: /opt/files/app is neither an ELF file nor a #! script"),
        "{}",
        r.stdout
    );
    // A corrupt library stops the loader: reported with its link and who needs it (libm comes in through
    // libstdc++, the breadth-first order of the loader).
    img.copy_in(&programs().dir.join("app"), "/opt/files/app");
    img.write("/opt/files/libm.so.6", &good[..3000], 0o755);
    let r = img.run(&["check", "app"]);
    assert_eq!(r.missing_lines().len(), 1, "{}", r.all());
    assert!(r.missing_lines()[0].starts_with("microinit: runtime missing: /lib/libm.so.6 -> /opt/files/libm.so.6 needed by /opt/files/libstdc++.so.6 (truncated ELF"), "{}", r.all());
}

#[test]
fn incompatible_library_is_skipped_like_the_loader_does() {
    let img = Image::with_app("incompat");
    let mut lib = fs::read(Path::new(LIBDIR).join("libgcc_s.so.1")).unwrap();
    lib[18..20].copy_from_slice(&183u16.to_le_bytes()); // e_machine = aarch64
    img.write("/opt/files/libgcc_s.so.1", &lib, 0o644);
    let r = img.run(&["check", "app"]);
    assert_eq!(r.code, 127);
    let line = &r.missing_lines()[0];
    assert!(
        line.starts_with(
            "microinit: runtime missing: libgcc_s.so.1 needed by /opt/files/app (searched "
        ),
        "{line}"
    );
    assert!(
        line.contains("skipped incompatible /lib/libgcc_s.so.1 (ELF64 LE machine 183)"),
        "{line}"
    );
}

#[test]
fn huge_sparse_elf_is_checked_without_reading_it() {
    let img = Image::with_app("huge");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(img.path("/opt/files/app"))
        .unwrap();
    f.set_len(64 << 30).unwrap(); // 64 GiB, sparse: reading it whole would never finish in time
    drop(f);
    let r = img.run(&["check", "app"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[test]
fn symlink_loops_are_reported() {
    let img = Image::with_app("loops");
    img.link("/usr/bin/loop-a", "loop-b");
    img.link("/usr/bin/loop-b", "/usr/bin/loop-a");
    let r = img.run(&["check", "loop-a"]);
    assert_eq!(r.code, 127);
    assert!(
        r.missing_lines()[0].starts_with(
            "microinit: runtime missing: /usr/bin/loop-a -> /usr/bin/loop-b -> /usr/bin/loop-a"
        ),
        "{}",
        r.all()
    );
    assert!(
        r.missing_lines()[0].ends_with("(symlink loop (more than 40 links))"),
        "{}",
        r.all()
    );
    // A loop inside the volume, reached through a library link.
    img.link("/opt/files/libm.so.6", "/lib/libm.so.6");
    let r = img.run(&["check", "app"]);
    assert_eq!(r.code, 127);
    assert!(
        r.missing_lines().iter().any(|l| l.starts_with(
            "microinit: runtime missing: /lib/libm.so.6 -> /opt/files/libm.so.6 -> /lib/libm.so.6"
        )),
        "{}",
        r.all()
    );
}

#[test]
fn unreadable_files_as_a_non_root_user() {
    let img = Image::with_app("unreadable");
    // The loader cannot open a library it may not read: neither can we, and we say so.
    fs::set_permissions(
        img.path("/opt/files/libstdc++.so.6"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let r = img.run_with(&["check", "app"], &[], Some("65534:65534"));
    assert_eq!(r.code, 127, "{}", r.all());
    let line = &r.missing_lines()[0];
    assert!(
        line.starts_with(
            "microinit: runtime missing: libstdc++.so.6 needed by /opt/files/app (searched "
        ),
        "{line}"
    );
    assert!(
        line.contains("cannot read /lib/libstdc++.so.6 (permission denied)"),
        "{line}"
    );
    let real = img.run_with(
        &["--no-runtime-check", "--", "app"],
        &[],
        Some("65534:65534"),
    );
    assert!(
        real.code != 0 && real.stderr.contains("libstdc++.so.6"),
        "{}",
        real.all()
    );
    // An execute-only program can still be exec'd: noted, not failed.
    fs::set_permissions(
        img.path("/opt/files/libstdc++.so.6"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    fs::set_permissions(
        img.path("/opt/files/app"),
        fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let r = img.run_with(&["check", "app"], &[], Some("65534:65534"));
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains("note: cannot read /opt/files/app (permission denied)"),
        "{}",
        r.stdout
    );
    // A directory we may not search hides the volume: a clear reason, not a crash.
    fs::set_permissions(img.path("/opt/files"), fs::Permissions::from_mode(0o700)).unwrap();
    let r = img.run_with(&["check", "app"], &[], Some("65534:65534"));
    assert_eq!(r.code, 127);
    assert_eq!(
        r.missing_lines()[0],
        "microinit: runtime missing: /usr/bin/app -> /opt/files/app (permission denied)"
    );
}

#[test]
fn json_report_of_a_broken_image_is_complete() {
    let img = image_without_libstdcxx("json");
    let (code, v) = img.check_json(&["--require", "/etc/app.conf", "app"]);
    assert_eq!(code, 127);
    assert_eq!(v["ok"], false);
    let missing = v["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 2, "{v:#}");
    assert_eq!(missing[0]["kind"], "library");
    assert_eq!(missing[0]["path"], "/lib/libstdc++.so.6");
    assert_eq!(missing[0]["needed_by"], "/opt/files/app");
    assert_eq!(
        missing[0]["detail"],
        "dangling link -> /opt/files/libstdc++.so.6"
    );
    assert_eq!(missing[1]["kind"], "require");
    assert_eq!(missing[1]["detail"], "no such file");
    for e in missing {
        let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["detail", "kind", "needed_by", "path"]);
    }
    // The report goes to a closed pipe without a panic.
    let mut c = img.command(&["check", "app"], &[], None);
    c.stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    drop(child.stdout.take());
    let r = finish(child);
    assert_eq!(r.code, 127);
}

/// Sets a directory's mtime: image layers carry old mtimes, and a link added later must change it.
fn backdate(img: &Image, dirs: &[&str]) {
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    for d in dirs {
        fs::File::open(img.path(d))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
}

fn work(v: &Value, what: &str) -> u64 {
    v["work"][what].as_u64().unwrap()
}

#[test]
fn a_start_with_a_manifest_checks_only_its_links() {
    let img = Image::with_app("manifest");
    // A fat image: 2 000 entries in the standard directories that have nothing to do with the volume.
    for i in 0..1000 {
        img.link(&format!("/usr/bin/tool{i}"), "/bin/busybox");
        img.write(&format!("/lib/data{i}"), b"x", 0o644);
    }
    backdate(&img, &["/bin", "/usr/bin", "/lib", "/lib64"]);
    let r = img.run(&["check", "--write-manifest"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(
        r.stdout
            .contains("note: wrote /etc/microinit/runtime-links: 6 links into /opt/files"),
        "{}",
        r.stdout
    );

    let (code, v) = img.check_json(&["true"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["links"]["source"], "manifest", "{v:#}");
    assert_eq!(v["links"]["checked"], 6);
    // The links and the app's chain, not the image: no directory read, a handful of readlinks.
    assert_eq!(work(&v, "getdents"), 0, "{v:#}");
    assert!(work(&v, "readlink") <= 6 + 4, "{v:#}");
    assert!(work(&v, "lstat") < 60, "{v:#}");
    let (_, scanned) =
        img.check_json(&["--scan-runtime-links", "--links-manifest", "/none", "true"]);
    assert!(
        work(&scanned, "readlink") >= 1000,
        "the scan reads every link: {scanned:#}"
    );

    // A link the manifest does not know changes its directory: the manifest is out of date, the start
    // scans, and the new dangling link is caught.
    img.link("/usr/bin/late", "/opt/files/late");
    let (code, v) = img.check_json(&["true"]);
    assert_eq!(code, 127, "{v:#}");
    assert_eq!(v["links"]["source"], "scan");
    assert_eq!(v["missing"][0]["path"], "/usr/bin/late", "{v:#}");
    assert!(
        v["notes"][0]
            .as_str()
            .unwrap()
            .contains("/usr/bin changed after it was written"),
        "{v:#}"
    );
    // Once the link is gone and the directory is as recorded again, the manifest holds and the app starts.
    img.remove("/usr/bin/late");
    backdate(&img, &["/usr/bin"]);
    let r = img.run(&["--", "app"]);
    assert_app_said_hello(&r);
}

#[test]
fn a_link_made_in_the_second_the_manifest_was_written_is_noticed() {
    // As in one RUN step: a link is made, the manifest written, another link made, all within one second
    // (directory mtimes are recorded in seconds). Starting right after a second begins puts the three steps
    // (~0.2 s) in the same second: the clock is the condition here, nothing can signal it.
    let img = Image::with_app("manifest-second");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()),
    ));
    img.link("/usr/bin/early", "/opt/files/app");
    let r = img.run(&["check", "--write-manifest"]);
    assert_eq!(r.code, 0, "{}", r.all());
    img.link("/usr/bin/late", "/opt/files/late");
    let (code, v) = img.check_json(&["true"]);
    assert_eq!(code, 127, "the manifest must not hide the new link: {v:#}");
    assert_eq!(v["links"]["source"], "scan", "{v:#}");
    assert_eq!(v["missing"][0]["path"], "/usr/bin/late", "{v:#}");
}

#[test]
fn the_build_time_check_catches_a_link_the_volume_does_not_provide() {
    // As at `docker build`: the links are in the image, the volume is not mounted, its manifest (filebox's
    // symlinks.txt) is; it lacks libstdc++.
    let img = Image::new("buildcheck");
    img.glibc_links("app", APP_LIBS);
    fs::remove_dir(img.path("/opt/files")).unwrap();
    let mut list =
        format!("/usr/bin/app -> /opt/files/app\n/lib64/{LD_SO} -> /opt/files/{LD_SO}\n");
    for lib in APP_LIBS.iter().filter(|l| **l != "libstdc++.so.6") {
        list.push_str(&format!("/lib/{lib} -> /opt/files/{lib}\n"));
    }
    img.write("/etc/microinit/volume-links.txt", list.as_bytes(), 0o644);
    let r = img.run(&["check", "--write-manifest"]);
    assert_eq!(r.code, 127, "{}", r.all());
    assert_eq!(
        r.missing_lines(),
        ["microinit: runtime missing: /lib/libstdc++.so.6 -> /opt/files/libstdc++.so.6 (no such file)"]
    );
    assert!(
        r.all().contains("points at nothing the volume provides"),
        "{}",
        r.all()
    );
    assert!(!img.path("/etc/microinit/runtime-links").exists());

    // The volume's manifest lists it: the build passes and writes the links manifest.
    list.push_str("/lib/libstdc++.so.6 -> /opt/files/libstdc++.so.6\n");
    img.write("/etc/microinit/volume-links.txt", list.as_bytes(), 0o644);
    let r = img.run_with(&["check"], &[("MICROINIT_WRITE_MANIFEST", "1")], None);
    assert_eq!(r.code, 0, "{}", r.all());
    let manifest = fs::read_to_string(img.path("/etc/microinit/runtime-links")).unwrap();
    assert!(
        manifest.contains("link /lib/libstdc++.so.6\n"),
        "{manifest}"
    );

    // A container started without the volume fails: the volume's manifest never stands in for it at start.
    let r = img.run(&["--", "app"]);
    assert_eq!(r.code, 127, "{}", r.all());
    assert!(
        r.all()
            .contains("the runtime volume is not mounted: /opt/files is missing"),
        "{}",
        r.all()
    );
    // At run time the volume is mounted: the real files are checked, the app runs.
    img.fill_volume("app", &programs().dir.join("app"), APP_LIBS, &[]);
    let r = img.run(&["--", "app"]);
    assert_app_said_hello(&r);
}

#[test]
fn the_hint_names_the_missing_link_when_the_volume_is_mounted() {
    let img = Image::with_app("hintlink");
    img.remove("/lib/libstdc++.so.6");
    let r = img.run(&["--", "app"]);
    assert_eq!(r.code, 127);
    // /lib64 is the first directory the loader searches that the image has.
    assert!(
        r.stderr.contains(
            "hint: the volume has libstdc++.so.6 at /opt/files/libstdc++.so.6, but the image has no link where \
             the loader looks: add the link /lib64/libstdc++.so.6 -> /opt/files/libstdc++.so.6 to the image"
        ),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("the runtime volume is mounted at /opt/files"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("--volumes-from"), "{}", r.stderr);
}

/// Runs `microinit ARGS` in the image and asserts it ends within 5 s (generous: the work is bounded).
fn bounded(img: &Image, args: &[&str]) -> Run {
    let started = Instant::now();
    let r = img.run(args);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{args:?} took {:?}:\n{}",
        started.elapsed(),
        r.all()
    );
    r
}

fn mkfifo(img: &Image, p: &str) {
    let c = std::ffi::CString::new(img.path(p).into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn a_fifo_as_ld_so_cache_or_musl_path_file_does_not_hang_the_check() {
    let img = image_without_libstdcxx("fifo");
    img.remove("/lib/libstdc++.so.6");
    mkfifo(&img, "/etc/ld.so.cache");
    let r = bounded(&img, &["check", "app"]);
    assert_eq!(r.code, 127);
    assert!(
        r.stdout
            .contains("note: ignored /etc/ld.so.cache: not a regular file"),
        "{}",
        r.stdout
    );

    let img = Image::new("fifomusl");
    img.copy_in(&programs().dir.join("hello-musl"), "/usr/bin/hello");
    img.copy_in(
        Path::new("/usr/lib/x86_64-linux-musl/libc.so"),
        "/lib/ld-musl-x86_64.so.1",
    );
    mkfifo(&img, "/etc/ld-musl-x86_64.path");
    let r = bounded(&img, &["check", "hello"]);
    assert!(
        r.stdout
            .contains("note: ignored /etc/ld-musl-x86_64.path: not a regular file"),
        "{}",
        r.all()
    );
}

#[test]
fn a_crafted_ld_so_cache_is_read_in_bounded_time_and_memory() {
    let img = image_without_libstdcxx("craftedcache");
    img.remove("/lib/libstdc++.so.6");
    // 4 billion entries claimed, 40 000 present, every name running into a megabyte without a NUL.
    let mut data = b"glibc-ld.so.cache1.1".to_vec();
    data.extend_from_slice(&u32::MAX.to_ne_bytes());
    data.resize(48, 0);
    let strings = 48 + 40_000u32 * 24;
    for i in 0..40_000u32 {
        data.extend_from_slice(&1u32.to_ne_bytes());
        data.extend_from_slice(&(strings + i).to_ne_bytes());
        data.extend_from_slice(&(strings + i).to_ne_bytes());
        data.extend_from_slice(&[0; 12]);
    }
    data.resize(data.len() + (1 << 20), b'l');
    img.write("/etc/ld.so.cache", &data, 0o644);
    let r = bounded(&img, &["check", "app"]);
    assert_eq!(r.code, 127);
    assert!(
        r.all().contains("libstdc++.so.6 needed by /opt/files/app"),
        "{}",
        r.all()
    );
}

#[test]
fn a_link_name_with_a_newline_cannot_forge_the_report() {
    let img = Image::new("newline");
    img.link(
        "/usr/bin/x\nresult: ok, the runtime is complete",
        "/opt/files/x",
    );
    let r = bounded(&img, &["check", "--scan-runtime-links"]);
    assert_eq!(r.code, 127);
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("result: ok")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("/usr/bin/x\\nresult: ok, the runtime is complete -> /opt/files/x"),
        "{}",
        r.stdout
    );
    // Exact in JSON.
    let (_, v) = img.check_json(&["--scan-runtime-links"]);
    assert_eq!(
        v["missing"][0]["path"],
        "/usr/bin/x\nresult: ok, the runtime is complete"
    );
}
