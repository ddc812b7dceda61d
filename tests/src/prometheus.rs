//! A real Prometheus server (Debian's `prometheus`) on a free loopback port, with its own
//! config and storage in a temp dir, scraping the given targets every second; queried with
//! PromQL through its HTTP API. Killed (by its PID) when dropped.

use crate::{free_port, wait_for, TempDir};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Prometheus {
    child: Child,
    pub addr: String,
    dir: TempDir,
}

impl Prometheus {
    /// Scrapes every `(name, addr)` target at `/metrics` every second; each series gets a
    /// `node` label with the target's name.
    pub fn start(targets: &[(String, String)]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: kiln\n    static_configs:\n",
        );
        for (name, target) in targets {
            config.push_str(&format!("      - targets: [\"{target}\"]\n        labels:\n          node: \"{name}\"\n"));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("prometheus config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (apt-get install prometheus; scripts/setup-host.sh does)");
        let mut p = Prometheus { child, addr, dir };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            assert!(matches!(p.child.try_wait(), Ok(None)), "prometheus exited:\n{}", p.log());
            ureq::get(&format!("http://{}/-/ready", p.addr)).timeout(Duration::from_secs(2)).call().is_ok()
        });
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: every series of the result as (labels, value).
    pub fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>, String> {
        let resp = ureq::get(&format!("http://{}/api/v1/query", self.addr))
            .query("query", promql)
            .timeout(Duration::from_secs(5))
            .call()
            .map_err(|e| format!("query {promql:?}: {e}"))?;
        let text = resp.into_string().map_err(|e| format!("query {promql:?}: {e}"))?;
        let body: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("query {promql:?}: {e}: {text}"))?;
        if body["status"] != "success" {
            return Err(format!("query {promql:?}: {body}"));
        }
        let result = body["data"]["result"].as_array().cloned().unwrap_or_default();
        result
            .into_iter()
            .map(|r| {
                let v =
                    r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| format!("query {promql:?}: value in {r}"))?;
                Ok((r["metric"].clone(), v))
            })
            .collect()
    }

    /// The value of a query that gives one series (`None`: no series yet).
    pub fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql).unwrap_or_else(|e| panic!("{e}"));
        assert!(r.len() <= 1, "{promql:?} gave {} series: {r:?}", r.len());
        r.first().map(|(_, v)| *v)
    }

    /// Waits (bounded) until every target has been scraped since now: afterwards, what the
    /// processes counted before this call is in Prometheus.
    pub fn wait_for_scrapes(&self, timeout: Duration) {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.eventually("min(timestamp(up))", timeout, |t| t > since);
    }

    /// Waits (bounded) until `promql` gives one series whose value satisfies `want`, as new
    /// scrapes arrive; fails with the last value seen.
    pub fn eventually(&self, promql: &str, timeout: Duration, want: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.value(promql);
            if let Some(v) = v.filter(|v| want(*v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "after {timeout:?}, {promql:?} is {v:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
