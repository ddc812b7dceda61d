//! Build progress in buildx's styles: `plain` (`#N [linux/arm64 build 3/7] RUN make` lines),
//! `tty` (a live view redrawn in place), `rawjson` (one JSON object per event) and `quiet`.

use kiln_agent::Event;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tty,
    RawJson,
    Quiet,
}

impl Mode {
    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        Ok(match s {
            "auto" if std::io::stderr().is_terminal() => Mode::Tty,
            "auto" | "plain" => Mode::Plain,
            "tty" => Mode::Tty,
            "rawjson" => Mode::RawJson,
            "quiet" => Mode::Quiet,
            other => anyhow::bail!("--progress {other:?}: expected auto, plain, tty, rawjson or quiet"),
        })
    }
}

struct StepView {
    n: usize,
    name: String,
    started: Instant,
    status: Option<String>,
    last_log: Option<String>,
}

struct Inner {
    steps: Vec<StepView>,
    by_id: HashMap<u64, usize>,
    drawn: usize,
}

pub struct Progress {
    mode: Mode,
    /// Standard output instead of standard error (`kiln history logs`).
    stdout: bool,
    start: Instant,
    inner: Mutex<Inner>,
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        Progress { mode, stdout: false, start: Instant::now(), inner: Mutex::new(Inner { steps: vec![], by_id: HashMap::new(), drawn: 0 }) }
    }

    /// Progress written to standard output.
    pub fn on_stdout(mut self) -> Progress {
        self.stdout = true;
        self
    }

    fn sink(&self) -> Box<dyn Write + '_> {
        if self.stdout {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::io::stderr().lock())
        }
    }

    /// A line of the client's own (not a step's), in the plain and tty modes.
    pub fn note(&self, line: &str) {
        if matches!(self.mode, Mode::Plain | Mode::Tty) {
            let _ = writeln!(self.sink(), "{line}");
        }
    }

    pub fn event(&self, e: Event) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let mut err = self.sink();
        if self.mode == Mode::RawJson {
            let v = match &e {
                Event::Start { id, name } => serde_json::json!({"vertex": id, "name": name, "started": self.start.elapsed().as_secs_f64()}),
                Event::Cached { id } => serde_json::json!({"vertex": id, "cached": true}),
                Event::Log { id, line } => serde_json::json!({"vertex": id, "log": line}),
                Event::Done { id, secs } => serde_json::json!({"vertex": id, "completed": true, "duration": secs}),
                Event::Failed { id, message } => serde_json::json!({"vertex": id, "error": message}),
            };
            let _ = writeln!(err, "{v}");
            return;
        }
        let id = match &e {
            Event::Start { id, .. } | Event::Cached { id } | Event::Log { id, .. } | Event::Done { id, .. } | Event::Failed { id, .. } => {
                *id
            }
        };
        if let Event::Start { name, .. } = &e {
            let n = inner.steps.len() + 1;
            inner.by_id.insert(id, n - 1);
            inner.steps.push(StepView { n, name: name.clone(), started: Instant::now(), status: None, last_log: None });
        }
        let Some(&i) = inner.by_id.get(&id) else {
            // A line of the slice's own, not of a step (a cache that could not be imported, a
            // slice run again): shown as a line of its own.
            if let (Event::Log { line, .. }, Mode::Plain | Mode::Tty) = (&e, self.mode) {
                let _ = writeln!(err, "=> {line}");
            }
            return;
        };
        let step = &mut inner.steps[i];
        let line = match &e {
            Event::Start { name, .. } => format!("#{} {name}", step.n),
            Event::Log { line, .. } => {
                step.last_log = Some(line.clone());
                format!("#{} {:.3} {line}", step.n, step.started.elapsed().as_secs_f64())
            }
            Event::Cached { .. } => {
                step.status = Some("CACHED".into());
                format!("#{} CACHED", step.n)
            }
            Event::Done { secs, .. } => {
                step.status = Some(format!("{secs:.1}s"));
                format!("#{} DONE {secs:.1}s", step.n)
            }
            Event::Failed { message, .. } => {
                step.status = Some("ERROR".into());
                format!("#{} ERROR: {message}", step.n)
            }
        };
        match self.mode {
            Mode::Plain => {
                let _ = writeln!(err, "{line}");
            }
            Mode::Tty => self.redraw(&mut inner, &mut err),
            Mode::Quiet | Mode::RawJson => {}
        }
    }

    /// Redraws the live view: a header and one line per step, the running ones with their
    /// latest output line.
    fn redraw(&self, inner: &mut Inner, err: &mut impl Write) {
        if inner.drawn > 0 {
            let _ = write!(err, "\x1b[{}A", inner.drawn);
        }
        let done = inner.steps.iter().filter(|s| s.status.is_some()).count();
        let mut lines = vec![format!("[+] Building {:.1}s ({done}/{})", self.start.elapsed().as_secs_f64(), inner.steps.len())];
        for s in &inner.steps {
            match &s.status {
                Some(st) => lines.push(format!(" => {} {st}", s.name)),
                None => {
                    lines.push(format!(" => {} {:.1}s", s.name, s.started.elapsed().as_secs_f64()));
                    if let Some(l) = &s.last_log {
                        lines.push(format!(" => => {}", l.chars().take(120).collect::<String>()));
                    }
                }
            }
        }
        for l in &lines {
            let _ = writeln!(err, "\x1b[2K{l}");
        }
        // Lines from the previous frame beyond this one are cleared.
        for _ in lines.len()..inner.drawn {
            let _ = writeln!(err, "\x1b[2K");
        }
        inner.drawn = lines.len().max(inner.drawn);
    }
}
