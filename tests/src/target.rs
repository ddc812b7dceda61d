//! Where a test's build runs: the embedded farm or a three-coordinator farm, driven through the
//! same CLI with the same assertions (DESIGN.md: a behaviour that differs is a bug).

use crate::cluster::Cluster;
use crate::{kiln_bin, stderr, Bounded, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `SOURCE_DATE_EPOCH` the CLI gets.
pub const EPOCH: &str = "1700000000";

pub enum Target {
    Embedded(TempDir),
    Farm(Cluster),
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Embedded(_) => "embedded",
            Target::Farm(_) => "farm",
        }
    }

    /// Runs the CLI; `SOURCE_DATE_EPOCH` is set for the CLI alone, as a user sets it: the
    /// farm's agents never see this process's environment.
    pub fn kiln(&self, args: &[&str], cwd: &Path) -> Output {
        self.kiln_env(args, cwd, &[])
    }

    /// With extra environment variables for the CLI.
    pub fn kiln_env(&self, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(args).current_dir(cwd).env("SOURCE_DATE_EPOCH", EPOCH);
        for (k, v) in env {
            cmd.env(k, v);
        }
        match self {
            Target::Embedded(home) => cmd.env("KILN_HOME", home.path()).env_remove("KILN_HOST"),
            Target::Farm(c) => cmd.env("KILN_HOME", c.home()).env("KILN_HOST", c.hosts()).env("KILN_TOKEN", &c.admin_token),
        };
        cmd.bounded().expect("run kiln")
    }

    /// The agent's data directory.
    pub fn agent_dir(&self) -> PathBuf {
        match self {
            Target::Embedded(home) => home.path().join("agent"),
            Target::Farm(c) => c.dir.path().join("a1"),
        }
    }

    /// Everything the farm keeps: its coordinators' and agents' data and logs.
    pub fn state_dir(&self) -> PathBuf {
        match self {
            Target::Embedded(home) => home.path().to_path_buf(),
            Target::Farm(c) => c.dir.path().to_path_buf(),
        }
    }

    pub fn ok(&self, args: &[&str], cwd: &Path) -> Output {
        let out = self.kiln(args, cwd);
        assert!(out.status.success(), "{}: kiln {args:?} failed:\n{}", self.name(), stderr(&out));
        out
    }
}

/// A 3-coordinator farm with one agent.
pub fn farm() -> Target {
    let mut c = Cluster::start(3);
    c.add_agent("a1", &[], 4);
    Target::Farm(c)
}
