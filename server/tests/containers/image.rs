//! ampere's container image (the repository's `Dockerfile`), as these tests can run it.
//!
//! No registry is reachable in CI, so the Dockerfile's base images (`rust:1-bookworm`,
//! `debian:bookworm-slim`) cannot be pulled. The tests run `scripts/build-ampere-image.sh`'s
//! registry-free equivalent instead: FROM scratch, the `ampere` binary cargo built for these
//! tests and its shared libraries, the same user, directories, WORKDIR, EXPOSE, ENV,
//! ENTRYPOINT/CMD and HEALTHCHECK timings; its one difference is busybox `wget` instead of
//! `curl` in the HEALTHCHECK (both succeed on any 2xx). [`layout_matches_dockerfile`] parses
//! the Dockerfile's runtime stage and compares it with that image's configuration, so the two
//! cannot drift apart unnoticed.
//!
//! `AMPERE_TEST_IMAGE=<tag>` uses an existing image instead of building one (e.g. one built from
//! the Dockerfile where the base images can be pulled: `docker build -t ampere:test .`); the
//! layout check then compares that image with the Dockerfile.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::docker::{docker, docker_sync, LABEL};
use crate::harness::Ctx;
use crate::util::secs;

/// The tag the tests build the registry-free image under.
pub(crate) const TEST_TAG: &str = "ampere-local:test";
/// The HEALTHCHECK's HTTP client in the Dockerfile and in the registry-free image: the one
/// difference between the two layouts (both fail only on a status >= 400, so 202 passes).
const HEALTH_CLIENT_DOCKERFILE: &str = "curl -fsS -o /dev/null";
const HEALTH_CLIENT_OFFLINE: &str = "wget -q -O /dev/null";
/// `debian:bookworm-slim`'s PATH, which the registry-free image sets explicitly.
const DEBIAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bounds the image build (a cold one is about 10 s).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// The repository root (the server crate's parent).
pub(crate) fn repo_root() -> PathBuf {
    let server = Path::new(env!("CARGO_MANIFEST_DIR"));
    server.parent().unwrap_or(server).to_path_buf()
}

/// The image under test: `AMPERE_TEST_IMAGE` if set (it must exist), else [`TEST_TAG`] built
/// once per test binary from `CARGO_BIN_EXE_ampere` (the script skips the build when the tag
/// already holds this binary). Blocking: call it from `spawn_blocking`.
pub(crate) fn image() -> Result<&'static str, String> {
    static IMAGE: OnceLock<Result<String, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            docker_sync(&["info", "--format", "{{.ServerVersion}}"]).map_err(|e| {
                format!("no Docker engine answers ({e}): start one with scripts/docker-up.sh")
            })?;
            if let Some(tag) = std::env::var("AMPERE_TEST_IMAGE")
                .ok()
                .filter(|t| !t.trim().is_empty())
            {
                docker_sync(&["image", "inspect", "--format", "{{.Id}}", &tag])
                    .map_err(|e| format!("AMPERE_TEST_IMAGE={tag} is not present: {e}"))?;
                return Ok(tag);
            }
            build(TEST_TAG, Path::new(env!("CARGO_BIN_EXE_ampere")))?;
            Ok(TEST_TAG.to_owned())
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// `image()` off the async runtime's threads.
pub(crate) async fn image_async() -> Result<&'static str, String> {
    tokio::task::spawn_blocking(image)
        .await
        .map_err(|e| format!("image build task: {e}"))?
}

fn build(tag: &str, binary: &Path) -> Result<(), String> {
    let script = repo_root().join("scripts/build-ampere-image.sh");
    let t = Instant::now();
    let out = Command::new("timeout")
        .arg(BUILD_TIMEOUT.as_secs().to_string())
        .arg(&script)
        .arg(tag)
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{} {tag} failed ({}):\n{log}",
            script.display(),
            out.status
        ));
    }
    eprintln!(
        "containers: image {tag} ready after {}: {}",
        secs(t.elapsed()),
        log.lines().last().unwrap_or_default()
    );
    Ok(())
}

/// What the Dockerfile's runtime stage sets in an image's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) user: String,
    pub(crate) workdir: String,
    pub(crate) exposed: BTreeSet<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) entrypoint: Vec<String>,
    pub(crate) cmd: Vec<String>,
    pub(crate) healthcheck: Healthcheck,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Healthcheck {
    /// `["CMD-SHELL", "<command>"]` or `["CMD", …]`, as Docker stores it.
    pub(crate) test: Vec<String>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    pub(crate) start_period: Duration,
    pub(crate) retries: u64,
}

/// The runtime (last) stage of a Dockerfile: the instructions after the last `FROM`.
pub(crate) fn dockerfile_layout(text: &str) -> Result<Layout, String> {
    let instructions = logical_lines(text);
    let last_from = instructions
        .iter()
        .rposition(|(keyword, _)| keyword == "FROM")
        .ok_or("no FROM instruction")?;
    let mut layout = Layout::default();
    for (keyword, args) in &instructions[last_from + 1..] {
        match keyword.as_str() {
            "USER" => layout.user.clone_from(args),
            "WORKDIR" => layout.workdir.clone_from(args),
            "EXPOSE" => layout.exposed.extend(args.split_whitespace().map(|p| {
                if p.contains('/') {
                    p.to_owned()
                } else {
                    format!("{p}/tcp")
                }
            })),
            "ENV" => layout.env.extend(env_pairs(args)?),
            "ENTRYPOINT" => layout.entrypoint = json_array(args)?,
            "CMD" => layout.cmd = json_array(args)?,
            "HEALTHCHECK" => layout.healthcheck = healthcheck(args)?,
            _ => {}
        }
    }
    Ok(layout)
}

/// `(KEYWORD, arguments)` per instruction: continuation lines joined, comments dropped.
fn logical_lines(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

/// `K=V K2=V2` (values without spaces, optionally double-quoted) or the legacy `K V`.
fn env_pairs(args: &str) -> Result<Vec<(String, String)>, String> {
    if !args
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .contains('=')
    {
        let (k, v) = args.split_once(' ').ok_or(format!("bad ENV {args:?}"))?;
        return Ok(vec![(k.to_owned(), v.trim().to_owned())]);
    }
    args.split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or(format!("bad ENV {args:?}"))?;
            Ok((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

fn json_array(args: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(args).map_err(|e| format!("not a JSON array ({e}): {args}"))
}

/// `--interval=10s … CMD <shell command>` (or `CMD ["exec", "form"]`).
fn healthcheck(args: &str) -> Result<Healthcheck, String> {
    let mut h = Healthcheck {
        // Docker's defaults
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(30),
        retries: 3,
        ..Healthcheck::default()
    };
    let mut rest = args.trim();
    while let Some(option) = rest.strip_prefix("--") {
        let (option, tail) = option.split_once(' ').ok_or("HEALTHCHECK without CMD")?;
        let (name, value) = option
            .split_once('=')
            .ok_or(format!("bad option {option}"))?;
        match name {
            "interval" => h.interval = duration(value)?,
            "timeout" => h.timeout = duration(value)?,
            "start-period" => h.start_period = duration(value)?,
            "retries" => h.retries = value.parse().map_err(|e| format!("retries: {e}"))?,
            other => return Err(format!("unknown HEALTHCHECK option --{other}")),
        }
        rest = tail.trim_start();
    }
    let command = rest
        .strip_prefix("CMD ")
        .ok_or(format!("HEALTHCHECK without CMD: {args}"))?
        .trim();
    h.test = if command.starts_with('[') {
        let mut exec = vec!["CMD".to_owned()];
        exec.extend(json_array(command)?);
        exec
    } else {
        vec!["CMD-SHELL".to_owned(), command.to_owned()]
    };
    Ok(h)
}

/// `10s`, `1m30s`, `500ms` (Go's duration syntax, the units Dockerfiles use).
fn duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            unit => return Err(format!("bad unit {unit:?} in {text:?}")),
        };
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// An image's configuration (`docker image inspect`), in [`Layout`]'s terms.
pub(crate) fn image_layout(tag: &str) -> Result<Layout, String> {
    let json = docker_sync(&["image", "inspect", "--format", "{{json .Config}}", tag])?;
    let config: Value = serde_json::from_str(&json).map_err(|e| format!("inspect {tag}: {e}"))?;
    let text = |key: &str| config[key].as_str().unwrap_or_default().to_owned();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let nanos = |v: &Value| Duration::from_nanos(v.as_u64().unwrap_or(0));
    let h = &config["Healthcheck"];
    Ok(Layout {
        user: text("User"),
        workdir: text("WorkingDir"),
        exposed: config["ExposedPorts"]
            .as_object()
            .map(|ports| ports.keys().cloned().collect())
            .unwrap_or_default(),
        env: strings(&config["Env"])
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect(),
        entrypoint: strings(&config["Entrypoint"]),
        cmd: strings(&config["Cmd"]),
        healthcheck: Healthcheck {
            test: strings(&h["Test"]),
            interval: nanos(&h["Interval"]),
            timeout: nanos(&h["Timeout"]),
            start_period: nanos(&h["StartPeriod"]),
            retries: h["Retries"].as_u64().unwrap_or(0),
        },
    })
}

/// The Dockerfile's runtime layout and the image's must be equal, up to the HEALTHCHECK's HTTP
/// client and the base image's PATH. Returns a note for the summary.
pub(crate) fn compare(dockerfile: &Layout, image: &Layout) -> Result<String, String> {
    let mut image = image.clone();
    match image.env.remove("PATH") {
        Some(path) if path == DEBIAN_PATH => {}
        other => {
            return Err(format!(
                "image PATH {other:?}, debian:bookworm-slim has {DEBIAN_PATH}"
            ))
        }
    }
    if let Some(command) = image.healthcheck.test.get_mut(1) {
        if let Some(rest) = command.strip_prefix(HEALTH_CLIENT_OFFLINE) {
            *command = format!("{HEALTH_CLIENT_DOCKERFILE}{rest}");
        }
    }
    if *dockerfile != image {
        return Err(format!(
            "the Dockerfile's runtime stage and the image differ:\n  Dockerfile: {dockerfile:?}\n  image:      {image:?}\n\
             (change Dockerfile and scripts/build-ampere-image.sh together)"
        ));
    }
    Ok(format!(
        "user {}, workdir {}, exposed {:?}, env {:?}, entrypoint {:?} {:?}, healthcheck every {:?}",
        image.user,
        image.workdir,
        image.exposed,
        image.env,
        image.entrypoint,
        image.cmd,
        image.healthcheck.interval
    ))
}

/// The layout check as a test of its own (no Postgres needed): parse the Dockerfile, inspect
/// the image, compare; prints a `SUMMARY` line like the scenarios.
pub(crate) async fn layout_matches_dockerfile(name: &'static str) {
    let started = Instant::now();
    let mut summary = SummaryGuard {
        name,
        started,
        passed: false,
        note: String::new(),
    };
    let image = image_async().await.unwrap_or_else(|e| panic!("{e}"));
    let path = repo_root().join("Dockerfile");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let dockerfile = dockerfile_layout(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let actual = image_layout(image).unwrap_or_else(|e| panic!("{e}"));
    let note = compare(&dockerfile, &actual).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        actual
            .healthcheck
            .test
            .iter()
            .any(|t| t.contains("/v1/health")),
        "the HEALTHCHECK must probe /v1/health: {:?}",
        actual.healthcheck.test
    );
    summary.note = format!("image {image}: {note}");
    summary.passed = true;
}

/// With DATABASE_URL unset ampere would start an embedded PostgreSQL from installed binaries;
/// the image has none, so it must exit at once with a message that says what to do.
pub(crate) async fn without_database_url_exits_clearly(ctx: &mut Ctx, image: &str) {
    ctx.stage("the image without DATABASE_URL exits with a clear message");
    let name = format!("ampere-ct-{}-nodb", std::process::id());
    let label = format!("{LABEL}={}", std::process::id());
    let run = docker(
        &[
            "run",
            "--rm",
            "--name",
            &name,
            "--label",
            &label,
            "-e",
            "ELECTRIC_INSECURE=true",
            image,
        ],
        Duration::from_secs(60),
    )
    .await;
    let _ = docker(&["rm", "-f", &name], Duration::from_secs(30)).await;
    let message = match run {
        Ok(out) => panic!("ampere without DATABASE_URL must exit non-zero; it exited 0: {out}"),
        Err(e) => e,
    };
    for expected in [
        "DATABASE_URL is unset",
        "no PostgreSQL server binaries found",
    ] {
        assert!(
            message.contains(expected),
            "the error must say {expected:?}: {message}"
        );
    }
    ctx.note("without DATABASE_URL: exits non-zero, \"DATABASE_URL is unset … no PostgreSQL server binaries found\"");
}

/// Prints `SUMMARY <name>: PASS|FAIL …` when dropped (so also on a panic), in the scenarios'
/// format, and appends it to `$AMPERE_TEST_SUMMARY` when that is set.
struct SummaryGuard {
    name: &'static str,
    started: Instant,
    passed: bool,
    note: String,
}

impl Drop for SummaryGuard {
    fn drop(&mut self) {
        let line = format!(
            "SUMMARY {}: {} writes=0 rows_verified=0 409s=0 recover=- time={}{}",
            self.name,
            if self.passed { "PASS" } else { "FAIL" },
            secs(self.started.elapsed()),
            if self.note.is_empty() {
                String::new()
            } else {
                format!(" | {}", self.note)
            }
        );
        eprintln!("{line}");
        if let Some(path) = std::env::var_os("AMPERE_TEST_SUMMARY") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_runtime_stage_of_a_dockerfile() {
        let text = "FROM a AS builder\nUSER 0\nEXPOSE 1\nFROM b\n# comment\nENV A=1 B=\"two\"\n\
                    WORKDIR /app\nUSER 7:7\nEXPOSE 3000 9/udp\n\
                    HEALTHCHECK --interval=1m30s --retries=2 \\\n  CMD curl -f http://x/ || exit 1\n\
                    ENTRYPOINT [\"/bin/x\"]\nCMD [\"serve\"]\n";
        let layout = dockerfile_layout(text).expect("parses");
        assert_eq!(layout.user, "7:7");
        assert_eq!(layout.workdir, "/app");
        assert_eq!(
            layout.exposed,
            ["3000/tcp", "9/udp"]
                .map(str::to_owned)
                .into_iter()
                .collect()
        );
        assert_eq!(layout.env.get("B").map(String::as_str), Some("two"));
        assert_eq!(layout.entrypoint, ["/bin/x"]);
        assert_eq!(layout.cmd, ["serve"]);
        assert_eq!(layout.healthcheck.interval, Duration::from_secs(90));
        assert_eq!(layout.healthcheck.timeout, Duration::from_secs(30));
        assert_eq!(layout.healthcheck.retries, 2);
        assert_eq!(
            layout.healthcheck.test,
            ["CMD-SHELL", "curl -f http://x/ || exit 1"]
        );
        assert!(duration("5x").is_err());
    }
}
