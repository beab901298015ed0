//! Reading a file the user named (token file, service file, certificates) without trusting it.
//!
//! Owns: the one way such a file is read: opened with O_NONBLOCK (opening a FIFO with no writer would
//! otherwise block start-up forever), refused unless it is a regular file (`/dev/zero` is a character device
//! that never ends, a FIFO or socket may never answer), and read up to a size cap (a file that grows past
//! the cap is refused, not truncated). Every failure is one line naming the option, the path and the fix.
//! Does not own: what the content means.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Cap for a token file or a TLS key: far above any real one.
pub const SMALL: u64 = 64 * 1024;
/// Cap for a service definition or a CA bundle.
pub const LARGE: u64 = 1024 * 1024;

/// The whole content of the regular file at `path`, at most `cap` bytes. `what` names the option in errors
/// (e.g. "CONSUL_HTTP_TOKEN_FILE").
pub fn read(what: &str, path: &Path, cap: u64) -> Result<Vec<u8>, String> {
    let fail = |why: String| format!("{what} {}: {why}", path.display());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(fail(format!("is {kind}; name a regular file")));
    }
    if meta.len() > cap {
        return Err(fail(format!(
            "is {} bytes, more than the {cap} bytes allowed",
            meta.len()
        )));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // take(cap + 1): a file that grew after fstat is still bounded, and seen as too large.
    file.take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| fail(e.to_string()))?;
    if buf.len() as u64 > cap {
        return Err(fail(format!("grew past the {cap} bytes allowed")));
    }
    Ok(buf)
}

/// `read` for a text file: the content as UTF-8 (an invalid byte is an error naming the file).
pub fn read_text(what: &str, path: &Path, cap: u64) -> Result<String, String> {
    String::from_utf8(read(what, path, cap)?)
        .map_err(|_| format!("{what} {}: not valid UTF-8 text", path.display()))
}

/// `${NAME}` and `${NAME:-default}` in `text` replaced by the environment's values (textually, so a number
/// can come from a variable too: `"Port": ${PORT}`). An unset `${NAME}` without a default is an error
/// naming it; `$$` is a literal `$`; any other `$` is kept as is.
pub fn interpolate(
    what: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("{what}: unclosed ${{ (write $$ for a literal $)"))?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (&body[..end], None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "{what}: ${{{}}} is not a variable name (letters, digits, _)",
                    crate::text::for_terminal(name)
                ));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "{what}: ${{{name}}} is not set (set it, or write ${{{name}:-default}})"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("microinit-userfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        dir.join(name)
    }

    #[test]
    fn interpolation_replaces_variables_and_defaults() {
        let env = |k: &str| match k {
            "PORT" => Some("8080".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            interpolate(
                "F",
                r#"{"Port": ${PORT}, "Name": "${NAME:-web}-${EMPTY:-x}", "P": "$$5 $x"}"#,
                &env
            ),
            Ok(r#"{"Port": 8080, "Name": "web-x", "P": "$5 $x"}"#.to_string())
        );
        assert_eq!(
            interpolate("F", "${NOPE}", &env),
            Err("F: ${NOPE} is not set (set it, or write ${NOPE:-default})".to_string())
        );
        assert!(interpolate("F", "${PORT", &env)
            .expect_err("unclosed")
            .contains("unclosed"));
        assert!(interpolate("F", "${A B}", &env)
            .expect_err("name")
            .contains("not a variable name"));
    }

    #[test]
    fn regular_file_is_read_whole() {
        let p = tmp("token");
        std::fs::write(&p, "abc\n").expect("write");
        assert_eq!(read_text("T", &p, SMALL).as_deref(), Ok("abc\n"));
    }

    #[test]
    fn dev_zero_is_refused_at_once_as_a_character_device() {
        let e =
            read("CONSUL_HTTP_TOKEN_FILE", Path::new("/dev/zero"), SMALL).expect_err("dev zero");
        assert_eq!(
            e,
            "CONSUL_HTTP_TOKEN_FILE /dev/zero: is a character device; name a regular file"
        );
    }

    #[test]
    fn fifo_without_writer_is_refused_at_once() {
        let p = tmp("fifo");
        let _ = std::fs::remove_file(&p);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let started = Instant::now();
        let e = read("--service-file", &p, LARGE).expect_err("fifo");
        assert!(started.elapsed() < Duration::from_secs(5), "blocked");
        assert!(e.ends_with("is a FIFO; name a regular file"), "{e}");
    }

    #[test]
    fn file_over_the_cap_is_refused() {
        let p = tmp("big");
        std::fs::write(&p, vec![b'x'; 11]).expect("write");
        let e = read("T", &p, 10).expect_err("too big");
        assert!(
            e.contains("11 bytes, more than the 10 bytes allowed"),
            "{e}"
        );
        assert!(read_text("T", &tmp("missing"), 10)
            .expect_err("missing")
            .contains("No such file"));
    }
}
