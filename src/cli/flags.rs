//! The flags engine: one table-driven parser for every dialect's command line and environment twins.
//!
//! Owns: the option table type (`Spec`), the getopt behaviours that differ between dialects as switches
//! (`Syntax`), reading env twins (a non-UTF-8 value is an error naming the variable), and turning argv into
//! `Options` plus the command. Does not own: any table (`options` holds microinit's, `dialect` tini's and
//! dumb-init's), what a value means (`options::build_config`), nor the wording of errors (the dialect's).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::config::Options;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// Boolean; stored as the repeat count ("1", "2" for -vv).
    Flag,
    /// Takes a value; the last one wins.
    Value,
    /// Takes a value; repeatable, every value kept.
    Repeat,
    /// Prints the help and exits 0, at the point it is read (as getopt does).
    Help,
    /// Prints the version and exits 0.
    Version,
    /// Prints the licence and exits 0 (tini -l).
    License,
}

/// Which part of the configuration an option belongs to: options of a section that is off are warned about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Section {
    General,
    Restart,
    Runtime,
    Consul,
    Control,
}

pub struct Spec {
    /// Without the dashes; empty when there is no long form.
    pub long: &'static str,
    pub short: Option<char>,
    /// The env twin, also the `Options` key.
    pub key: &'static str,
    pub kind: Kind,
    pub arg: &'static str,
    pub help: &'static str,
    pub section: Section,
    /// Validated as it is read: tini and dumb-init stop at the first bad value, in argument order.
    pub check: Option<fn(&str) -> bool>,
}

pub const fn spec(
    long: &'static str,
    short: Option<char>,
    key: &'static str,
    kind: Kind,
    arg: &'static str,
    help: &'static str,
    section: Section,
) -> Spec {
    Spec {
        long,
        short,
        key,
        kind,
        arg,
        help,
        section,
        check: None,
    }
}

/// How long options are recognised.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LongOptions {
    /// None at all (tini uses plain getopt: `--x` is the unknown short option `-`).
    No,
    /// The full name only.
    Exact,
    /// Any unambiguous prefix (getopt_long, dumb-init).
    Prefix,
}

/// The getopt behaviours that differ between the dialects.
#[derive(Clone, Copy)]
pub struct Syntax {
    /// Options are read anywhere before `--`, the words in between form the command (glibc getopt's
    /// permutation, which tini gets); otherwise the first word that is not an option starts the command.
    pub permute: bool,
    pub long: LongOptions,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Command(Vec<OsString>),
    /// A Help, Version or License flag was read.
    Print(Kind),
}

/// What went wrong, with the option as the user typed it; the dialect words the message.
#[derive(Debug, PartialEq, Eq)]
pub enum FlagError {
    Unknown(String),
    Ambiguous(String),
    MissingValue(String),
    NoValueAllowed(String),
    BadValue {
        flag: String,
        value: String,
        key: &'static str,
    },
}

/// Env values of every table's keys, before flags override them. A value that is not UTF-8 is an error
/// naming the variable (rather than being taken as unset).
pub fn env_options(
    tables: &[&[Spec]],
    extra_keys: &[&str],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Options, String> {
    let mut opts = Options::default();
    let keys = tables
        .iter()
        .flat_map(|t| t.iter())
        .filter(|s| matches!(s.kind, Kind::Flag | Kind::Value | Kind::Repeat))
        .map(|s| s.key)
        .chain(extra_keys.iter().copied());
    for key in keys {
        if let Some(v) = env(key) {
            let v = v.into_string().map_err(|raw| {
                format!("{key}: the value {raw:?} is not valid UTF-8; set it to text or unset it")
            })?;
            opts.set(key, vec![v]);
        }
    }
    Ok(opts)
}

/// Read flags from `args` (argv without argv[0]) into `opts`; returns the command (maybe empty).
pub fn parse(
    args: &[OsString],
    tables: &[&[Spec]],
    syntax: Syntax,
    opts: &mut Options,
) -> Result<Parsed, FlagError> {
    let all = || tables.iter().flat_map(|t| t.iter());
    let mut from_flags: Vec<(&'static str, Vec<String>, String)> = Vec::new();
    let mut command: Vec<OsString> = Vec::new();
    let mut i = 0;
    let mut rest_from = args.len();
    while i < args.len() {
        let raw: &OsStr = &args[i];
        let bytes = raw.as_bytes();
        if bytes == b"--" {
            rest_from = i + 1;
            break;
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            if syntax.permute {
                command.push(raw.to_os_string());
                i += 1;
                continue;
            }
            rest_from = i;
            break;
        }
        let a = raw.to_string_lossy().into_owned();
        i += 1;
        // (spec, as typed, inline value)
        let mut found: Vec<(&Spec, String, Option<String>)> = Vec::new();
        if let (Some(long), true) = (a.strip_prefix("--"), syntax.long != LongOptions::No) {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let exact = all().find(|s| !s.long.is_empty() && s.long == name);
            let s = match (exact, syntax.long) {
                (Some(s), _) => s,
                (None, LongOptions::Prefix) => {
                    let mut c = all().filter(|s| !s.long.is_empty() && s.long.starts_with(name));
                    match (c.next(), c.next()) {
                        (Some(s), None) => s,
                        (Some(_), Some(_)) => return Err(FlagError::Ambiguous(a)),
                        _ => return Err(FlagError::Unknown(a)),
                    }
                }
                _ => return Err(FlagError::Unknown(a)),
            };
            found.push((s, format!("--{}", s.long), inline));
        } else {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                let Some(s) = all().find(|s| s.short == Some(c)) else {
                    return Err(FlagError::Unknown(format!("-{c}")));
                };
                if matches!(s.kind, Kind::Value | Kind::Repeat) {
                    // -pSIGTERM or -p SIGTERM.
                    let rest: String = chars[j + 1..].iter().collect();
                    found.push((s, format!("-{c}"), (!rest.is_empty()).then_some(rest)));
                    break;
                }
                found.push((s, format!("-{c}"), None));
                j += 1;
            }
        }
        for (s, typed, inline) in found {
            let value = match (s.kind, inline) {
                (Kind::Help | Kind::Version | Kind::License, None) => {
                    return Ok(Parsed::Print(s.kind))
                }
                (Kind::Flag | Kind::Help | Kind::Version | Kind::License, Some(_)) => {
                    return Err(FlagError::NoValueAllowed(typed))
                }
                (Kind::Flag, None) => {
                    let n = from_flags
                        .iter()
                        .find(|(k, _, _)| *k == s.key)
                        .and_then(|(_, v, _)| v.last()?.parse::<u32>().ok());
                    (n.unwrap_or(0) + 1).to_string()
                }
                (_, Some(v)) => v,
                (_, None) => {
                    // getopt takes the next word whatever it looks like.
                    let v = args
                        .get(i)
                        .ok_or_else(|| FlagError::MissingValue(typed.clone()))?;
                    i += 1;
                    v.to_string_lossy().into_owned()
                }
            };
            if s.check.is_some_and(|ok| !ok(&value)) {
                return Err(FlagError::BadValue {
                    flag: typed,
                    value,
                    key: s.key,
                });
            }
            match from_flags.iter_mut().find(|(k, _, _)| *k == s.key) {
                Some((_, values, origin)) => {
                    if s.kind != Kind::Repeat {
                        values.clear();
                    }
                    values.push(value);
                    *origin = typed;
                }
                None => from_flags.push((s.key, vec![value], typed)),
            }
        }
    }
    for (k, v, origin) in from_flags {
        opts.set_from(k, v, &origin);
    }
    command.extend(args[rest_from.min(args.len())..].iter().cloned());
    Ok(Parsed::Command(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &[Spec] = &[
        spec(
            "verbose",
            Some('v'),
            "V",
            Kind::Flag,
            "",
            "",
            Section::General,
        ),
        spec(
            "version",
            None,
            "VER",
            Kind::Version,
            "",
            "",
            Section::General,
        ),
        spec(
            "rewrite",
            Some('r'),
            "R",
            Kind::Repeat,
            "S:R",
            "",
            Section::General,
        ),
        spec(
            "single-child",
            Some('c'),
            "C",
            Kind::Flag,
            "",
            "",
            Section::General,
        ),
    ];

    fn run(args: &[&str], syntax: Syntax) -> (Result<Parsed, FlagError>, Options) {
        let mut o = Options::default();
        let a: Vec<OsString> = args.iter().map(OsString::from).collect();
        (parse(&a, &[T], syntax, &mut o), o)
    }

    fn cmd(v: &[&str]) -> Result<Parsed, FlagError> {
        Ok(Parsed::Command(v.iter().map(OsString::from).collect()))
    }

    const GETOPT: Syntax = Syntax {
        permute: true,
        long: LongOptions::No,
    };
    const GETOPT_LONG_PLUS: Syntax = Syntax {
        permute: false,
        long: LongOptions::Prefix,
    };

    #[test]
    fn a_permuting_parser_reads_options_after_the_command_until_double_dash() {
        let (r, o) = run(&["ls", "-v", "x", "--", "-c"], GETOPT);
        assert_eq!(r, cmd(&["ls", "x", "-c"]));
        assert_eq!(o.get("V"), Some("1"));
        let (r, _) = run(&["--", "--", "x"], GETOPT);
        assert_eq!(r, cmd(&["--", "x"]));
    }

    #[test]
    fn without_long_options_a_double_dash_word_is_the_unknown_option_dash() {
        let (r, _) = run(&["--verbose", "x"], GETOPT);
        assert_eq!(
            r,
            Err(FlagError::Unknown("--".into())),
            "the short option -"
        );
    }

    #[test]
    fn a_non_permuting_parser_stops_at_the_first_word() {
        let (r, o) = run(&["-vv", "ls", "-c"], GETOPT_LONG_PLUS);
        assert_eq!(r, cmd(&["ls", "-c"]));
        assert_eq!(o.get("V"), Some("2"));
    }

    #[test]
    fn long_options_may_be_abbreviated_when_unambiguous() {
        let (r, o) = run(
            &["--single", "--rew=1:2", "--rewrite", "3:4", "x"],
            GETOPT_LONG_PLUS,
        );
        assert_eq!(r, cmd(&["x"]));
        assert_eq!(o.get("C"), Some("1"));
        assert_eq!(o.all("R"), ["1:2", "3:4"]);
        assert_eq!(o.source("R"), "--rewrite");
        let (r, _) = run(&["--ver", "x"], GETOPT_LONG_PLUS);
        assert_eq!(r, Err(FlagError::Ambiguous("--ver".into())));
        let (r, _) = run(&["--vers", "x"], GETOPT_LONG_PLUS);
        assert_eq!(r, Ok(Parsed::Print(Kind::Version)));
    }

    #[test]
    fn a_value_option_takes_the_next_word_or_the_rest_of_its_cluster() {
        let (_, o) = run(&["-vr1:2", "-r", "-x", "y"], GETOPT_LONG_PLUS);
        assert_eq!(o.all("R"), ["1:2", "-x"]);
        let (r, _) = run(&["-r"], GETOPT_LONG_PLUS);
        assert_eq!(r, Err(FlagError::MissingValue("-r".into())));
        let (r, _) = run(&["--single-child=1", "x"], GETOPT_LONG_PLUS);
        assert_eq!(r, Err(FlagError::NoValueAllowed("--single-child".into())));
    }

    #[test]
    fn a_non_utf8_environment_value_is_an_error_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let e = env_options(&[T], &[], &|k| {
            (k == "R").then(|| OsString::from_vec(vec![b'a', 0xff]))
        })
        .unwrap_err();
        assert!(e.starts_with("R: ") && e.contains("UTF-8"), "{e}");
    }
}
